"""Issue 11, item 10: a batch travels again only on evidence that it is lost. Real
PostgreSQL and the real broker; time is moved by rewriting the recorded times."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.scheduler.app import BatchEmitter
from services.scheduler.repository import ReemitPolicy, ScheduleRepository


async def seed(pool: asyncpg.Pool, provider: str, recipients: int) -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('reemit') RETURNING id")
    tag = uuid.uuid4().hex[:8]
    await pool.copy_records_to_table(
        "recipients",
        records=[(list_id, f"r{i}-{tag}@reemit.example.com", {}) for i in range(recipients)],
        columns=["list_id", "email", "fields"],
    )
    return await pool.fetchval(
        """
        INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status, send_at)
        VALUES ('r', 'Hi', '<p>x</p>', 'f@example.com', $1, $2, 'scheduled', now())
        RETURNING id
        """,
        list_id,
        provider,
    )


@asynccontextmanager
async def planned_emitter(
    pool: asyncpg.Pool, settings: Settings, campaign_id: uuid.UUID, policy: ReemitPolicy
) -> AsyncIterator[BatchEmitter]:
    """The campaign planned in batches of 10, and an emitter with `policy` over a producer."""
    repo = ScheduleRepository(pool)
    assert await repo.claim_and_plan(campaign_id, 10) is not None
    producer = EventProducer(settings)
    await producer.start()
    try:
        ctx = ServiceContext("scheduler", settings, pool, producer, asyncio.Event())
        yield BatchEmitter(ctx, repo, policy)
    finally:
        await producer.stop()


async def emitted(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> dict[int, int]:
    rows = await pool.fetch(
        "SELECT batch_no, emitted FROM batch_plans WHERE campaign_id = $1", campaign_id
    )
    return {r["batch_no"]: r["emitted"] for r in rows}


async def test_a_batch_travels_again_only_when_nothing_shows_progress(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    # A provider of this test's own, so that other tests' campaigns are no backlog here.
    provider = f"limited-{uuid.uuid4().hex[:6]}"
    campaign_id = await seed(pool, provider, recipients=30)
    policy = ReemitPolicy(base_s=5.0, rates={provider: 2.0})
    async with planned_emitter(pool, settings, campaign_id, policy) as emitter:
        await emitter.emit_due()
        # The rate limit's backlog: the 30 recipients queued at 2/s, twice (any batch may be
        # the last to go, and a dispatcher may hold more than its share).
        waits = await pool.fetch(
            """SELECT batch_no, extract(epoch FROM expected_by - last_emitted_at) AS s
                 FROM batch_plans WHERE campaign_id = $1 ORDER BY batch_no""",
            campaign_id,
        )
        assert [round(float(w["s"])) for w in waits] == [30, 30, 30]

        # Long after the old fixed backoff, but within the backlog's time: not re-emitted.
        await pool.execute(
            "UPDATE batch_plans SET last_emitted_at = now() - interval '25 s',"
            " expected_by = now() - interval '25 s' + (expected_by - last_emitted_at)"
            " WHERE campaign_id = $1",
            campaign_id,
        )
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1}

        # Batches 0 and 1 come back; 2 is past its backlog and backoff, but the campaign
        # made progress a moment ago: it is likely still queued. Not re-emitted.
        await pool.execute(
            """INSERT INTO tracker_batches (batch_id, campaign_id, recipients)
               SELECT batch_id, campaign_id, 10 FROM batch_plans
                WHERE campaign_id = $1 AND batch_no < 2""",
            campaign_id,
        )
        await pool.execute(
            "UPDATE batch_plans SET expected_by = now() - interval '6 s' WHERE campaign_id = $1",
            campaign_id,
        )
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1}

        # A dispatcher is working on it: its ledger row is fresh. Not re-emitted.
        await pool.execute(
            "UPDATE tracker_batches SET folded_at = now() - interval '1 min' WHERE campaign_id = $1",
            campaign_id,
        )
        await pool.execute(
            "INSERT INTO send_ledger (batch_id, campaign_id, state, owner)"
            " VALUES ($1, $2, 'sending', 'someone')",
            f"{campaign_id}:2",
            campaign_id,
        )
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1}

        # No sign of life for longer than the backoff: it travels again, once; the next
        # backoff is twice as long.
        await pool.execute(
            "UPDATE send_ledger SET started_at = now() - interval '1 min' WHERE campaign_id = $1",
            campaign_id,
        )
        await emitter.emit_due()
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 2}
        await pool.execute(
            "UPDATE batch_plans SET expected_by = now() - interval '6 s' WHERE campaign_id = $1",
            campaign_id,
        )
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 2}


async def test_a_result_lost_while_its_campaign_goes_on_is_replayed_without_waiting(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """Seen at 10M recipients: three results in the broker that the tracker never folded
    held the campaign open for the whole 300 s backoff, which only starts once the campaign
    goes quiet. A batch whose ledger says `done` while later results of its campaign were
    folded was lost in transport: it travels again at once (the dispatcher replays it)."""
    provider = f"unlimited-{uuid.uuid4().hex[:6]}"
    campaign_id = await seed(pool, provider, recipients=30)
    policy = ReemitPolicy(base_s=300.0, rates={provider: 0.0}, overtaken_s=30.0)
    async with planned_emitter(pool, settings, campaign_id, policy) as emitter:
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1}
        await pool.execute(
            "UPDATE batch_plans SET last_emitted_at = now() - interval '70 s',"
            " expected_by = now() - interval '70 s' WHERE campaign_id = $1",
            campaign_id,
        )
        # Batch 1 was sent and its result stored a minute ago; batch 0, which finished
        # before it, was folded just now: the campaign is alive, batch 1 maybe in transit.
        await pool.execute(
            "INSERT INTO send_ledger (batch_id, campaign_id, state, owner, result, started_at,"
            " finished_at) VALUES ($1, $2, 'done', 'd', '{\"outcomes\": []}',"
            " now() - interval '61 s', now() - interval '60 s')",
            f"{campaign_id}:1",
            campaign_id,
        )
        fold = (
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, finished_at)"
            " VALUES ($1, $2, 10, now() - make_interval(secs => $3))"
        )
        await pool.execute(fold, f"{campaign_id}:0", campaign_id, 65.0)
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1}

        # Batch 2, which finished 50 s after batch 1, is folded: batch 1's result was lost.
        await pool.execute(fold, f"{campaign_id}:2", campaign_id, 10.0)
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 2, 2: 1}
        # The accounted batches are marked by the tick, so later ticks read only batch 1.
        marked = await pool.fetch(
            "SELECT batch_no, accounted_at IS NOT NULL AS accounted FROM batch_plans"
            " WHERE campaign_id = $1 ORDER BY batch_no",
            campaign_id,
        )
        assert [(r["batch_no"], r["accounted"]) for r in marked] == [
            (0, True),
            (1, False),
            (2, True),
        ]
        # Once per 30 s, not on every tick.
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 2, 2: 1}
