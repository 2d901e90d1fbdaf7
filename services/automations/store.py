"""PostgreSQL adapter of services/automations: enrolment, durable timers, step records,
the outbox of `message.requested`.

It owns `automations` (with the API, which writes definitions), `automation_versions`,
`automation_runs`, `automation_steps`, `automation_outbox` and `automation_imports`. It
reads `recipients` (merge fields, zone, which import inserted whom), `suppressions`
before each send, `import_jobs` to sweep imports whose `import.completed` was lost, and the
tracker's read models: `messages` (a message is accounted for) and `delivery_events`
(opens and clicks of a message, for branches).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from pydantic import ValidationError

from libs.automations.definition import DEFINITION, AnniversaryTrigger, Definition
from libs.common.events import MessageRequested
from libs.common.logging import get_logger
from libs.common.sendtime import local_instant, parse_hhmm
from services.automations import metrics
from services.automations.machine import (
    Advance,
    Engagement,
    Facts,
    advance,
    branch_sources,
    zone_of,
)

log = get_logger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy
# Message ids of automation sends: uuid5 of the run and step, so a step's message is the
# same message however often it is published.
MESSAGE_NAMESPACE = uuid.UUID("6f0d7f7e-2b55-4d0e-9d3c-6a8a7c1e2a29")


def message_id_of(run_id: int, step: int) -> UUID:
    return uuid.uuid5(MESSAGE_NAMESPACE, f"{run_id}:{step}")


def idempotency_key_of(run_id: int, step: int) -> str:
    return f"auto:{run_id}:{step}"


@dataclass(frozen=True)
class Automation:
    id: UUID
    version: int
    status: str
    definition: Definition
    created_at: datetime


@dataclass(frozen=True)
class Outgoing:
    message_id: UUID
    key: str
    event: MessageRequested


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _automation(row: asyncpg.Record) -> Automation:
    return Automation(
        row["id"],
        row["version"],
        row["status"],
        DEFINITION.validate_python(_json(row["definition"])),
        row["created_at"],
    )


_CURRENT = (
    "SELECT a.id, a.version, a.status, a.created_at, v.definition FROM automations a"
    " JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version"
)


class AutomationStore:
    def __init__(self, pool: asyncpg.Pool, batch: int = 200) -> None:
        self.pool = pool
        self.batch = batch

    # --- what triggers what -------------------------------------------------------------

    async def joined_automations(self, list_id: UUID) -> list[Automation]:
        rows = await self.pool.fetch(
            _CURRENT + " WHERE a.trigger_kind = 'joined' AND a.trigger_list_id = $1", list_id
        )
        return [_automation(r) for r in rows]

    async def event_automations(self, name: str) -> list[Automation]:
        rows = await self.pool.fetch(
            _CURRENT + " WHERE a.trigger_kind = 'event' AND a.trigger_event = $1", name
        )
        return [_automation(r) for r in rows]

    async def anniversary_automations(self) -> list[Automation]:
        rows = await self.pool.fetch(
            _CURRENT + " WHERE a.trigger_kind = 'anniversary' AND a.status = 'active'"
        )
        return [_automation(r) for r in rows]

    # --- enrolment ------------------------------------------------------------------------

    async def enrol(
        self,
        automation: Automation,
        email: str,
        trigger: str,
        now: datetime,
        list_id: UUID | None = None,
        data: dict[str, Any] | None = None,
        enrol_key: str | None = None,
        due_at: datetime | None = None,
    ) -> bool:
        """One run for the person (False: they have had one). Its first step is due now
        (or at `due_at`). `list_id`: the list whose row of the person gives merge fields
        and zone (none without it: an address alone is not indexed across lists)."""
        email = email.strip().lower()
        recipient_id = None
        if list_id is not None:
            recipient_id = await self.pool.fetchval(
                "SELECT id FROM recipients WHERE list_id = $1 AND email = $2", list_id, email
            )
        created = await self.pool.fetchval(
            "INSERT INTO automation_runs (automation_id, version, enrol_key, email,"
            " recipient_id, trigger, data, due_at, started_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (automation_id, enrol_key) DO NOTHING RETURNING id",
            automation.id,
            automation.version,
            enrol_key or email,
            email,
            recipient_id,
            trigger,
            data or {},
            due_at or now,
            now,
        )
        return created is not None

    async def enrol_import(
        self, automation: Automation, import_id: UUID, list_id: UUID, now: datetime
    ) -> int | None:
        """Enrol every recipient `import_id` inserted into `list_id`, once per import
        (None: done before)."""
        async with self.pool.acquire() as conn, conn.transaction():
            marked = await conn.fetchval(
                "INSERT INTO automation_imports (automation_id, import_id, enrolled)"
                " VALUES ($1, $2, 0) ON CONFLICT DO NOTHING RETURNING 1",
                automation.id,
                import_id,
            )
            if marked is None:
                return None
            count = await conn.fetchval(
                "WITH added AS ("
                " INSERT INTO automation_runs (automation_id, version, enrol_key, email,"
                "  recipient_id, trigger, due_at, started_at)"
                " SELECT $1, $2, r.email, r.email, r.id, $6, $5, $5"
                "   FROM recipients r WHERE r.list_id = $4 AND r.import_id = $3"
                " ON CONFLICT (automation_id, enrol_key) DO NOTHING RETURNING 1)"
                " SELECT count(*) FROM added",
                automation.id,
                automation.version,
                import_id,
                list_id,
                now,
                f"import:{import_id}",
            )
            await conn.execute(
                "UPDATE automation_imports SET enrolled = $3 WHERE automation_id = $1"
                " AND import_id = $2",
                automation.id,
                import_id,
                count,
            )
        return int(count)

    async def unswept_imports(self, since: timedelta) -> list[tuple[UUID, UUID]]:
        """(import id, list id) of imports completed in the last `since` into a list that
        an import-triggered automation created before it watches, not yet enrolled: an
        `import.completed` that never arrived (a broker loss) still enrols its people."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT j.id, j.list_id FROM import_jobs j"
            " JOIN automations a ON a.trigger_kind = 'joined' AND a.trigger_list_id = j.list_id"
            " WHERE j.status = 'completed' AND j.finished_at > now() - $1::interval"
            "   AND j.finished_at >= a.created_at"
            "   AND NOT EXISTS (SELECT 1 FROM automation_imports i"
            "                    WHERE i.automation_id = a.id AND i.import_id = j.id)",
            since,
        )
        return [(r["id"], r["list_id"]) for r in rows]

    async def anniversary_candidates(
        self, automation: Automation, trigger: AnniversaryTrigger
    ) -> list[asyncpg.Record]:
        """The list's recipients with the date field set (one scan of the list)."""
        return await self.pool.fetch(
            "SELECT id, email, fields->>$2 AS day, fields->>'timezone' AS timezone"
            " FROM recipients WHERE list_id = $1 AND fields ? $2",
            trigger.list_id,
            trigger.field,
        )

    # --- goals and leaving -----------------------------------------------------------------

    async def reach_goal(self, email: str, event: str, now: datetime) -> int:
        """Stop the person's active runs whose version's goal is `event`: reached."""
        result = await self.pool.execute(
            "UPDATE automation_runs r SET status = 'stopped', stop_reason = 'goal',"
            " goal_at = $3, finished_at = $3"
            " FROM automation_versions v"
            " WHERE r.email = $1 AND r.status = 'active' AND v.automation_id = r.automation_id"
            "   AND v.version = r.version AND v.definition->'goal'->>'event' = $2",
            email.strip().lower(),
            event,
            now,
        )
        return int(result.split()[-1])

    async def stop_for_list(self, email: str, list_id: UUID, reason: str, now: datetime) -> int:
        result = await self.pool.execute(
            "UPDATE automation_runs r SET status = 'stopped', stop_reason = $3, finished_at = $4"
            " FROM automations a WHERE r.email = $1 AND r.status = 'active'"
            "   AND a.id = r.automation_id AND a.trigger_list_id = $2",
            email.strip().lower(),
            list_id,
            reason,
            now,
        )
        return int(result.split()[-1])

    # --- the timers ---------------------------------------------------------------------------

    async def run_due(self, now: datetime) -> tuple[int, int, int]:
        """Advance up to `batch` due runs of active automations in one transaction: each
        run's steps, its outbox rows and its next timer commit together (the exactly-once
        of each (run, step)). Returns (runs advanced, messages queued, runs stopped because
        the address is suppressed)."""
        queued = stopped = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT r.id, r.automation_id, r.version, r.email, r.recipient_id, r.data,"
                "       r.step, r.due_at, v.definition, rc.fields"
                "  FROM automation_runs r"
                "  JOIN automations a ON a.id = r.automation_id AND a.status = 'active'"
                "  JOIN automation_versions v ON v.automation_id = r.automation_id"
                "   AND v.version = r.version"
                "  LEFT JOIN recipients rc ON rc.id = r.recipient_id"
                " WHERE r.status = 'active' AND r.due_at <= $1"
                " ORDER BY r.due_at LIMIT $2 FOR UPDATE OF r SKIP LOCKED",
                now,
                self.batch,
            )
            if not rows:
                return 0, 0, 0
            suppressed = {
                r["email"]
                for r in await conn.fetch(
                    "SELECT email FROM suppressions WHERE email = ANY($1::text[])",
                    list({r["email"] for r in rows}),
                )
            }
            for row in rows:
                definition = DEFINITION.validate_python(_json(row["definition"]))
                fields = _json(row["fields"]) or {}
                engaged = await _engagement(conn, row["id"], branch_sources(definition))
                default_zone = getattr(definition.trigger, "timezone", "UTC")
                facts = Facts(zone_of(fields, default_zone), row["email"] in suppressed, engaged)
                result = advance(definition, row["step"], row["due_at"], facts)
                queued += await _apply(conn, row, definition, fields, result, now)
                stopped += result.stop_reason == "unsubscribed"
        return len(rows), queued, stopped

    # --- the outbox --------------------------------------------------------------------------

    async def unpublished(self, limit: int) -> list[Outgoing]:
        """The next messages to publish. A row that is no valid message any more (written
        by hand, or changed by an erasure) is set aside, published_at set with publishes
        0, and logged: otherwise it would come first in every tick, and hold back all the
        rows behind it."""
        rows = await self.pool.fetch(
            "SELECT message_id, key, payload FROM automation_outbox WHERE published_at IS NULL"
            " ORDER BY created_at LIMIT $1",
            limit,
        )
        good: list[Outgoing] = []
        refused: list[UUID] = []
        for r in rows:
            try:
                event = MessageRequested.model_validate(_json(r["payload"]))
            except ValidationError as exc:
                log.error("outbox row is no message; set aside", message_id=str(r["message_id"]),
                          error=str(exc).splitlines()[0])  # fmt: skip
                refused.append(r["message_id"])
                continue
            good.append(Outgoing(r["message_id"], r["key"], event))
        if refused:
            metrics.OUTBOX_REFUSED.inc(len(refused))
            await self.pool.execute(
                "UPDATE automation_outbox SET published_at = now()"
                " WHERE message_id = ANY($1::uuid[]) AND published_at IS NULL",
                refused,
            )
        return good

    async def published(self, message_ids: Sequence[UUID], now: datetime) -> None:
        await self.pool.execute(
            "UPDATE automation_outbox SET published_at = $2, publishes = publishes + 1"
            " WHERE message_id = ANY($1::uuid[])",
            list(message_ids),
            now,
        )

    async def republish_unaccounted(self, within: timedelta = timedelta(days=7)) -> int:
        """After a broker loss: every message published in the last `within` that the
        tracker has no outcome for is published again (same id and key: the dispatcher
        sends it at most once)."""
        result = await self.pool.execute(
            "UPDATE automation_outbox o SET published_at = NULL WHERE published_at IS NOT NULL"
            " AND created_at > now() - $1::interval"
            " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.message_id = o.message_id)",
            within,
        )
        return int(result.split()[-1])

    async def gauges(self, now: datetime) -> dict[str, int]:
        row = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM automation_runs WHERE status = 'active') AS active,"
            " (SELECT count(*) FROM automation_runs r JOIN automations a"
            "   ON a.id = r.automation_id AND a.status = 'active'"
            "   WHERE r.status = 'active' AND r.due_at <= $1) AS due,"
            " (SELECT count(*) FROM automation_outbox WHERE published_at IS NULL) AS outbox",
            now,
        )
        assert row is not None
        return dict(row)


