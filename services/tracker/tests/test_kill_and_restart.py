"""A tracker SIGKILLed mid-campaign, restarted, and other instances reading along: the
counters always equal a recount of the delivery log, and the campaign finishes once."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg

from libs.common.events import RecipientStatus
from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from services.tracker.tests.support import (
    campaign_status_events,
    counters,
    make_results,
    new_campaign,
    publish_results,
    recount,
    running_tracker,
    stats_of,
    wait_for,
)

# The tracker as `mailfleet run tracker` starts it, in a consumer group of the test's own.
TRACKER_PROCESS = """
import asyncio, functools, sys
from libs.common.service import run_service
from libs.common.settings import get_settings
from services.tracker.app import main
asyncio.run(run_service("tracker", functools.partial(main, group_id=sys.argv[1]), get_settings()))
"""


def some_failed(rid: int) -> RecipientStatus:
    return "failed" if rid % 7 == 0 else "sent"


async def published(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> bool:
    stats = await stats_of(pool, campaign_id)
    return stats is not None and stats["outcome_published_at"] is not None


async def test_a_tracker_killed_mid_campaign_and_restarted_never_double_counts(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    campaign_id = await new_campaign(pool)
    results = make_results(campaign_id, batches=400, per_batch=10, status_of=some_failed)
    group = f"tracker-kill-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": tracker_settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": tracker_settings.kafka_bootstrap_servers,
        "MAILFLEET_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "MAILFLEET_KAFKA_HEARTBEAT_MS": "500",
        "MAILFLEET_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TRACKER_PROCESS, group, env=env
    )
    try:
        await publish_results(producer, results[:300])

        async def folding() -> bool:
            stats = await stats_of(pool, campaign_id)
            return stats is not None and stats["batches_done"] > 0

        await wait_for(folding, timeout=60, what="the tracker process to fold")
    finally:
        process.kill()  # SIGKILL: no clean shutdown, offsets possibly behind the database
        await process.wait()
    at_kill = await stats_of(pool, campaign_id)
    assert at_kill is not None and at_kill["batches_done"] <= 300 and at_kill["outcome"] is None
    assert counters(at_kill) == {**counters(at_kill), **await recount(pool, campaign_id)}

    await publish_results(producer, results[300:])
    async with running_tracker(tracker_settings, pool, producer, group_id=group):
        await wait_for(lambda: published(pool, campaign_id), timeout=60, what="completion")

    stats = await stats_of(pool, campaign_id)
    assert stats is not None
    failed = sum(1 for rid in range(1, 4001) if some_failed(rid) == "failed")
    assert (stats["sent"], stats["failed"], stats["batches_done"]) == (4000 - failed, failed, 400)
    assert counters(stats) == {**counters(stats), **await recount(pool, campaign_id)}
    assert (
        await pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
        == "completed"
    )


async def test_two_instances_and_a_replaying_group_never_double_count(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    campaigns = [await new_campaign(pool) for _ in range(3)]
    plans = [make_results(c, batches=60, per_batch=10, status_of=some_failed) for c in campaigns]
    group = f"tracker-pair-{uuid.uuid4().hex[:8]}"
    async with (
        running_tracker(tracker_settings, pool, producer, group_id=group),
        running_tracker(tracker_settings, pool, producer, group_id=group),
        running_tracker(tracker_settings, pool, producer),  # a replay from the beginning
    ):
        for plan in plans:
            await publish_results(producer, plan)
        for campaign_id in campaigns:
            await wait_for(lambda c=campaign_id: published(pool, c), timeout=60, what="completion")

    failed = sum(1 for rid in range(1, 601) if some_failed(rid) == "failed")
    for campaign_id in campaigns:
        stats = await stats_of(pool, campaign_id)
        assert stats is not None
        assert (stats["sent"], stats["failed"], stats["batches_done"]) == (600 - failed, failed, 60)
        assert counters(stats) == {**counters(stats), **await recount(pool, campaign_id)}
    statuses = await campaign_status_events(tracker_settings, campaigns[-1])
    assert [e.status for e in statuses] == ["completed"]
