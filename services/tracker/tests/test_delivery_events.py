"""delivery.event → the delivery log, campaign counters and suppressions, exactly once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from libs.common.events import DeliveryEvent, DeliveryEventType, Topic
from libs.common.kafka import EventProducer
from libs.common.settings import Settings
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

T0 = datetime(2030, 1, 1, 1, tzinfo=UTC)


def provider_event(
    event_id: str,
    kind: DeliveryEventType,
    campaign_id: uuid.UUID | None,
    rid: int | None,
    *,
    email: str | None = None,
    message_id: str | None = None,
    minute: int = 0,
    detail: dict[str, Any] | None = None,
) -> DeliveryEvent:
    return DeliveryEvent(
        event_id=event_id,
        campaign_id=campaign_id,
        recipient_id=rid,
        email=email or f"r{rid}@example.com",
        event=kind,
        provider="sendgrid",
        provider_message_id=message_id,
        occurred_at=T0 + timedelta(minutes=minute),
        detail=detail or {},
    )


async def publish_and_settle(
    producer: EventProducer, pool: asyncpg.Pool, key: uuid.UUID, events: list[DeliveryEvent]
) -> None:
    """Publish on `key`'s partition, then a sentinel; return once the sentinel is folded."""
    sentinel = provider_event(f"sentinel-{uuid.uuid4()}", "processed", None, None, email="s@x.io")
    await producer.send_many(Topic.DELIVERY_EVENT, [(str(key), e) for e in [*events, sentinel]])

    async def folded() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT 1 FROM delivery_events WHERE event_id = $1", sentinel.event_id
            )
        )

    await wait_for(folded, what="the sentinel event")


async def test_provider_events_fold_once_into_counters_and_suppressions(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    cid = await new_campaign(pool)
    await publish_results(producer, make_results(cid, 1, 10))
    p = f"{uuid.uuid4().hex[:8]}-"  # event ids unique to this run
    stranger = f"stranger-{p}@example.com"
    events = [
        *(provider_event(f"{p}d{rid}", "delivered", cid, rid) for rid in range(1, 9)),
        provider_event(f"{p}d1", "delivered", cid, 1),  # the same webhook event twice
        provider_event(f"{p}b9", "bounce", cid, 9, detail={"type": "bounce"}),
        provider_event(f"{p}b10", "bounce", cid, 10, detail={"type": "blocked"}),
        provider_event(f"{p}o1", "open", cid, 1, minute=5),
        provider_event(f"{p}o2", "open", cid, 1, minute=6),
        provider_event(f"{p}o3", "open", cid, 2, minute=5),
        provider_event(f"{p}c1", "click", cid, 1, minute=7),
        provider_event(f"{p}df1", "deferred", cid, 3),
        provider_event(f"{p}df2", "deferred", cid, 3, minute=1),
        provider_event(f"{p}s3", "spamreport", cid, 3, minute=9),
        # No correlation ids: matched by SendGrid's sg_message_id and the address.
        provider_event(
            f"{p}u4",
            "unsubscribe",
            None,
            None,
            email="R4@Example.com",
            message_id=f"msg-{cid.hex[:8]}-4.filterdrecv-1234.0",
        ),
        provider_event(f"{p}x", "delivered", uuid.uuid4(), 99),  # a message we never sent
        provider_event(f"{p}y", "unsubscribe", None, None, email=stranger),
    ]
    async with running_tracker(tracker_settings, pool, producer):

        async def sent() -> bool:
            stats = await stats_of(pool, cid)
            return stats is not None and stats["sent"] == 10

        await wait_for(sent, what="the results")
        await publish_and_settle(producer, pool, cid, events)
        stats = await stats_of(pool, cid)
        assert stats is not None
        assert {k: stats[k] for k in counters(stats) if k not in ("sent", "batches_done")} == {
            "failed": 0,
            "invalid": 0,
            "unknown": 0,
            "cancelled": 0,
            "delivered": 8,
            "bounced": 2,
            "dropped": 0,
            "deferred": 1,
            "opens": 3,
            "unique_opens": 2,
            "clicks": 1,
            "unique_clicks": 1,
            "spam_reports": 1,
            "unsubscribes": 1,
        }
        assert counters(stats) == {**counters(stats), **await recount(pool, cid)}
        r1 = await pool.fetchrow(
            "SELECT * FROM deliveries WHERE campaign_id = $1 AND recipient_id = 1", cid
        )
        assert (r1["open_count"], r1["opened_at"], r1["last_event"]) == (
            2,
            T0 + timedelta(minutes=5),
            "click",
        )
        matched = await pool.fetch(
            "SELECT event_id, matched FROM delivery_events WHERE event_id = ANY($1::text[])",
            [f"{p}x", f"{p}y", f"{p}u4"],
        )
        assert {r["event_id"]: r["matched"] for r in matched} == {
            f"{p}x": False,
            f"{p}y": False,
            f"{p}u4": True,
        }
        suppressed = await pool.fetch(
            "SELECT email, reason FROM suppressions WHERE email = ANY($1::text[])",
            [f"r{i}@example.com" for i in (3, 4, 9, 10)] + [stranger],
        )
        assert {r["email"]: r["reason"] for r in suppressed} == {
            "r3@example.com": "spamreport",
            "r4@example.com": "unsubscribe",
            "r9@example.com": "bounce",
            # The stranger's unsubscribe matched no delivery: it suppresses nobody.
        }

        # The provider retries its webhook: every event again, nothing changes.
        await publish_and_settle(producer, pool, cid, events)
        assert await stats_of(pool, cid) == stats


async def test_the_providers_evidence_makes_an_unknown_recipient_sent_once(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    """Issue 11 item 12: `processed`/`delivered` with the batch's custom args prove a send."""
    cid = await new_campaign(pool)
    results = make_results(cid, 1, 10, status_of=lambda rid: "unknown" if rid <= 5 else "sent")
    batch = results[0].batch_id
    await publish_results(producer, results)
    p = f"{uuid.uuid4().hex[:8]}-"
    events = [
        provider_event(f"{p}p1", "processed", cid, 1, detail={"batch_id": batch}),
        provider_event(f"{p}d1", "delivered", cid, 1, minute=1, detail={"batch_id": batch}),
        provider_event(f"{p}d2", "delivered", cid, 2, detail={"batch_id": batch}),
        # Not evidence: another batch's args, no batch at all, or not a sending event.
        provider_event(f"{p}d3", "delivered", cid, 3, detail={"batch_id": f"{cid}:7"}),
        provider_event(f"{p}p4", "processed", cid, 4),
        provider_event(f"{p}b5", "bounce", cid, 5, detail={"batch_id": batch, "type": "bounce"}),
        provider_event(f"{p}d6", "delivered", cid, 6, detail={"batch_id": batch}),
    ]
    async with running_tracker(tracker_settings, pool, producer):

        async def folded() -> bool:
            stats = await stats_of(pool, cid)
            return stats is not None and stats["batches_done"] == 1

        await wait_for(folded, what="the results")
        await publish_and_settle(producer, pool, cid, events)
        await publish_and_settle(producer, pool, cid, events)  # a webhook retry: no change
        stats = await stats_of(pool, cid)
    assert stats is not None
    assert (stats["sent"], stats["unknown"]) == (7, 3)
    assert counters(stats) == {**await recount(pool, cid), "batches_done": 1}
    statuses = dict(
        await pool.fetch("SELECT recipient_id, status FROM deliveries WHERE campaign_id = $1", cid)
    )
    assert [statuses[rid] for rid in range(1, 6)] == [
        "sent",
        "sent",
        "unknown",
        "unknown",
        "unknown",
    ]
