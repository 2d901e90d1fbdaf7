"""Subscriptions: the `contact.event` actions that change who is on a list. No Kafka here.

The edge publishes what people do (`subscribed` from the public form or the preference
centre's "join again", `confirmed` from a confirmation link, `left`, `preferences`); this
module decides, in PostgreSQL, and says what to publish next: the confirmation email
(`message.requested`) and `joined` when someone becomes an active member.

- `subscribed`: a consent record is written (event id unique: a replay folds once and only
  publishes again what the first fold decided). A suppressed or erased address is refused
  (recorded, nothing sent: it could not be mailed anyway; lifting a suppression is the
  admin's). Single opt-in: the recipient becomes `active` and `joined` (source `form`)
  follows. Double opt-in: `unconfirmed`, and a confirmation email, at most one per
  address per hour (`confirmation_sends`, decided in the same transaction). An address
  already active changes nothing (the edge answered the same anyway), and fields sent with
  a form change only a new or still unconfirmed row: a stranger cannot rename a member.
- `confirmed`: an `unconfirmed` recipient becomes `active`, its pending consents
  `confirmed` (by this event), and `joined` (source `confirmation`) follows; a replay of
  that event publishes the same `joined` again, any other later `confirmed` nothing.
- `left`: the recipient of that list becomes `unsubscribed`; its consents are withdrawn.
- `preferences`: the list's `editable_fields` only are merged into the recipient's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from libs.common import suppressions
from libs.common.addresses import InvalidAddress, normalised_address
from libs.common.confirm_token import confirm_url
from libs.common.events import ContactEvent, InlineContent, MessageRequested
from libs.common.logging import get_logger
from services.importer.metrics import SUBSCRIPTIONS

log = get_logger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy

CONFIRMATION_CATEGORY = "confirmation"
CONFIRMATION_INTERVAL = timedelta(hours=1)
MAX_FIELD_CHARS = 200
MAX_FIELDS = 20
BASES = frozenset(
    {
        "consent",
        "contract",
        "legal_obligation",
        "vital_interests",
        "public_task",
        "legitimate_interest",
    }
)
HANDLED = frozenset({"subscribed", "confirmed", "left", "preferences"})

_SUBJECT = "Please confirm your subscription to {{ list_name }}"
_HTML = (
    "<p>Someone, hopefully you, asked to receive <strong>{{ list_name }}</strong> at this"
    ' address.</p><p><a href="{{ confirm_url }}">Confirm my subscription</a></p>'
    "<p>The link is valid for 7 days. If you did not ask, ignore this email: you will not"
    " be added.</p>"
)
_TEXT = (
    "Someone, hopefully you, asked to receive {{ list_name }} at this address.\n\n"
    "Confirm your subscription: {{ confirm_url }}\n\n"
    "The link is valid for 7 days. If you did not ask, ignore this email: you will not be"
    " added.\n"
)


@dataclass
class Outgoing:
    """What to publish after the transaction committed."""

    messages: list[MessageRequested] = field(default_factory=list)
    contacts: list[ContactEvent] = field(default_factory=list)
    # What the fold decided, for the metric (not compared: replays decide alike).
    outcome: str = field(default="unchanged", compare=False)


def allowed_fields(raw: Any, editable: list[str]) -> dict[str, str]:
    """The editable fields among `raw`, as trimmed strings of at most MAX_FIELD_CHARS."""
    if not isinstance(raw, dict):
        return {}
    kept: dict[str, str] = {}
    for name in editable[:MAX_FIELDS]:
        value = raw.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            kept[name] = str(value).strip()[:MAX_FIELD_CHARS]
    return kept


def confirmation_key(list_id: UUID, email: str, at: datetime) -> str:
    """One idempotency key per address, list and hour: the dispatcher sends it once."""
    return f"confirm:{list_id}:{email}:{at.astimezone(UTC):%Y%m%d%H}"


class Subscriptions:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        secret_key: str,
        public_base_url: str,
        erasure_key: bytes | None,
    ) -> None:
        self.pool = pool
        self.secret_key = secret_key
        self.public_base_url = public_base_url
        self.erasure_key = erasure_key

    async def handle(self, event: ContactEvent, now: datetime | None = None) -> Outgoing:
        if event.action not in HANDLED or event.email is None:
            return Outgoing()
        try:
            email = normalised_address(event.email)
        except InvalidAddress:
            log.info("contact event with an invalid address ignored", event_id=event.event_id)
            return Outgoing()
        at = now or datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            if event.action == "subscribed":
                out = await self._subscribed(conn, event, email, at)
            elif event.action == "confirmed":
                out = await self._confirmed(conn, event, email, at)
            elif event.action == "left":
                out = await self._left(conn, event, email, at)
            else:
                out = await self._preferences(conn, event, email)
        SUBSCRIPTIONS.labels(event.action, out.outcome).inc()
        return out

    # ----- subscribed -----

    async def _subscribed(
        self, conn: Conn, event: ContactEvent, email: str, at: datetime
    ) -> Outgoing:
        assert event.list_id is not None  # the schema requires it for `subscribed`
        lst = await conn.fetchrow(
            "SELECT id, name, opt_in, editable_fields, consent_text_version,"
            " confirmation_provider, confirmation_from_email, confirmation_from_name"
            " FROM lists WHERE id = $1 FOR KEY SHARE",
            event.list_id,
        )
        if lst is None:
            log.info("subscription to an unknown list ignored", list_id=str(event.list_id))
            return Outgoing(outcome="ignored")
        earlier = await conn.fetchrow(
            "SELECT id, joined, confirmation_key, recorded_at FROM consents WHERE event_id = $1",
            event.event_id,
        )
        if earlier is not None:  # a replay: publish again what was decided, decide nothing
            return self._replayed(lst, email, event, earlier)
        data = event.data
        basis = str(data["basis"]) if data.get("basis") in BASES else "consent"
        source = (event.source or "form")[:40]
        # The version the form showed, if it says; else the list's current one.
        version = data.get("consent_text_version")
        consent = {
            "ip": str(data.get("ip") or "")[:64] or None,
            "user_agent": str(data.get("user_agent") or "")[:512] or None,
            "version": version if isinstance(version, int) else lst["consent_text_version"],
            "at": at,
        }
        if await self._suppressed(conn, email):
            await self._record(conn, lst["id"], email, basis, source, "refused", consent, event)
            log.info("subscription of a suppressed address refused", list_id=str(lst["id"]))
            return Outgoing(outcome="refused")
        row = await conn.fetchrow(
            "SELECT id, status FROM recipients WHERE list_id = $1 AND email = $2 FOR UPDATE",
            lst["id"],
            email,
        )
        if row is not None and row["status"] == "active":
            await self._record(conn, lst["id"], email, basis, source, "given", consent, event)
            return Outgoing()
        status = "active" if lst["opt_in"] == "single" else "unconfirmed"
        fields = allowed_fields(data.get("fields"), list(lst["editable_fields"]))
        if row is None:
            await conn.execute(
                "INSERT INTO recipients (list_id, email, fields, status)"
                " VALUES ($1, $2, $3::jsonb, $4)",
                lst["id"],
                email,
                fields,
                status,
            )
        else:
            # Still unconfirmed: the latest form's fields (whoever sent an earlier one, only
            # the person who follows a link makes the row active). Otherwise (they left):
            # their fields stay.
            await conn.execute(
                "UPDATE recipients SET status = $2, updated_at = now(),"
                " fields = CASE WHEN status = 'unconfirmed' THEN fields || $3::jsonb"
                " ELSE fields END WHERE id = $1",
                row["id"],
                status,
                fields,
            )
        if status == "active":
            consent_id = await self._record(
                conn, lst["id"], email, basis, source, "given", consent, event
            )
            await conn.execute("UPDATE consents SET joined = true WHERE id = $1", consent_id)
            joined = _joined(lst["id"], email, source, consent_id, at)
            return Outgoing(contacts=[joined], outcome="joined")
        consent_id = await self._record(
            conn, lst["id"], email, basis, source, "pending", consent, event
        )
        if not lst["confirmation_from_email"]:
            log.warning("double opt-in list has no confirmation sender", list_id=str(lst["id"]))
            return Outgoing(outcome="pending")
        sent = await conn.fetchval(
            "INSERT INTO confirmation_sends (email, last_sent_at) VALUES ($1, $2)"
            " ON CONFLICT (email) DO UPDATE SET last_sent_at = EXCLUDED.last_sent_at"
            " WHERE confirmation_sends.last_sent_at <= $2 - $3::interval"
            " RETURNING true",
            email,
            at,
            CONFIRMATION_INTERVAL,
        )
        if not sent:
            log.info("confirmation already sent within the hour", list_id=str(lst["id"]))
            return Outgoing(outcome="capped")
        key = confirmation_key(lst["id"], email, at)
        await conn.execute(
            "UPDATE consents SET confirmation_key = $2 WHERE id = $1", consent_id, key
        )
        message = self._confirmation(lst, email, key, at)
        return Outgoing(messages=[message], outcome="confirmation_sent")

    def _replayed(
        self, lst: asyncpg.Record, email: str, event: ContactEvent, earlier: asyncpg.Record
    ) -> Outgoing:
        if earlier["confirmation_key"] is not None:
            message = self._confirmation(
                lst, email, earlier["confirmation_key"], earlier["recorded_at"]
            )
            return Outgoing(messages=[message], outcome="replayed")
        if earlier["joined"]:
            source = (event.source or "form")[:40]
            joined = _joined(lst["id"], email, source, earlier["id"], earlier["recorded_at"])
            return Outgoing(contacts=[joined], outcome="replayed")
        return Outgoing(outcome="replayed")

    async def _suppressed(self, conn: Conn, email: str) -> bool:
        if await conn.fetchval("SELECT true FROM suppressions WHERE email = $1", email):
            return True
        if self.erasure_key is None:
            return False
        return await suppressions.is_erased(conn, email, self.erasure_key)

    async def _record(
        self,
        conn: Conn,
        list_id: UUID,
        email: str,
        basis: str,
        source: str,
        status: str,
        consent: dict[str, Any],
        event: ContactEvent,
    ) -> int:
        consent_id: int = await conn.fetchval(
            "INSERT INTO consents (list_id, email, basis, source, status, ip, user_agent,"
            " consent_text_version, event_id, recorded_at, given_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            list_id,
            email,
            basis,
            source,
            status,
            consent["ip"],
            consent["user_agent"],
            consent["version"],
            event.event_id,
            consent["at"],
            event.occurred_at,
        )
        return consent_id

    def _confirmation(
        self, lst: asyncpg.Record, email: str, key: str, issued_at: datetime
    ) -> MessageRequested:
        url = confirm_url(self.public_base_url, self.secret_key, lst["id"], email, issued_at)
        return MessageRequested(
            idempotency_key=key,
            to=email,
            content=InlineContent(
                subject=_SUBJECT,
                html=_HTML,
                text=_TEXT,
                from_email=lst["confirmation_from_email"],
                from_name=lst["confirmation_from_name"],
            ),
            data={"confirm_url": url, "list_name": lst["name"]},
            category=CONFIRMATION_CATEGORY,
            # No tracking: the link must reach the edge as it was signed.
            track=False,
            provider=lst["confirmation_provider"],
            requested_at=issued_at,
        )

    # ----- confirmed, left, preferences -----

    async def _confirmed(
        self, conn: Conn, event: ContactEvent, email: str, at: datetime
    ) -> Outgoing:
        recipient_id = await conn.fetchval(
            "UPDATE recipients SET status = 'active', updated_at = now()"
            " WHERE list_id = $1 AND email = $2 AND status = 'unconfirmed' RETURNING id",
            event.list_id,
            email,
        )
        assert event.list_id is not None
        if recipient_id is None:
            # Already confirmed, left since, or removed: nothing changes. A replay of the
            # event that confirmed publishes its `joined` again (it may have been lost
            # between the commit and the publish); consumers dedupe on its id.
            replayed = await conn.fetchval(
                "SELECT min(confirmed_at) FROM consents"
                " WHERE list_id = $1 AND email = $2 AND confirmed_by = $3",
                event.list_id,
                email,
                event.event_id,
            )
            if replayed is None:
                return Outgoing()
            at = replayed
        else:
            await conn.execute(
                "UPDATE consents SET status = 'confirmed', confirmed_at = $3, confirmed_by = $4"
                " WHERE list_id = $1 AND email = $2 AND status = 'pending'",
                event.list_id,
                email,
                at,
                event.event_id,
            )
        joined = ContactEvent(
            event_id=f"joined:{event.event_id}"[:255],
            action="joined",
            email=email,
            list_id=event.list_id,
            occurred_at=at,
            source="confirmation",
        )
        if recipient_id is None:
            return Outgoing(contacts=[joined], outcome="replayed")
        log.info("subscription confirmed", list_id=str(event.list_id))
        return Outgoing(contacts=[joined], outcome="confirmed")

    async def _left(self, conn: Conn, event: ContactEvent, email: str, at: datetime) -> Outgoing:
        await conn.execute(
            "UPDATE recipients SET status = 'unsubscribed', updated_at = now()"
            " WHERE list_id = $1 AND email = $2 AND status <> 'unsubscribed'",
            event.list_id,
            email,
        )
        await conn.execute(
            "UPDATE consents SET status = 'withdrawn', withdrawn_at = $3"
            " WHERE list_id = $1 AND email = $2 AND status IN ('pending', 'confirmed', 'given')",
            event.list_id,
            email,
            at,
        )
        return Outgoing(outcome="left")

    async def _preferences(self, conn: Conn, event: ContactEvent, email: str) -> Outgoing:
        if event.list_id is None:
            return Outgoing(outcome="ignored")
        editable = await conn.fetchval(
            "SELECT editable_fields FROM lists WHERE id = $1", event.list_id
        )
        fields = allowed_fields(event.data.get("fields"), list(editable or []))
        if fields:
            await conn.execute(
                "UPDATE recipients SET fields = fields || $3::jsonb, updated_at = now()"
                " WHERE list_id = $1 AND email = $2",
                event.list_id,
                email,
                fields,
            )
            return Outgoing(outcome="preferences")
        return Outgoing(outcome="ignored")


def _joined(list_id: UUID, email: str, source: str, consent_id: int, at: datetime) -> ContactEvent:
    return ContactEvent(
        event_id=f"joined:consent:{consent_id}",
        action="joined",
        email=email,
        list_id=list_id,
        occurred_at=at,
        source="form" if source == "form" else "preferences",
    )
