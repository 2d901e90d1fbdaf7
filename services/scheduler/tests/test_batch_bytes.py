"""Issue 11, item 8: `batch.ready` events are sized by bytes, under the topic's
max.message.bytes, and a batch that still cannot be published is set aside with its reason
while every other campaign goes on. Real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from libs.common.events import BatchReady, DeliveryResult, Topic, encode
from libs.common.kafka import EventProducer
from libs.common.sendtime import earliest_instant
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.scheduler.app import BatchEmitter
from services.scheduler.repository import ScheduleRepository
from services.scheduler.tests.test_scheduler import collect_batches

MIB = 1024 * 1024


async def seed(
    pool: asyncpg.Pool, fields: list[dict[str, Any]], *, local_at: datetime | None = None
) -> uuid.UUID:
    """A campaign due now, whose list has one recipient per `fields`; with `local_at`, a
    local-time campaign for that wall time in each recipient's zone (due when the first
    zone reaches it)."""
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('bytes') RETURNING id")
    tag = uuid.uuid4().hex[:8]
    await pool.copy_records_to_table(
        "recipients",
        records=[(list_id, f"r{i}-{tag}@bytes.example.com", f) for i, f in enumerate(fields)],
        columns=["list_id", "email", "fields"],
    )
    return await pool.fetchval(
        """
        INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status, send_at,
                               local_time, local_send_at)
        VALUES ('b', 'Hi', '<p>{{ bio }}</p>', 'f@example.com', $1, 'sink', 'scheduled', $2,
                $3, $4)
        RETURNING id
        """,
        list_id,
        earliest_instant(local_at) if local_at else datetime.now(UTC) - timedelta(seconds=1),
        local_at is not None,
        local_at,
    )


def four_kb_of_fields(i: int) -> dict[str, Any]:
    return {"first_name": f"N{i}", "bio": "x" * 2048, "notes": "é" * 1024}  # 4 KB in UTF-8


async def emit_all(settings: Settings, pool: asyncpg.Pool) -> None:
    producer = EventProducer(settings)
    await producer.start()
    try:
        ctx = ServiceContext("scheduler", settings, pool, producer, asyncio.Event())
        await BatchEmitter(ctx, ScheduleRepository(pool)).emit_due(datetime.now(UTC))
    finally:
        await producer.stop()


async def test_500_recipients_with_4_kb_of_merge_fields_travel_in_batches_under_the_limit(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    campaign_id = await seed(pool, [four_kb_of_fields(i) for i in range(500)])
    plan = await ScheduleRepository(pool).claim_and_plan(campaign_id, 500, MIB)
    assert plan is not None
    await emit_all(settings, pool)
    batches = await collect_batches(
        settings.kafka_bootstrap_servers, campaign_id, expected=plan.batches_total
    )
    assert plan.batches_total >= 2  # 500 x 4 KB is 2 MB: one batch cannot hold it
    assert all(len(encode(b)) < MIB for b in batches)
    assert {b.batches_total for b in batches} == {plan.batches_total}
    ids = [r.recipient_id for b in batches for r in b.recipients]
    assert len(ids) == len(set(ids)) == 500
    assert all(len(r.fields["bio"]) == 2048 for b in batches for r in b.recipients)


async def collect_results(bootstrap: str, campaign_id: uuid.UUID) -> DeliveryResult:
    consumer = AIOKafkaConsumer(
        Topic.DELIVERY_RESULT.value,
        bootstrap_servers=bootstrap,
        group_id=None,  # no group: nothing to join (Tansu holds a join for seconds)
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        result = DeliveryResult.model_validate_json(r.value)
                        if result.campaign_id == campaign_id:
                            return result
    finally:
        await consumer.stop()


async def test_a_batch_too_large_to_publish_is_set_aside_and_other_campaigns_go_on(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    # One recipient whose merge fields alone are over the topic's limit.
    huge = await seed(pool, [{"bio": "y" * (MIB + 1024)}])
    small = await seed(pool, [{"first_name": f"S{i}"} for i in range(30)])
    repo = ScheduleRepository(pool)
    assert await repo.claim_and_plan(huge, 500, MIB) is not None
    assert await repo.claim_and_plan(small, 10, MIB) is not None
    await emit_all(settings, pool)

    batches = await collect_batches(settings.kafka_bootstrap_servers, small, expected=3)
    assert sorted(len(b.recipients) for b in batches) == [10, 10, 10]
    reason = await pool.fetchval(
        "SELECT set_aside_reason FROM batch_plans WHERE campaign_id = $1", huge
    )
    assert reason is not None and "max.message.bytes" in reason
    result = await collect_results(settings.kafka_bootstrap_servers, huge)
    [outcome] = result.outcomes
    assert outcome.status == "failed" and outcome.error == reason
    assert await collect_batches_quietly(settings, huge) == []


async def collect_batches_quietly(settings: Settings, campaign_id: uuid.UUID) -> list[BatchReady]:
    """The campaign's batch.ready events, if any (none expected: a short wait suffices)."""
    try:
        return await collect_batches(
            settings.kafka_bootstrap_servers, campaign_id, expected=1, timeout=3
        )
    except TimeoutError:
        return []
