"""delivery.result → Postgres, through the real broker: exact counts, exactly once, outcomes."""

from __future__ import annotations

import uuid

import asyncpg
from prometheus_client import REGISTRY

from libs.common.events import RecipientStatus, Topic
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


def mixed(rid: int) -> RecipientStatus:
    if rid % 10 == 0:
        return "failed"
    if rid % 25 == 1:
        return "invalid"
    return "sent"


async def status_of(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> str:
    status: str = await pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
    return status


async def sentinel_after(
    producer: EventProducer, pool: asyncpg.Pool, campaign_id: uuid.UUID
) -> None:
    """Publish a one-batch result of another campaign on `campaign_id`'s partition and wait
    for its fold: everything published before it on that partition has been handled."""
    sentinel = uuid.uuid4()
    result = make_results(sentinel, 1, 1)[0]
    await producer.send_many(Topic.DELIVERY_RESULT, [(str(campaign_id), result)])

    async def folded() -> bool:
        return await stats_of(pool, sentinel) is not None

    await wait_for(folded, what="the sentinel batch")


async def test_results_are_folded_exactly_once_and_the_campaign_completes(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    campaign_id = await new_campaign(pool)
    results = make_results(campaign_id, batches=5, per_batch=100, status_of=mixed, suppressed=7)
    # The second batch arrives twice before the tracker even starts.
    await publish_results(producer, results + [results[1]])

    async with running_tracker(tracker_settings, pool, producer):

        async def published() -> bool:
            stats = await stats_of(pool, campaign_id)
            return stats is not None and stats["outcome_published_at"] is not None

        await wait_for(published, what="the campaign to complete")
        assert await status_of(pool, campaign_id) == "completed"
        stats = await stats_of(pool, campaign_id)
        assert stats is not None
        expected = {"sent": 0, "failed": 0, "invalid": 0}
        for rid in range(1, 501):
            expected[mixed(rid)] += 1
        assert (stats["sent"], stats["failed"], stats["invalid"]) == (
            expected["sent"],
            expected["failed"],
            expected["invalid"],
        )
        assert stats["audience_total"] == 507
        assert stats["suppressed"] == 7
        assert (stats["batches_done"], stats["batches_total"]) == (5, 5)
        assert stats["outcome"] == "completed"
        assert counters(stats) == {**counters(stats), **await recount(pool, campaign_id)}
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE campaign_id = $1", campaign_id
            )
            == 500
        )
        campaign = await pool.fetchrow("SELECT * FROM campaigns WHERE id = $1", campaign_id)
        assert campaign["finished_at"] is not None

        # Redelivery of one batch and a replay of all of them change nothing.
        replay = [r.model_copy(update={"replayed": True}) for r in results]
        await publish_results(producer, [results[3], *replay])
        await sentinel_after(producer, pool, campaign_id)
        assert await stats_of(pool, campaign_id) == stats

    events = await campaign_status_events(tracker_settings, campaign_id)
    assert len(events) == 1
    assert events[0].status == "completed"
    assert events[0].counts == {
        "total": 507,
        "sent": expected["sent"],
        "failed": expected["failed"],
        "suppressed": 7,
        "invalid": expected["invalid"],
        "unknown": 0,
        "cancelled": 0,
    }


