"""Our own opens and clicks (provider `mailfleet`, from the edge) folded exactly once:
totals and uniques, machine hits in the totals and out of the uniques, replays counted
once, and hits that arrive before their delivery's result folded when it comes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from libs.common.events import DeliveryEvent, Topic
from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from libs.stats.report import campaign_report
from services.tracker.tests.support import (
    counters,
    make_results,
    new_campaign,
    publish_results,
    recount,
    running_tracker,
    stats_of,
    wait_for,
)

T0 = datetime(2030, 1, 1, 2, tzinfo=UTC)


def hit(
    event_id: str,
    kind: Literal["open", "click"],
    campaign_id: uuid.UUID,
    rid: int,
    *,
    machine: str | None = None,
    minute: int = 0,
) -> DeliveryEvent:
    detail: dict[str, Any] = {"machine": machine is not None, "sent_at": 0}
    if machine:
        detail["machine_reason"] = machine
    if kind == "click":
        detail |= {"link": 0, "url": "https://shop.example.org/"}
    return DeliveryEvent(
        event_id=event_id,
        campaign_id=campaign_id,
        recipient_id=rid,
        email="",  # as the edge sends them: it knows no address
        event=kind,
        provider="mailfleet",
        occurred_at=T0 + timedelta(minutes=minute),
        detail=detail,
    )


async def publish_and_settle(
    producer: EventProducer, pool: asyncpg.Pool, campaign: uuid.UUID, events: list[DeliveryEvent]
) -> None:
    """Publish on the campaign's partition, then a sentinel; return once it is stored."""
    sentinel = hit(f"sentinel-{uuid.uuid4()}", "open", campaign, 10**9)
    await producer.send_many(
        Topic.DELIVERY_EVENT, [(str(campaign), e) for e in [*events, sentinel]]
    )

    async def stored() -> bool:
        sql = "SELECT 1 FROM delivery_events WHERE event_id = $1"
        return bool(await pool.fetchval(sql, sentinel.event_id))

    await wait_for(stored, what="the sentinel hit")


async def machine_recount(pool: asyncpg.Pool, campaign: uuid.UUID) -> dict[str, int]:
    row = await pool.fetchrow(
        """
        SELECT count(*) FILTER (WHERE event = 'open') AS machine_opens,
               count(*) FILTER (WHERE event = 'click') AS machine_clicks
          FROM delivery_events
         WHERE campaign_id = $1 AND matched AND (detail->>'machine')::boolean
        """,
        campaign,
    )
    assert row is not None
    return {k: int(v) for k, v in dict(row).items()}


async def sent_all(pool: asyncpg.Pool, campaign: uuid.UUID, n: int) -> None:
    async def done() -> bool:
        stats = await stats_of(pool, campaign)
        return stats is not None and stats["sent"] == n

    await wait_for(done, what="the results")


async def test_hits_fold_once_with_uniques_and_machine_flags(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    cid = await new_campaign(pool)
    p = uuid.uuid4().hex[:8]
    events = [
        hit(f"{p}-o1", "open", cid, 1, minute=5),
        hit(f"{p}-o2", "open", cid, 1, minute=9),
        hit(f"{p}-o1", "open", cid, 1, minute=5),  # the same record twice
        hit(f"{p}-o3", "open", cid, 2, machine="apple_mpp", minute=1),  # only the proxy
        hit(f"{p}-o4", "open", cid, 3, machine="apple_mpp", minute=1),
        hit(f"{p}-o5", "open", cid, 3, minute=30),  # then the reader
        hit(f"{p}-c1", "click", cid, 1, machine="scanner", minute=0),
        hit(f"{p}-c2", "click", cid, 1, minute=12),
        hit(f"{p}-c3", "click", cid, 2, machine="scanner", minute=0),
    ]
    async with running_tracker(tracker_settings, pool, producer):
        await publish_results(producer, make_results(cid, 1, 4))
        await sent_all(pool, cid, 4)
        await publish_and_settle(producer, pool, cid, events)
        stats = await stats_of(pool, cid)
        assert stats is not None
        expected = {
            "opens": 5,
            "unique_opens": 2,  # recipients 1 and 3; 2 was only ever Apple's proxy
            "machine_opens": 2,
            "clicks": 3,
            "unique_clicks": 1,  # recipient 1; 2 only had a scanner
            "machine_clicks": 2,
        }
        assert {k: stats[k] for k in expected} == expected
        assert counters(stats) == {**counters(stats), **await recount(pool, cid)}
        assert await machine_recount(pool, cid) == {"machine_opens": 2, "machine_clicks": 2}
        r3 = await pool.fetchrow(
            "SELECT opened_at, open_count FROM deliveries WHERE campaign_id = $1"
            " AND recipient_id = 3",
            cid,
        )
        # The first open that counts is the reader's, not the proxy's earlier fetch.
        assert (r3["opened_at"], r3["open_count"]) == (T0 + timedelta(minutes=30), 2)
        # Each hit is kept with the address that was mailed.
        stored = await pool.fetchval(
            "SELECT email FROM delivery_events WHERE event_id = $1", f"{p}-o3"
        )
        assert stored == "r2@example.com"
        report = campaign_report(stats)
        assert report["unique_open_rate"] == 0.5 and report["machine_opens"] == 2

        # A replay of every record (a consumer that read them again) changes nothing.
        await publish_and_settle(producer, pool, cid, events)
        again = await stats_of(pool, cid)
        assert again is not None
        assert {k: again[k] for k in expected} == expected


async def test_hits_before_their_delivery_fold_when_the_result_comes(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    """A reader can open within a second of the send, before the batch's result (sent at
    its end, read by another consumer) is folded: the hit waits unmatched, then counts."""
    cid = await new_campaign(pool)
    p = uuid.uuid4().hex[:8]
    early = [
        hit(f"{p}-o1", "open", cid, 1),
        hit(f"{p}-o2", "open", cid, 2, machine="apple_mpp"),
        hit(f"{p}-c1", "click", cid, 1, minute=1),
    ]
    async with running_tracker(tracker_settings, pool, producer):
        await publish_and_settle(producer, pool, cid, early)
        unmatched = await pool.fetchval(
            "SELECT count(*) FROM delivery_events WHERE campaign_id = $1 AND NOT matched"
            " AND recipient_id < 100",
            cid,
        )
        assert unmatched == 3
        await publish_results(producer, make_results(cid, 1, 3))
        await sent_all(pool, cid, 3)
        stats = await stats_of(pool, cid)
        assert stats is not None
        expected = {
            "opens": 2,
            "unique_opens": 1,
            "machine_opens": 1,
            "clicks": 1,
            "unique_clicks": 1,
            "machine_clicks": 0,
        }
        assert {k: stats[k] for k in expected} == expected
        assert counters(stats) == {**counters(stats), **await recount(pool, cid)}
        rows = await pool.fetch(
            "SELECT matched, email FROM delivery_events WHERE event_id = ANY($1::text[])",
            [e.event_id for e in early],
        )
        assert {(r["matched"], r["email"]) for r in rows} == {
            (True, "r1@example.com"),
            (True, "r2@example.com"),
        }
        # The result again (a re-emitted batch) and the hits again: nothing counts twice.
        await publish_results(producer, make_results(cid, 1, 3))
        await publish_and_settle(producer, pool, cid, early)
        again = await stats_of(pool, cid)
        assert again is not None
        assert {k: again[k] for k in expected} == expected
