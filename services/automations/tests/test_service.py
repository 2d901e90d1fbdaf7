"""The service as it runs: real PostgreSQL and broker, its clock injected by the test."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer

from libs.automations.definition import DEFINITION
from libs.common.events import ContactEvent, ImportProgress, MessageRequested, Topic
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.automations.app import main
from services.automations.store import AutomationStore

T0 = datetime(2031, 5, 5, 8, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


async def create_automation(pool: asyncpg.Pool, definition: dict[str, Any]) -> UUID:
    parsed = DEFINITION.validate_python(definition)
    trigger = parsed.trigger
    automation_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO automations (id, name, trigger_kind, trigger_list_id, trigger_event)"
            " VALUES ($1, 'test', $2, $3, $4)",
            automation_id,
            trigger.kind,
            getattr(trigger, "list_id", None),
            getattr(trigger, "event", None),
        )
        await conn.execute(
            "INSERT INTO automation_versions (automation_id, version, definition)"
            " VALUES ($1, 1, $2)",
            automation_id,
            parsed.dump(),
        )
    return automation_id


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, pool: asyncpg.Pool, producer: EventProducer, clock: FakeClock
) -> AsyncIterator[None]:
    ctx = ServiceContext("automations", settings, pool, producer, asyncio.Event())
    task = asyncio.create_task(main(ctx, clock))
    try:
        yield
    finally:
        ctx.stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


def joined(email: str, list_id: UUID, source: str = "api") -> ContactEvent:
    return ContactEvent(
        event_id=f"joined-{uuid.uuid4()}", action="joined", email=email, list_id=list_id,
        source=source, occurred_at=datetime.now(UTC),  # type: ignore[arg-type]
    )  # fmt: skip


async def sends(pool: asyncpg.Pool, automation_id: UUID) -> list[tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT r.email, s.step FROM automation_steps s JOIN automation_runs r ON r.id = s.run_id"
        " WHERE r.automation_id = $1 AND s.kind = 'send' ORDER BY r.email, s.step",
        automation_id,
    )
    return [(r["email"], r["step"]) for r in rows]


async def test_welcome_series_by_event_import_and_custom_event(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    tick = settings.model_copy(update={"automations_tick_s": 0.05})
    list_id = uuid.uuid4()
    await pool.execute("INSERT INTO lists (id, name) VALUES ($1, 'welcome')", list_id)
    template = uuid.uuid4()
    step = {"kind": "send", "template_id": str(template), "from_email": "hi@example.com"}
    welcome = await create_automation(
        pool,
        {
            "trigger": {"kind": "joined", "list_id": str(list_id)},
            "steps": [step, {"kind": "wait", "days": 3}, step, {"kind": "wait", "days": 4}, step],
            "goal": {"event": "purchase"},
        },
    )
    trial = await create_automation(
        pool, {"trigger": {"kind": "event", "event": "trial_started"}, "steps": [step]}
    )
    # Three people by import (their rows carry the import's id), two by the API's event.
    import_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('mailfleet.import_id', $1, true)", str(import_id))
        await conn.executemany(
            "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3)",
            [(list_id, f"imp{n}@example.com", {"first_name": f"I{n}"}) for n in range(3)],
        )
        await conn.execute(
            "INSERT INTO import_jobs (id, list_id, status, finished_at)"
            " VALUES ($1, $2, 'completed', now())",
            import_id,
            list_id,
        )
    await pool.execute(
        "INSERT INTO recipients (list_id, email) VALUES ($1, 'api0@example.com'),"
        " ($1, 'api1@example.com'), ($1, 'old@example.com')",
        list_id,
    )
    producer = EventProducer(settings)
    await producer.start()
    clock = FakeClock(T0)
    try:
        async with running(tick, pool, producer, clock):
            await producer.send(
                Topic.IMPORT_COMPLETED,
                str(list_id),
                ImportProgress(import_id=import_id, list_id=list_id, status="completed"),
            )
            for n in range(2):
                await producer.send(
                    Topic.CONTACT_EVENT, f"api{n}@example.com",
                    joined(f"api{n}@example.com", list_id),
                )  # fmt: skip
            # A joined event from before the automation existed (a replay) starts nothing.
            old = joined("old@example.com", list_id).model_copy(
                update={"occurred_at": datetime(2020, 1, 1, tzinfo=UTC)}
            )
            await producer.send(Topic.CONTACT_EVENT, "old@example.com", old)
            await producer.send(
                Topic.CONTACT_EVENT, "trial@example.com",
                ContactEvent(
                    event_id=f"c-{uuid.uuid4()}", action="custom", name="trial_started",
                    email="trial@example.com", occurred_at=datetime.now(UTC),
                ),
            )  # fmt: skip

            async def day0_sent() -> bool:
                return len(await sends(pool, welcome)) == 5 and len(await sends(pool, trial)) == 1

            await wait_for(day0_sent)
            assert {e for e, _ in await sends(pool, welcome)} == {
                "imp0@example.com", "imp1@example.com", "imp2@example.com",
                "api0@example.com", "api1@example.com",
            }  # fmt: skip
            # The outbox was published, each message once, with its run's key.
            await wait_for(
                lambda: pool.fetchval(
                    "SELECT count(*) = 0 FROM automation_outbox WHERE published_at IS NULL"
                )
            )
            # imp1 unsubscribes, api0 reaches the goal: neither gets day 3.
            await pool.execute(
                "INSERT INTO suppressions (email, reason) VALUES ('imp1@example.com', 'unsubscribe')"
            )
            await producer.send(
                Topic.CONTACT_EVENT, "api0@example.com",
                ContactEvent(
                    event_id=f"g-{uuid.uuid4()}", action="custom", name="purchase",
                    email="api0@example.com", occurred_at=datetime.now(UTC),
                ),
            )  # fmt: skip
            await wait_for(
                lambda: pool.fetchval(
                    "SELECT stop_reason = 'goal' FROM automation_runs WHERE email ="
                    " 'api0@example.com' AND automation_id = $1",
                    welcome,
                )
            )
            # Not yet due: nothing more at day 2 23:59.
            clock.at = T0 + timedelta(days=3) - timedelta(minutes=1)
            # Nothing is due by that clock (a tick of our own would find nothing either).
            assert await AutomationStore(pool).run_due(clock.at) == (0, 0, 0)
            assert len(await sends(pool, welcome)) == 5
        # Restarted (a new process would be the same: nothing is in memory) on day 3.
        clock.at = T0 + timedelta(days=3)
        async with running(tick, pool, producer, clock):

            async def day3_sent() -> bool:
                return len(await sends(pool, welcome)) == 8

            await wait_for(day3_sent)
            clock.at = T0 + timedelta(days=7)
            await wait_for(lambda: _count(pool, welcome, 11))
        got = await sends(pool, welcome)
        assert ("imp1@example.com", 2) not in got and ("api0@example.com", 2) not in got
        for email in ("imp0@example.com", "imp2@example.com", "api1@example.com"):
            assert [s for e, s in got if e == email] == [0, 2, 4]
        stopped = await pool.fetchval(
            "SELECT stop_reason FROM automation_runs WHERE email = 'imp1@example.com'"
        )
        assert stopped == "unsubscribed"
        # Every send step's message went out on the topic with its idempotency key.
        keys = await pool.fetch(
            "SELECT o.payload FROM automation_outbox o JOIN automation_runs r ON r.id = o.run_id"
            " WHERE r.automation_id = $1",
            welcome,
        )
        wanted = {orjson.loads(orjson.dumps(k["payload"]))["idempotency_key"] for k in keys}
        seen = await _requested_keys(settings.kafka_bootstrap_servers, wanted)
        assert seen == wanted
    finally:
        await producer.stop()


async def _count(pool: asyncpg.Pool, automation_id: UUID, n: int) -> bool:
    return len(await sends(pool, automation_id)) == n


async def _requested_keys(bootstrap: str, wanted: set[str], timeout: float = 20) -> set[str]:
    consumer = AIOKafkaConsumer(
        Topic.MESSAGE_REQUESTED.value, bootstrap_servers=bootstrap, group_id=None,
        auto_offset_reset="earliest", fetch_max_wait_ms=50,
    )  # fmt: skip
    await consumer.start()
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not wanted <= seen:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    key = MessageRequested.model_validate_json(r.value or b"").idempotency_key
                    if key in wanted:
                        seen.add(key)
    finally:
        await consumer.stop()
    return seen


async def test_pause_resume_versions_and_anniversaries(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    tick = settings.model_copy(update={"automations_tick_s": 0.05})
    list_id = uuid.uuid4()
    await pool.execute("INSERT INTO lists (id, name) VALUES ($1, 'versions')", list_id)
    step = {"kind": "send", "template_id": str(uuid.uuid4()), "from_email": "hi@example.com"}
    series = await create_automation(
        pool,
        {
            "trigger": {"kind": "joined", "list_id": str(list_id)},
            "steps": [step, {"kind": "wait", "days": 2}, step],
        },
    )
    birthday = await create_automation(
        pool,
        {
            "trigger": {"kind": "anniversary", "list_id": str(list_id), "field": "birthday"},
            "steps": [step],
        },
    )
    # Tokyo: 09:00 local on 7 May is 00:00 UTC; the other one has no zone (UTC: 09:00 UTC).
    await pool.execute(
        "INSERT INTO recipients (list_id, email, fields) VALUES"
        ' ($1, \'tokyo@example.com\', \'{"birthday": "1990-05-07", "timezone": "Asia/Tokyo"}\'),'
        " ($1, 'utc@example.com', '{\"birthday\": \"05-07\"}'),"
        " ($1, 'later@example.com', '{\"birthday\": \"1990-08-01\"}')",
        list_id,
    )
    producer = EventProducer(settings)
    await producer.start()
    clock = FakeClock(T0)  # 5 May 08:00 UTC
    try:
        async with running(tick, pool, producer, clock):
            await producer.send(
                Topic.CONTACT_EVENT, "v1@example.com", joined("v1@example.com", list_id)
            )
            await wait_for(lambda: _count(pool, series, 1))
            # Version 2 waits 5 days; the run in flight keeps version 1's 2 days.
            v2 = DEFINITION.validate_python(
                {
                    "trigger": {"kind": "joined", "list_id": str(list_id)},
                    "steps": [step, {"kind": "wait", "days": 5}, step],
                }
            )
            await pool.execute(
                "INSERT INTO automation_versions (automation_id, version, definition)"
                " VALUES ($1, 2, $2)",
                series,
                v2.dump(),
            )
            await pool.execute("UPDATE automations SET version = 2 WHERE id = $1", series)
            await producer.send(
                Topic.CONTACT_EVENT, "v2@example.com", joined("v2@example.com", list_id)
            )
            await wait_for(lambda: _count(pool, series, 2))
            # Paused on day 2: v1's second step waits.
            await pool.execute("UPDATE automations SET status = 'paused' WHERE id = $1", series)
            clock.at = T0 + timedelta(days=2)
            # The birthday scan found both 7 May birthdays (Tokyo on the first tick already).
            await wait_for(
                lambda: pool.fetchval(
                    "SELECT count(*) = 2 FROM automation_runs WHERE automation_id = $1", birthday
                )
            )
            due = {
                r["email"]: r["due_at"]
                for r in await pool.fetch(
                    "SELECT email, due_at FROM automation_runs WHERE automation_id = $1", birthday
                )
            }
            assert due == {
                "tokyo@example.com": datetime(2031, 5, 7, 0, 0, tzinfo=UTC),
                "utc@example.com": datetime(2031, 5, 7, 9, 0, tzinfo=UTC),
            }
            assert len(await sends(pool, series)) == 2  # paused: nothing more
            await pool.execute("UPDATE automations SET status = 'active' WHERE id = $1", series)
            await wait_for(lambda: _count(pool, series, 3))
            got = await sends(pool, series)
            assert ("v1@example.com", 2) in got and ("v2@example.com", 2) not in got
            versions = dict(
                await pool.fetch(
                    "SELECT email, version FROM automation_runs WHERE automation_id = $1", series
                )
            )
            assert versions == {"v1@example.com": 1, "v2@example.com": 2}
            clock.at = T0 + timedelta(days=5)
            await wait_for(lambda: _count(pool, series, 4))
            assert await _count(pool, birthday, 2)
    finally:
        await producer.stop()


async def test_an_outbox_row_that_is_no_message_is_set_aside_and_the_rest_goes(
    pool: asyncpg.Pool,
) -> None:
    """A row that no longer decodes (written by hand, rewritten by an erasure) held back
    every row behind it, tick after tick, when the tick failed on it."""
    step = {"kind": "send", "template_id": str(uuid.uuid4()), "from_email": "hi@example.com"}
    automation = await create_automation(
        pool, {"trigger": {"kind": "event", "event": "outbox_test"}, "steps": [step, step]}
    )
    run = await pool.fetchval(
        "INSERT INTO automation_runs (automation_id, version, enrol_key, email, trigger,"
        " due_at, started_at) VALUES ($1, 1, 'x@example.com', 'x@example.com', 'event',"
        " now(), now()) RETURNING id",
        automation,
    )
    bad, good = uuid.uuid4(), uuid.uuid4()
    message = MessageRequested(
        message_id=good, to="x@example.com", idempotency_key=f"auto:{run}:1",
        content={"subject": "Hi", "html": "<p>Hi</p>", "from_email": "news@example.com"},
    )  # type: ignore[arg-type]  # fmt: skip
    await pool.execute(
        "INSERT INTO automation_outbox (message_id, run_id, step, key, payload, created_at)"
        " VALUES ($1, $2, 0, 'x', $3, now() - interval '10 years'),"
        " ($4, $2, 1, 'x', $5, now() - interval '10 years')",
        bad,
        run,
        {"to": "erased:ab:cd"},
        good,
        orjson.loads(message.model_dump_json()),
    )
    store = AutomationStore(pool)
    batch = await store.unpublished(1000)
    assert good in {o.message_id for o in batch}
    assert bad not in {o.message_id for o in batch}
    assert await pool.fetchval(
        "SELECT published_at IS NOT NULL AND publishes = 0 FROM automation_outbox"
        " WHERE message_id = $1",
        bad,
    )
    assert good in {o.message_id for o in await store.unpublished(1000)}  # still to publish
