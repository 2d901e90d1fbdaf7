"""One person's data, by address: everything held (export) and its erasure (issue 15 item 5).

The erasure is the one writer that reaches into every service's tables: the right to be
forgotten does not stop at ownership lines. What it does, table by table:

- `recipients`: the address's rows on every list are deleted.
- `suppressions`: the address's row is replaced by its erased token (a keyed hash, reason
  `erased`), so that no import or API call can add the person again.
- `deliveries`, `delivery_events`: the rows stay (campaign counters and the delivery log
  must still reconcile, and an event id is what stops a redelivered webhook from counting
  twice), with the address replaced by the token, an error that quotes it cleared, and
  the provider's event details emptied.
- `send_ledger.result` (the dispatcher's record of what a provider accepted): the address
  is replaced by the token in the batches that mailed it.
- `soft_bounce_streaks`, `engagement_summary`: deleted. `import_rejections`: rows whose raw text holds the
  address are deleted.
- `automation_runs` (and their outbox bodies): the address and the enrol key get the
  token, the run's data is emptied, and a run still active is stopped (`erased`); its
  steps stay, so the automation's per-step counts still add up.
- `segments`: a saved filter that quotes the address gets the token instead.
- `audit_log`: records that name the address (an earlier `suppression.add`, ...) get the
  token instead; who did what, and when, stays (migration 0024 allows only that change).

Every statement binds the address as a parameter. Matching is by the normalised address,
case-insensitively where a column may hold the original spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from libs.common import suppressions

Conn = asyncpg.Connection | PoolConnectionProxy
# Reads and rewrites scan the delivery log by address (it has no index on it: the tracker
# writes millions of rows per campaign, and an erasure is rare): allow them time.
ERASURE_TIMEOUT_MS = 600_000


class InFlight(Exception):
    """A batch holding the address is on its way to a provider: erasing now would let the
    send and its result write the address again."""

    def __init__(self, campaign_ids: list[str]) -> None:
        super().__init__(", ".join(campaign_ids))
        self.campaign_ids = campaign_ids


def _like_pattern(address: str) -> str:
    """A case-insensitive regular expression (PostgreSQL ARE) matching `address` literally."""
    return "".join(c if c.isalnum() else "\\" + c for c in address)


async def export(conn: Conn, address: str) -> dict[str, Any]:
    """Everything held about `address` (normalised), as JSON-ready values."""
    recipients = await conn.fetch(
        "SELECT r.id, r.list_id, l.name AS list_name, r.fields, r.created_at, r.updated_at"
        " FROM recipients r LEFT JOIN lists l ON l.id = r.list_id"
        " WHERE r.email = $1 ORDER BY r.id",
        address,
    )
    suppression = await conn.fetchrow(
        "SELECT reason, source, created_at FROM suppressions WHERE email = $1", address
    )
    streak = await conn.fetchrow(
        "SELECT in_a_row, updated_at FROM soft_bounce_streaks WHERE email = $1", address
    )
    summary = await conn.fetchrow(
        "SELECT last_sent_at, last_opened_at, last_clicked_at, last_soft_bounced_at"
        " FROM engagement_summary WHERE email = $1",
        address,
    )
    deliveries = await conn.fetch(
        "SELECT d.campaign_id, c.name AS campaign_name, d.recipient_id, d.status, d.message_id,"
        " d.error, d.sent_at, d.delivered_at, d.bounced_at, d.bounce_type, d.dropped_at,"
        " d.deferred_count, d.opened_at, d.open_count, d.clicked_at, d.click_count,"
        " d.unsubscribed_at, d.spam_reported_at"
        " FROM deliveries d LEFT JOIN campaigns c ON c.id = d.campaign_id"
        " WHERE d.email = $1 ORDER BY d.sent_at, d.campaign_id",
        address,
    )
    events = await conn.fetch(
        "SELECT event_id, campaign_id, event, provider, occurred_at, matched, detail"
        " FROM delivery_events WHERE lower(email) = $1 ORDER BY occurred_at, event_id",
        address,
    )
    rejections = await conn.fetch(
        "SELECT import_id, line, reason, raw FROM import_rejections"
        " WHERE strpos(lower(raw), $1) > 0 ORDER BY import_id, line",
        address,
    )
    runs = await conn.fetch(
        "SELECT a.name AS automation, r.automation_id, r.version, r.trigger, r.data, r.status,"
        " r.step, r.due_at, r.stop_reason, r.started_at, r.finished_at"
        " FROM automation_runs r JOIN automations a ON a.id = r.automation_id"
        " WHERE lower(r.email) = $1 ORDER BY r.started_at",
        address,
    )
    audit = await conn.fetch(
        "SELECT created_at, action, actor_kind, actor_name, target_kind, details"
        " FROM audit_log WHERE lower(target_id) = $1 ORDER BY created_at",
        address,
    )
    return {
        "email": address,
        "recipients": [dict(r) for r in recipients],
        "suppression": dict(suppression) if suppression else None,
        "soft_bounce_streak": dict(streak) if streak else None,
        "engagement": dict(summary) if summary else None,
        # No consent records exist yet (issue 15 item 3 adds them): always empty today.
        "consents": [],
        "deliveries": [dict(r) for r in deliveries],
        "events": [dict(r) for r in events],
        "import_rejections": [dict(r) for r in rejections],
        "automation_runs": [dict(r) for r in runs],
        "audit": [dict(r) for r in audit],
    }


@dataclass
class Erased:
    token: str
    recipients: int = 0
    deliveries: int = 0
    events: int = 0
    ledger_batches: int = 0
    import_rejections: int = 0
    audit_records: int = 0
    segments: int = 0
    messages: int = 0
    webhook_deliveries: int = 0
    automation_runs: int = 0
    suppression_replaced: str | None = None
    pending_uploads: int = 0

    def counts(self) -> dict[str, Any]:
        return {
            "recipients": self.recipients,
            "deliveries": self.deliveries,
            "events": self.events,
            "ledger_batches": self.ledger_batches,
            "import_rejections": self.import_rejections,
            "audit_records": self.audit_records,
            "segments": self.segments,
            "messages": self.messages,
            "webhook_deliveries": self.webhook_deliveries,
            "automation_runs": self.automation_runs,
            "suppression_replaced": self.suppression_replaced,
            "pending_uploads": self.pending_uploads,
        }


async def erase(conn: Conn, address: str, key: bytes) -> Erased:
    """Erase `address` (normalised) everywhere; call inside a transaction. Raises InFlight
    (nothing changed) while a batch holding it is being sent."""
    token = await suppressions.erased_token(conn, address, key)
    done = Erased(token)
    await conn.execute(f"SET LOCAL statement_timeout = {ERASURE_TIMEOUT_MS}")
    # The audit trigger lets this transaction replace the address in its records.
    await conn.execute("SET LOCAL mailfleet.erasure = 'on'")
    # Every writer of `recipients` holds its list FOR KEY SHARE while it writes (the
    # importer for a whole import): FOR UPDATE on every list waits for those under way and
    # holds off new ones until this commits, by when the token refuses the address.
    await conn.execute("SELECT 1 FROM lists FOR UPDATE")
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM recipients WHERE email = $1", address)]
    if ids:
        # Locked, so that a scheduler emitting one of these batches right now finishes first
        # (then `emitted` says so); a batch never emitted reads its members when it is, and
        # finds none.
        batches = await conn.fetch(
            "SELECT b.campaign_id, b.emitted, EXISTS (SELECT 1 FROM tracker_batches t"
            "  WHERE t.batch_id = b.batch_id) AS accounted"
            " FROM batch_plans b JOIN campaigns c ON c.id = b.campaign_id"
            " WHERE c.status IN ('in_progress', 'paused', 'cancelled')"
            " AND b.recipient_ids && $1::bigint[] FOR SHARE OF b",
            ids,
        )
        busy = sorted(
            {str(b["campaign_id"]) for b in batches if b["emitted"] and not b["accounted"]}
        )
        if busy:
            raise InFlight(busy)
    done.recipients = len(
        await conn.fetch("DELETE FROM recipients WHERE email = $1 RETURNING id", address)
    )
    done.suppression_replaced = await conn.fetchval(
        "DELETE FROM suppressions WHERE email = $1 RETURNING reason", address
    )
    await suppressions.add_suppression(conn, token, "erased", source="erasure")
    await conn.execute("DELETE FROM soft_bounce_streaks WHERE email = $1", address)
    # Consent records and the confirmation cap (migration 0027): the erased token kept in
    # `suppressions` is what stops the address from being subscribed again.
    await conn.execute("DELETE FROM consents WHERE email = $1", address)
    await conn.execute("DELETE FROM confirmation_sends WHERE email = $1", address)
    await conn.execute("DELETE FROM engagement_summary WHERE email = $1", address)
    pattern = _like_pattern(address)
    batch_ids = await conn.fetch(
        "UPDATE deliveries SET email = $2,"
        " error = CASE WHEN strpos(lower(error), $1) > 0 THEN '[erased]' ELSE error END"
        " WHERE lower(email) = $1 RETURNING batch_id",
        address,
        token,
    )
    done.deliveries = len(batch_ids)
    done.ledger_batches = len(
        await conn.fetch(
            "UPDATE send_ledger SET result = regexp_replace(result::text, $2, $3, 'gi')::jsonb"
            " WHERE batch_id = ANY($1::text[]) AND result IS NOT NULL"
            " AND strpos(lower(result::text), $4) > 0 RETURNING batch_id",
            sorted({r["batch_id"] for r in batch_ids}),
            pattern,
            token,
            address,
        )
    )
    done.events = len(
        await conn.fetch(
            "UPDATE delivery_events SET email = $2, detail = '{}'::jsonb"
            " WHERE lower(email) = $1 RETURNING event_id",
            address,
            token,
        )
    )
    done.import_rejections = len(
        await conn.fetch(
            "DELETE FROM import_rejections WHERE strpos(lower(raw), $1) > 0 RETURNING line",
            address,
        )
    )
    done.audit_records = len(
        await conn.fetch(
            "UPDATE audit_log SET"
            " target_id = regexp_replace(target_id, $1, $2, 'gi'),"
            " actor_name = regexp_replace(actor_name, $1, $2, 'gi'),"
            " details = regexp_replace(details::text, $1, $2, 'gi')::jsonb"
            " WHERE strpos(lower(target_id), $3) > 0 OR strpos(lower(actor_name), $3) > 0"
            " OR strpos(lower(details::text), $3) > 0 RETURNING id",
            pattern,
            token,
            address,
        )
    )
    # A saved filter may name the address (`{"field": "email", "op": "eq", ...}`).
    done.segments = len(
        await conn.fetch(
            "UPDATE segments SET filter = regexp_replace(filter::text, $1, $2, 'gi')::jsonb"
            " WHERE strpos(lower(filter::text), $3) > 0 RETURNING id",
            pattern,
            token,
            address,
        )
    )
    # Transactional messages to the address (the request log and the tracker's status).
    done.messages = len(
        await conn.fetch(
            "UPDATE messages SET recipient = $2, error = NULL"
            " WHERE lower(recipient) = $1 RETURNING message_id",
            address,
            token,
        )
    )
    await conn.execute(
        "UPDATE message_requests SET recipient = $2 WHERE lower(recipient) = $1", address, token
    )
    # Automation runs: the person's place in each series, and the messages queued for it.
    runs = await conn.fetch(
        "UPDATE automation_runs SET email = $2,"
        " enrol_key = regexp_replace(enrol_key, $3, $2, 'gi'), data = '{}'::jsonb,"
        " status = CASE WHEN status = 'active' THEN 'stopped' ELSE status END,"
        " stop_reason = CASE WHEN status = 'active' THEN 'erased' ELSE stop_reason END,"
        " finished_at = CASE WHEN status = 'active' THEN now() ELSE finished_at END"
        " WHERE lower(email) = $1 RETURNING id",
        address,
        token,
        pattern,
    )
    done.automation_runs = len(runs)
    await conn.execute(
        "UPDATE automation_outbox SET payload = regexp_replace(payload::text, $2, $3, 'gi')::jsonb,"
        " key = regexp_replace(key, $2, $3, 'gi') WHERE run_id = ANY($1::bigint[])",
        [r["id"] for r in runs],
        pattern,
        token,
    )
    # Outbound webhook bodies (JSON, kept as the exact bytes signed at each attempt).
    done.webhook_deliveries = len(
        await conn.fetch(
            "UPDATE webhook_deliveries SET payload = convert_to(regexp_replace("
            " convert_from(payload, 'UTF8'), $1, $2, 'gi'), 'UTF8')"
            " WHERE strpos(lower(convert_from(payload, 'UTF8')), $3) > 0 RETURNING id",
            pattern,
            token,
            address,
        )
    )
    # Files of imports not finished yet: the importer deletes each when its import ends,
    # and refuses the address meanwhile (it reads the token). Counted, not opened.
    done.pending_uploads = int(
        await conn.fetchval(
            "SELECT count(*) FROM blobs b WHERE NOT b.complete OR EXISTS (SELECT 1"
            " FROM import_requests q LEFT JOIN import_jobs j ON j.id = q.id"
            " WHERE q.blob_id = b.id AND (j.status IS NULL OR j.status IN ('queued', 'running')))"
        )
    )
    return done