async def test_a_campaign_whose_failures_pass_the_threshold_fails(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    campaign_id = await new_campaign(pool)

    def mostly_failed(rid: int) -> RecipientStatus:
        return "failed" if rid % 4 else "sent"  # 75 % failed, threshold 20 %

    await publish_results(producer, make_results(campaign_id, 3, 40, mostly_failed))
    async with running_tracker(tracker_settings, pool, producer):

        async def failed() -> bool:
            return await status_of(pool, campaign_id) == "failed"

        await wait_for(failed, what="the campaign to fail")
    stats = await stats_of(pool, campaign_id)
    assert stats is not None and (stats["failed"], stats["sent"]) == (90, 30)
    events = await campaign_status_events(tracker_settings, campaign_id)
    assert [e.status for e in events] == ["failed"]
    assert events[0].counts["failed"] == 90


async def test_a_cancelled_campaign_keeps_its_status(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    campaign_id = await new_campaign(pool, status="cancelled")
    results = make_results(campaign_id, 2, 10, lambda rid: "cancelled" if rid > 5 else "sent")
    await publish_results(producer, results)
    async with running_tracker(tracker_settings, pool, producer):

        async def accounted() -> bool:
            stats = await stats_of(pool, campaign_id)
            return stats is not None and stats["batches_done"] == 2

        await wait_for(accounted, what="both batches")
    stats = await stats_of(pool, campaign_id)
    assert stats is not None and (stats["sent"], stats["cancelled"]) == (5, 15)
    assert stats["outcome"] is None
    assert await status_of(pool, campaign_id) == "cancelled"


async def test_a_recipient_reported_by_two_batches_counts_once(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    campaign_id = await new_campaign(pool)
    first, second = make_results(campaign_id, 2, 10)
    # Bad data from upstream: batch 1 repeats recipient 1 of batch 0 instead of its 11th.
    outcomes = [first.outcomes[0], *second.outcomes[1:]]
    second = second.model_copy(update={"outcomes": outcomes})
    before = REGISTRY.get_sample_value("mailfleet_tracker_conflicting_recipients_total") or 0
    await publish_results(producer, [first, second])
    async with running_tracker(tracker_settings, pool, producer):

        async def finished() -> bool:
            return await status_of(pool, campaign_id) == "completed"

        await wait_for(finished, what="the campaign to complete")
    stats = await stats_of(pool, campaign_id)
    assert stats is not None and stats["sent"] == 19
    assert counters(stats) == {**counters(stats), **await recount(pool, campaign_id)}
    after = REGISTRY.get_sample_value("mailfleet_tracker_conflicting_recipients_total") or 0
    assert after - before == 1


async def test_data_the_database_refuses_is_dead_lettered_and_the_rest_folds(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    good_campaign = await new_campaign(pool)
    bad_campaign = await new_campaign(pool)
    good = make_results(good_campaign, 1, 5)[0]
    bad = make_results(bad_campaign, 1, 5)[0]
    broken = bad.outcomes[0].model_copy(update={"recipient_id": 2**70})  # beyond bigint
    bad = bad.model_copy(update={"outcomes": [broken, *bad.outcomes[1:]]})
    # Same key: both in one partition, so in one fold.
    await producer.send_many(
        Topic.DELIVERY_RESULT, [(str(good_campaign), bad), (str(good_campaign), good)]
    )
    before = (
        REGISTRY.get_sample_value(
            "mailfleet_tracker_rejected_events_total", {"topic": "delivery.result"}
        )
        or 0
    )
    async with running_tracker(tracker_settings, pool, producer):

        async def finished() -> bool:
            return await status_of(pool, good_campaign) == "completed"

        await wait_for(finished, what="the good campaign to complete")
    assert await stats_of(pool, bad_campaign) is None
    after = REGISTRY.get_sample_value(
        "mailfleet_tracker_rejected_events_total", {"topic": "delivery.result"}
    )
    assert after is not None and after - before >= 1


async def test_a_final_status_committed_but_not_published_is_published_at_start(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    # As a tracker SIGKILLed between its fold's commit and its publish leaves it.
    campaign_id = await new_campaign(pool, status="completed")
    await pool.execute(
        """
        INSERT INTO campaign_stats (campaign_id, audience_total, batches_total, batches_done,
                                    sent, outcome, finished_at)
        VALUES ($1, 3, 1, 1, 3, 'completed', now() - interval '1 minute')
        """,
        campaign_id,
    )
    async with running_tracker(tracker_settings, pool, producer):

        async def published() -> bool:
            stats = await stats_of(pool, campaign_id)
            return stats is not None and stats["outcome_published_at"] is not None

        await wait_for(published, what="the outbox")
    events = await campaign_status_events(tracker_settings, campaign_id)
    assert [(e.status, e.counts["sent"]) for e in events] == [("completed", 3)]


async def test_recipients_suppressed_after_planning_are_counted_once_with_the_plans(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    """Issue 11 item 5: the plan's suppressed count plus each late `suppressed` outcome."""
    campaign_id = await new_campaign(pool)

    def late(rid: int) -> RecipientStatus:
        return "suppressed" if rid % 20 == 0 else "sent"

    results = make_results(campaign_id, batches=3, per_batch=100, status_of=late, suppressed=4)
    await publish_results(producer, results + [results[0], results[2]])  # redeliveries
    async with running_tracker(tracker_settings, pool, producer):

        async def published() -> bool:
            stats = await stats_of(pool, campaign_id)
            return stats is not None and stats["outcome_published_at"] is not None

        await wait_for(published, what="the campaign to complete")
    stats = await stats_of(pool, campaign_id)
    assert stats is not None
    assert (stats["sent"], stats["suppressed"], stats["audience_total"]) == (285, 4 + 15, 304)
    parts = ("sent", "failed", "invalid", "unknown", "cancelled", "suppressed")
    assert sum(stats[p] for p in parts) == stats["audience_total"]
