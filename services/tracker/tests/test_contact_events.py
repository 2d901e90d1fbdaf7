"""`contact.event` carries more than unsubscribes (subscriptions, custom events): the
tracker folds only the unsubscribes, and passes over the rest without an error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from libs.common.events import ContactEvent, Topic
from libs.common.kafka import EventProducer
from libs.common.metrics import DLQ_EVENTS, HANDLER_ERRORS
from libs.common.settings import Settings
from services.tracker.tests.support import (
    make_results,
    new_campaign,
    publish_results,
    running_tracker,
    stats_of,
    wait_for,
)


def _count(counter: object, topic: str) -> float:
    return counter.labels(topic)._value.get()  # type: ignore[attr-defined]


async def test_only_unsubscribes_are_folded_and_other_actions_pass(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    cid = await new_campaign(pool)
    await publish_results(producer, make_results(cid, 1, 2))
    now = datetime.now(UTC)
    p = uuid.uuid4().hex[:8]
    key = f"{cid}:1"  # one partition: the unsubscribe is read after the others
    others = [
        ContactEvent(event_id=f"{p}-j", action="joined", email="a@example.com",
                     list_id=uuid.uuid4(), source="api", occurred_at=now),
        ContactEvent(event_id=f"{p}-c", action="custom", email="a@example.com",
                     name="trial_started", data={"plan": "pro"}, occurred_at=now),
        ContactEvent(event_id=f"{p}-s", action="subscribed", email="b@example.com",
                     list_id=uuid.uuid4(), source="form", occurred_at=now,
                     data={"ip": "192.0.2.1"}),
    ]  # fmt: skip
    unsubscribe = ContactEvent(
        event_id=f"{p}-u", action="unsubscribe", campaign_id=cid, recipient_id=1,
        occurred_at=now, source="page",
    )  # fmt: skip
    topic = Topic.CONTACT_EVENT.value
    errors_before = _count(HANDLER_ERRORS, topic)
    dlq_before = _count(DLQ_EVENTS, topic)
    async with running_tracker(tracker_settings, pool, producer):

        async def sent() -> bool:
            stats = await stats_of(pool, cid)
            return stats is not None and stats["sent"] == 2

        await wait_for(sent, what="the results")
        for event in [*others, unsubscribe]:
            await producer.send(Topic.CONTACT_EVENT, key, event)

        async def unsubscribed() -> bool:
            stats = await stats_of(pool, cid)
            return stats is not None and stats["unsubscribes"] == 1

        await wait_for(unsubscribed, what="the unsubscribe")
    assert _count(HANDLER_ERRORS, topic) == errors_before
    assert _count(DLQ_EVENTS, topic) == dlq_before
    suppressed = await pool.fetch(
        "SELECT email FROM suppressions WHERE email = ANY($1::text[])",
        ["a@example.com", "b@example.com"],
    )
    assert suppressed == []