async def _engagement(
    conn: Conn, run_id: int, steps: list[int]
) -> dict[int, frozenset[Engagement]]:
    """Opens and clicks of the run's mails of `steps`, from the tracker's delivery_events
    (a message's events carry its id as campaign_id)."""
    if not steps:
        return {}
    rows = await conn.fetch(
        "SELECT s.step, array_agg(DISTINCT e.event) AS events FROM automation_steps s"
        " JOIN delivery_events e ON e.campaign_id = s.message_id AND e.event IN ('open', 'click')"
        " WHERE s.run_id = $1 AND s.step = ANY($2::int[]) GROUP BY s.step",
        run_id,
        steps,
    )
    found: dict[int, frozenset[Engagement]] = {}
    for r in rows:
        kinds: set[Engagement] = set()
        if "open" in r["events"]:
            kinds.add("opened")
        if "click" in r["events"]:
            kinds.update(("opened", "clicked"))  # a click implies the mail was opened
        found[r["step"]] = frozenset(kinds)
    return found


async def _apply(
    conn: Conn,
    row: asyncpg.Record,
    definition: Definition,
    fields: dict[str, Any],
    result: Advance,
    now: datetime,
) -> int:
    run_id = row["id"]
    queued = 0
    for done in result.done:
        message_id = None
        if done.send is not None:
            message_id = message_id_of(run_id, done.step)
            send = done.send
            event = MessageRequested(
                message_id=message_id,
                idempotency_key=idempotency_key_of(run_id, done.step),
                to=row["email"],
                template_id=send.template_id,
                template_version=send.template_version,
                from_email=send.from_email,
                from_name=send.from_name,
                data={**fields, **(_json(row["data"]) or {})},
                category=send.category,
                requested_at=now,
            )
            await conn.execute(
                "INSERT INTO automation_outbox (message_id, run_id, step, key, payload)"
                " VALUES ($1, $2, $3, $4, $5)",
                message_id,
                run_id,
                done.step,
                row["email"],
                event.model_dump(mode="json"),
            )
            queued += 1
        await conn.execute(
            "INSERT INTO automation_steps (run_id, step, kind, outcome, message_id, done_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            run_id,
            done.step,
            done.kind,
            done.outcome,
            message_id,
            now,
        )
    finished = result.status != "active"
    await conn.execute(
        "UPDATE automation_runs SET step = $2, due_at = $3, status = $4, stop_reason = $5,"
        " finished_at = CASE WHEN $6::boolean THEN $7::timestamptz END WHERE id = $1",
        run_id,
        result.step,
        result.due_at,
        result.status,
        result.stop_reason,
        finished,
        now,
    )
    if result.stop_reason:
        log.info("automation run stopped", run_id=run_id, reason=result.stop_reason)
    return queued


def anniversary_due(
    month_day: tuple[int, int], zone_name: str | None, trigger: AnniversaryTrigger, now: datetime
) -> tuple[int, datetime] | None:
    """(year, instant) of the anniversary at `trigger.at` local time nearest `now` within
    [now - 1 day, now + 2 days], or None: what a scan enrols (once per year, by key)."""
    from libs.common.sendtime import zone_or_none

    zone = zone_or_none(zone_name or "") or zone_or_none(trigger.timezone)
    if zone is None:
        return None
    month, day = month_day
    wall_time = parse_hhmm(trigger.at)
    for year in (now.year - 1, now.year, now.year + 1):
        d = day
        if month == 2 and day == 29 and not _leap(year):
            d = 28
        at = local_instant(datetime(year, month, d, wall_time.hour, wall_time.minute), zone)
        if now - timedelta(days=1) <= at <= now + timedelta(days=2):
            return year, at
    return None


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
