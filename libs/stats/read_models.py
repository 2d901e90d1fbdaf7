"""Queries over the tracker's read models, for the API to call. SQL over asyncpg, no HTTP.

The tracker writes these tables; the API reads them (and edits the suppression list by
hand through the functions at the end, the one write the design leaves to admins).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from libs.stats import report

# `?status=` of the delivery log: a dispatcher outcome or a provider-reported state. The SQL
# comes only from this table, never from the request.
DELIVERY_FILTERS: dict[str, str] = {
    "sent": "status = 'sent'",
    "failed": "status = 'failed'",
    "invalid": "status = 'invalid'",
    "unknown": "status = 'unknown'",
    "cancelled": "status = 'cancelled'",
    # Suppressed after planning (at emit or claim); those suppressed at planning have no row.
    "suppressed": "status = 'suppressed'",
    "delivered": "delivered_at IS NOT NULL",
    "bounced": "bounced_at IS NOT NULL",
    "dropped": "dropped_at IS NOT NULL",
    "deferred": "deferred_count > 0",
    "opened": "opened_at IS NOT NULL",
    "clicked": "clicked_at IS NOT NULL",
    "unsubscribed": "unsubscribed_at IS NOT NULL",
    "spamreport": "spam_reported_at IS NOT NULL",
}
MAX_PAGE = 1000

_DELIVERY_FIELDS = (
    "recipient_id, email, status, message_id, error, batch_id, sent_at, delivered_at,"
    " bounced_at, bounce_type, dropped_at, deferred_count, opened_at, open_count, clicked_at,"
    " click_count, unsubscribed_at, spam_reported_at, last_event, last_event_at, updated_at"
)


async def campaign_counters(pool: asyncpg.Pool, campaign_id: UUID) -> dict[str, Any] | None:
    """The raw `campaign_stats` row, None until the first result of the campaign is folded."""
    row = await pool.fetchrow("SELECT * FROM campaign_stats WHERE campaign_id = $1", campaign_id)
    return dict(row) if row is not None else None


async def campaign_report(pool: asyncpg.Pool, campaign_id: UUID) -> dict[str, Any] | None:
    """Stats with rates, health and timings (see `report.campaign_report`)."""
    counters = await campaign_counters(pool, campaign_id)
    return report.campaign_report(counters) if counters is not None else None


@dataclass(frozen=True)
class DeliveryPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


async def delivery_page(
    pool: asyncpg.Pool,
    campaign_id: UUID,
    *,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> DeliveryPage:
    """One page of a campaign's delivery log in recipient order; the cursor is opaque.

    Raises ValueError for an unknown status or a malformed cursor (the API answers 422).
    """
    if status is not None and status not in DELIVERY_FILTERS:
        raise ValueError(f"unknown status {status!r}; one of {', '.join(DELIVERY_FILTERS)}")
    after = _parse_cursor(cursor)
    limit = max(1, min(limit, MAX_PAGE))
    condition = DELIVERY_FILTERS[status] if status is not None else "true"
    rows = await pool.fetch(
        f"SELECT {_DELIVERY_FIELDS} FROM deliveries"  # noqa: S608 - fixed fragments only
        f" WHERE campaign_id = $1 AND recipient_id > $2 AND {condition}"
        " ORDER BY recipient_id LIMIT $3",
        campaign_id,
        after,
        limit + 1,
    )
    items = [dict(r) for r in rows[:limit]]
    more = len(rows) > limit
    return DeliveryPage(items, str(items[-1]["recipient_id"]) if more else None)


def _parse_cursor(cursor: str | None) -> int:
    if not cursor:
        return -1
    try:
        return int(cursor)
    except ValueError:
        raise ValueError("malformed cursor") from None


async def timeline(
    pool: asyncpg.Pool, campaign_id: UUID, bucket_seconds: int = 1
) -> list[dict[str, Any]]:
    """Sends per time bucket over the campaign's life (a tumbling window, as a query).

    Each batch counts at the time its dispatcher finished it; `per_second` is the rate.
    """
    bucket = max(1, bucket_seconds)
    rows = await pool.fetch(
        """
        SELECT to_timestamp(floor(extract(epoch FROM finished_at) / $2) * $2) AS at,
               sum(sent)::bigint AS sent, sum(failed)::bigint AS failed,
               count(*) AS batches
          FROM tracker_batches
         WHERE campaign_id = $1 AND finished_at IS NOT NULL
         GROUP BY 1 ORDER BY 1
        """,
        campaign_id,
        bucket,
    )
    return [{**dict(r), "per_second": round(r["sent"] / bucket, 1)} for r in rows]


async def recipient_history(
    pool: asyncpg.Pool, campaign_id: UUID, recipient_id: int
) -> list[dict[str, Any]]:
    """The provider events of one recipient, oldest first."""
    rows = await pool.fetch(
        "SELECT event_id, event, provider, occurred_at, detail FROM delivery_events"
        " WHERE campaign_id = $1 AND recipient_id = $2 AND matched"
        " ORDER BY occurred_at, event_id",
        campaign_id,
        recipient_id,
    )
    return [dict(r) for r in rows]


# ----- the suppression list -----


@dataclass(frozen=True)
class SuppressionPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


async def list_suppressions(
    pool: asyncpg.Pool, *, cursor: str | None = None, limit: int = 100, email: str | None = None
) -> SuppressionPage:
    """Suppressed addresses in address order; `email` looks one up."""
    limit = max(1, min(limit, MAX_PAGE))
    if email is not None:
        rows = await pool.fetch(
            "SELECT email, reason, source, created_at FROM suppressions WHERE email = $1",
            email.strip().lower(),
        )
        return SuppressionPage([dict(r) for r in rows], None)
    rows = await pool.fetch(
        "SELECT email, reason, source, created_at FROM suppressions"
        " WHERE email > $1 ORDER BY email LIMIT $2",
        cursor or "",
        limit + 1,
    )
    items = [dict(r) for r in rows[:limit]]
    return SuppressionPage(items, items[-1]["email"] if len(rows) > limit else None)
