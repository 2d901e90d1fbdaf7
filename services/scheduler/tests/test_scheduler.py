"""Scheduler against the real PostgreSQL and broker: exactly-once claim, the batch plan,
emission through Kafka, and re-emission of batches the tracker has not accounted for."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from conftest import first_events, make_settings
from libs.common.events import BatchReady, CampaignControl, CampaignScheduled, CampaignStatus, Topic
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.scheduler.app import BatchEmitter, main
from services.scheduler.repository import ScheduleRepository


async def seed_campaign(
    pool: asyncpg.Pool, recipients: int, suppressed: int = 0, status: str = "scheduled"
) -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('t') RETURNING id")
    emails = [f"user{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(recipients)]
    await pool.copy_records_to_table(
        "recipients",
        records=[(list_id, e, {"first_name": f"N{i}"}) for i, e in enumerate(emails)],
        columns=["list_id", "email", "fields"],
    )
    await pool.executemany(
        "INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')",
        [(e,) for e in emails[:suppressed]],
    )
    send_at = datetime.now(UTC) - timedelta(seconds=1) if status == "scheduled" else None
    return await pool.fetchval(
        """
        INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status, send_at)
        VALUES ('c', 'Hi {{ first_name }}', '<p>x</p>', 'f@example.com', $1, 'sink', $2, $3)
        RETURNING id
        """,
        list_id,
        status,
        send_at,
    )


async def test_two_schedulers_claim_a_campaign_exactly_once(pool: asyncpg.Pool) -> None:
    campaign_id = await seed_campaign(pool, recipients=23, suppressed=3)
    await pool.execute(
        "INSERT INTO schedules (campaign_id, send_at, timezone, revision) VALUES ($1, now(), 'UTC', 1)",
        campaign_id,
    )
    repo = ScheduleRepository(pool)
    plans = await asyncio.gather(*(repo.claim_and_plan(campaign_id, 5) for _ in range(4)))
    winners = [p for p in plans if p is not None]
    assert len(winners) == 1
    plan = winners[0]
    assert (plan.audience_total, plan.suppressed_total, plan.batches_total) == (23, 3, 4)
    rows = await pool.fetch(
        "SELECT batch_no, recipient_ids FROM batch_plans WHERE campaign_id = $1 ORDER BY batch_no",
        campaign_id,
    )
    assert [len(r["recipient_ids"]) for r in rows] == [5, 5, 5, 5]
    planned = [rid for r in rows for rid in r["recipient_ids"]]
    sendable = await pool.fetch(
        """SELECT r.id FROM recipients r JOIN campaigns c ON c.list_id = r.list_id
           WHERE c.id = $1 AND r.email NOT IN (SELECT email FROM suppressions) ORDER BY r.id""",
        campaign_id,
    )
    assert planned == [r["id"] for r in sendable]  # every sendable recipient, once
    assert await pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id) == (
        "in_progress"
    )


async def test_campaign_not_yet_due_or_not_scheduled_is_not_claimed(pool: asyncpg.Pool) -> None:
    draft = await seed_campaign(pool, recipients=2, status="draft")
    repo = ScheduleRepository(pool)
    assert await repo.claim_and_plan(draft, 5) is None
    assert await pool.fetchval("SELECT status FROM campaigns WHERE id = $1", draft) == "draft"


async def collect_batches(
    bootstrap: str, campaign_id: uuid.UUID, expected: int, timeout: float = 30
) -> list[BatchReady]:
    consumer = AIOKafkaConsumer(
        Topic.BATCH_READY.value,
        bootstrap_servers=bootstrap,
        group_id=None,  # no group: nothing to join (Tansu holds a join for seconds)
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    found: list[BatchReady] = []
    try:
        async with asyncio.timeout(timeout):
            while len(found) < expected:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        event = BatchReady.model_validate_json(r.value)
                        if event.campaign_id == campaign_id:
                            found.append(event)
    finally:
        await consumer.stop()
    return found


@pytest.fixture
async def running_scheduler(pool: asyncpg.Pool, settings: Settings) -> object:
    s = make_settings(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        batch_size=10,
        scheduler_tick_seconds=0.1,
    )
    producer = EventProducer(s)
    await producer.start()
    ctx = ServiceContext("scheduler", s, pool, producer, asyncio.Event())
    task = asyncio.create_task(main(ctx))
    yield ctx
    ctx.stop.set()
    await asyncio.wait_for(task, 30)
    await producer.stop()


async def test_scheduled_event_from_an_internal_service_starts_the_campaign(
    pool: asyncpg.Pool, settings: Settings, running_scheduler: ServiceContext
) -> None:
    campaign_id = await seed_campaign(pool, recipients=35, suppressed=2, status="draft")
    await running_scheduler.producer.send(
        Topic.CAMPAIGN_SCHEDULED,
        str(campaign_id),
        CampaignScheduled(campaign_id=campaign_id, send_at=datetime.now(UTC), revision=1),
    )
    batches = await collect_batches(settings.kafka_bootstrap_servers, campaign_id, expected=4)
    assert sorted(b.batch_no for b in batches) == [0, 1, 2, 3]
    emails = [r.email for b in batches for r in b.recipients]
    assert len(emails) == len(set(emails)) == 33
    first = batches[0]
    assert (first.batches_total, first.audience_total, first.suppressed_total) == (4, 35, 2)
    assert all(r.fields["first_name"].startswith("N") for b in batches for r in b.recipients)
    assert await pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id) == (
        "in_progress"
    )


async def test_only_unaccounted_batches_are_emitted_again(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    campaign_id = await seed_campaign(pool, recipients=30)
    repo = ScheduleRepository(pool)
    plan = await repo.claim_and_plan(campaign_id, 10)
    assert plan is not None and plan.batches_total == 3
    producer = EventProducer(settings)
    await producer.start()
    try:
        ctx = ServiceContext("scheduler", settings, pool, producer, asyncio.Event())
        emitter = BatchEmitter(ctx, repo)
        # First emission covers every batch once, whatever the cutoff.
        assert await emitter.emit_due(datetime.now(UTC) - timedelta(hours=1)) >= 3
        # The tracker accounts for batch 1; a broker loss (cutoff = now) re-emits 0 and 2.
        await pool.execute(
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients) VALUES ($1, $2, 10)",
            f"{campaign_id}:1",
            campaign_id,
        )
        await emitter.emit_due(datetime.now(UTC))
    finally:
        await producer.stop()
    emitted = dict(
        await pool.fetch(
            "SELECT batch_no, emitted FROM batch_plans WHERE campaign_id = $1", campaign_id
        )
    )
    assert emitted == {0: 2, 1: 1, 2: 2}
    batches = await collect_batches(settings.kafka_bootstrap_servers, campaign_id, expected=5)
    assert sorted((b.batch_no, b.emitted) for b in batches) == [
        (0, 1),
        (0, 2),
        (1, 1),
        (2, 1),
        (2, 2),
    ]


async def test_a_rescheduled_campaign_waits_for_its_new_time(pool: asyncpg.Pool) -> None:
    campaign_id = await seed_campaign(pool, recipients=3)
    # The schedule row still has the old, past time; the campaign was moved to tomorrow.
    await pool.execute(
        "INSERT INTO schedules (campaign_id, send_at, timezone, revision) VALUES ($1, now(), 'UTC', 1)",
        campaign_id,
    )
    await pool.execute(
        "UPDATE campaigns SET send_at = now() + interval '1 day', schedule_revision = 2 WHERE id = $1",
        campaign_id,
    )
    repo = ScheduleRepository(pool)
    assert await repo.claim_and_plan(campaign_id, 5) is None
    row = await pool.fetchrow("SELECT * FROM schedules WHERE campaign_id = $1", campaign_id)
    assert row["claimed_at"] is None and row["revision"] == 2
    assert row["send_at"] > datetime.now(UTC) + timedelta(hours=23)
    assert campaign_id not in await repo.due_campaigns(limit=1000)


async def test_unschedule_older_than_the_schedule_is_ignored(pool: asyncpg.Pool) -> None:
    campaign_id = await seed_campaign(pool, recipients=1)
    await pool.execute(
        "INSERT INTO schedules (campaign_id, send_at, timezone, revision) VALUES ($1, now(), 'UTC', 3)",
        campaign_id,
    )
    repo = ScheduleRepository(pool)
    await repo.drop_schedule(campaign_id, revision=2)
    assert (
        await pool.fetchval("SELECT revision FROM schedules WHERE campaign_id = $1", campaign_id)
        == 3
    )
    await repo.drop_schedule(campaign_id, revision=4)
    assert (
        await pool.fetchval("SELECT count(*) FROM schedules WHERE campaign_id = $1", campaign_id)
        == 0
    )


async def test_a_pause_asked_for_by_a_provider_is_applied_with_its_reason(
    pool: asyncpg.Pool, settings: Settings, running_scheduler: ServiceContext
) -> None:
    campaign_id = await seed_campaign(pool, recipients=5, status="in_progress")
    ask = CampaignControl(
        campaign_id=campaign_id, action="pause", origin="provider", reason="401: bad key"
    )
    await running_scheduler.producer.send(Topic.CAMPAIGN_CONTROL, str(campaign_id), ask)
    statuses = await first_events(
        settings.kafka_bootstrap_servers,
        Topic.CAMPAIGN_STATUS,
        CampaignStatus,
        lambda e: e.campaign_id == campaign_id,
    )
    assert [(s.status, s.reason) for s in statuses] == [("paused", "401: bad key")]
    # The event is published before the pause commits: the row lock waits for the commit
    # (reading at once failed now and then).
    row = await pool.fetchrow(
        "SELECT status, pause_reason, paused_by FROM campaigns WHERE id = $1 FOR UPDATE",
        campaign_id,
    )
    assert dict(row) == {
        "status": "paused",
        "pause_reason": "401: bad key",
        "paused_by": "provider",
    }


async def test_addresses_suppressed_after_planning_are_marked_at_emit(pool: asyncpg.Pool) -> None:
    """Issue 11 item 5: an unsubscribe during a long campaign reaches every later batch."""
    campaign_id = await seed_campaign(pool, recipients=12)
    repo = ScheduleRepository(pool)
    plan = await repo.claim_and_plan(campaign_id, 5)
    assert plan is not None and plan.suppressed_total == 0
    late = await pool.fetch(
        "SELECT r.id, r.email FROM recipients r JOIN campaigns c ON c.list_id = r.list_id"
        " WHERE c.id = $1 ORDER BY r.id LIMIT 3 OFFSET 4",
        campaign_id,
    )
    await pool.executemany(
        "INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')",
        [(r["email"],) for r in late],
    )
    # A limit above the other tests' leftovers in the shared database: with 10, batches of
    # earlier campaigns (ordered by random uuid) could fill the window (a flaky failure).
    async with repo.batches_to_emit(datetime.now(UTC), 10_000) as batches:
        marked = {
            b.batch_no: b.suppressed_ids for b in batches.batches if b.campaign_id == campaign_id
        }
    assert marked == {0: [late[0]["id"]], 1: [late[1]["id"], late[2]["id"]], 2: []}


async def test_only_active_recipients_are_planned(pool: asyncpg.Pool) -> None:
    """Unconfirmed (double opt-in) and unsubscribed (left the list) recipients are neither
    counted in the audience nor planned (issue 15 item 3)."""
    campaign_id = await seed_campaign(pool, recipients=6)
    ids = await pool.fetch(
        "SELECT r.id FROM recipients r JOIN campaigns c ON c.list_id = r.list_id"
        " WHERE c.id = $1 ORDER BY r.id",
        campaign_id,
    )
    await pool.execute(
        "UPDATE recipients SET status = CASE WHEN id = $1 THEN 'unsubscribed' ELSE 'unconfirmed'"
        " END WHERE id = ANY($2::bigint[])",
        ids[0]["id"],
        [ids[0]["id"], ids[1]["id"], ids[2]["id"]],
    )
    plan = await ScheduleRepository(pool).claim_and_plan(campaign_id, 5)
    assert plan is not None and plan.audience_total == 3
    planned = await pool.fetchval(
        "SELECT array_agg(rid ORDER BY rid) FROM batch_plans, unnest(recipient_ids) AS rid"
        " WHERE campaign_id = $1",
        campaign_id,
    )
    assert planned == [r["id"] for r in ids[3:]]


async def test_who_left_the_list_after_planning_is_marked_at_emit(pool: asyncpg.Pool) -> None:
    """Leaving a list in the preference centre during a long campaign reaches every batch
    emitted after it, as an unsubscribe does (reported `suppressed`, never mailed)."""
    campaign_id = await seed_campaign(pool, recipients=7)
    repo = ScheduleRepository(pool)
    plan = await repo.claim_and_plan(campaign_id, 5)
    assert plan is not None
    left = await pool.fetchval(
        "UPDATE recipients SET status = 'unsubscribed' WHERE id = (SELECT r.id FROM recipients r"
        " JOIN campaigns c ON c.list_id = r.list_id WHERE c.id = $1 ORDER BY r.id OFFSET 5"
        " LIMIT 1) RETURNING id",
        campaign_id,
    )
    async with repo.batches_to_emit(datetime.now(UTC), 10_000) as batches:
        marked = {
            b.batch_no: b.suppressed_ids for b in batches.batches if b.campaign_id == campaign_id
        }
    assert marked == {0: [], 1: [left]}
