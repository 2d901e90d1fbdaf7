"""Counters per A/B variant (issue 17 item 1), through the broker into the real tracker:
each batch's variant is kept in the delivery log, its outcomes and its recipients' unique
opens and clicks are counted per variant exactly once (replays, early hits, and the
remainder that has no variant counting nothing there), and they equal a recount."""

from __future__ import annotations

import uuid

import asyncpg

from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from services.tracker.tests.support import (
    make_results,
    new_campaign,
    publish_results,
    running_tracker,
)
from services.tracker.tests.test_own_tracking import hit, publish_and_settle, sent_all

VARIANT_OF_BATCH = {0: "A", 1: "B", 2: None}  # batch 2: the remainder, sent the winner


async def variant_stats(pool: asyncpg.Pool, cid: uuid.UUID) -> dict[str, tuple[int, ...]]:
    rows = await pool.fetch(
        "SELECT variant, recipients, sent, failed, unique_opens, opens, unique_clicks"
        " FROM campaign_variant_stats WHERE campaign_id = $1",
        cid,
    )
    return {r["variant"]: tuple(r)[1:] for r in rows}


async def recount_by_variant(pool: asyncpg.Pool, cid: uuid.UUID) -> dict[str, tuple[int, ...]]:
    rows = await pool.fetch(
        """
        SELECT variant, count(*) AS recipients,
               count(*) FILTER (WHERE status = 'sent') AS sent,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(opened_at) AS unique_opens, sum(open_count) AS opens,
               count(clicked_at) AS unique_clicks
          FROM deliveries WHERE campaign_id = $1 AND variant IS NOT NULL GROUP BY variant
        """,
        cid,
    )
    return {r["variant"]: tuple(int(v) for v in tuple(r)[1:]) for r in rows}


async def test_counters_per_variant_exactly_once(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    cid = await new_campaign(pool)
    p = uuid.uuid4().hex[:8]
    results = [
        r.model_copy(update={"variant": VARIANT_OF_BATCH[r.batch_no]})
        for r in make_results(cid, 3, 10, status_of=lambda rid: "failed" if rid == 1 else "sent")
    ]
    early = [hit(f"{p}-e1", "open", cid, 12)]  # B's, before its result is folded
    hits = [
        hit(f"{p}-a1", "open", cid, 2),
        hit(f"{p}-a2", "open", cid, 2, minute=3),  # twice: one unique open
        hit(f"{p}-a3", "click", cid, 3),
        hit(f"{p}-b1", "open", cid, 11),
        hit(f"{p}-b2", "open", cid, 13),
        hit(f"{p}-b3", "open", cid, 14, machine="apple_mpp"),  # a machine: not unique
        hit(f"{p}-r1", "open", cid, 25),  # the remainder's: in no variant
    ]
    async with running_tracker(tracker_settings, pool, producer):
        await publish_and_settle(producer, pool, cid, early)
        await publish_results(producer, results)
        await sent_all(pool, cid, 29)
        await publish_and_settle(producer, pool, cid, hits)
        expected = {
            # recipients, sent, failed, unique opens, opens, unique clicks
            "A": (10, 9, 1, 1, 2, 1),
            "B": (10, 10, 0, 3, 4, 0),
        }
        assert await variant_stats(pool, cid) == expected
        assert await recount_by_variant(pool, cid) == expected
        variants = await pool.fetch(
            "SELECT variant, count(*) AS n FROM deliveries WHERE campaign_id = $1"
            " GROUP BY variant ORDER BY variant NULLS LAST",
            cid,
        )
        assert [(r["variant"], r["n"]) for r in variants] == [("A", 10), ("B", 10), (None, 10)]
        # Every result and every hit again: nothing counts twice. A new batch of A's after
        # the replayed ones (same partition) tells when they have been read.
        late = make_results(cid, 1, 1, first_recipient=31)[0].model_copy(
            update={"batch_id": f"{cid}:3", "batch_no": 3, "variant": "A"}
        )
        await publish_results(producer, [*results, late])
        await sent_all(pool, cid, 30)
        await publish_and_settle(producer, pool, cid, early + hits)
        assert await variant_stats(pool, cid) == {**expected, "A": (11, 10, 1, 1, 2, 1)}
