"""EventConsumer against the real broker: malformed events are dead-lettered with the
reason, the good events beside them are handled, and the consumer goes on."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from libs.common.events import CampaignScheduled, Topic, encode
from libs.common.kafka import Consumed, EventConsumer, EventProducer
from libs.common.metrics import DLQ_EVENTS
from libs.common.settings import Settings


async def test_malformed_event_goes_to_dlq_and_consumer_goes_on(settings: Settings) -> None:
    key = uuid.uuid4().hex.encode()  # one key: one partition, so the order below holds
    good_before = CampaignScheduled(campaign_id=uuid.uuid4(), send_at=datetime.now(UTC))
    good_after = CampaignScheduled(campaign_id=uuid.uuid4(), send_at=datetime.now(UTC))
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await raw.start()
    try:
        await raw.send_and_wait(Topic.CAMPAIGN_SCHEDULED.value, encode(good_before), key=key)
        await raw.send_and_wait(Topic.CAMPAIGN_SCHEDULED.value, b"{not json", key=key)
        await raw.send_and_wait(Topic.CAMPAIGN_SCHEDULED.value, b'{"campaign_id": "nope"}', key=key)
        await raw.send_and_wait(Topic.CAMPAIGN_SCHEDULED.value, encode(good_after), key=key)
    finally:
        await raw.stop()

    dlq_before = DLQ_EVENTS.labels(Topic.CAMPAIGN_SCHEDULED.value)._value.get()
    producer = EventProducer(settings)
    await producer.start()
    consumer: EventConsumer[CampaignScheduled] = EventConsumer(
        settings, Topic.CAMPAIGN_SCHEDULED, f"test-{uuid.uuid4().hex}", producer
    )
    seen: list[uuid.UUID] = []
    stop = asyncio.Event()

    async def handle(events: list[Consumed[CampaignScheduled]]) -> None:
        seen.extend(e.event.campaign_id for e in events)
        if good_after.campaign_id in seen:
            stop.set()

    await consumer.start()
    try:
        await asyncio.wait_for(consumer.run(handle, stop), 30)
    finally:
        await consumer.stop()
        await producer.stop()
    assert good_before.campaign_id in seen and good_after.campaign_id in seen
    assert DLQ_EVENTS.labels(Topic.CAMPAIGN_SCHEDULED.value)._value.get() - dlq_before == 2

    dlq = AIOKafkaConsumer(
        Topic.CAMPAIGN_SCHEDULED.dlq,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await dlq.start()
    reasons: dict[bytes, str] = {}
    try:
        async with asyncio.timeout(20):
            while len(reasons) < 2:
                for records in (await dlq.getmany(timeout_ms=200)).values():
                    for r in records:
                        if r.key == key:
                            reasons[r.value] = dict(r.headers)["reason"].decode()
    finally:
        await dlq.stop()
    assert "invalid event" in reasons[b"{not json"]
    assert "campaign_id" in reasons[b'{"campaign_id": "nope"}']
