"""EventConsumer against the real broker: malformed events are dead-lettered with the
reason, the good events beside them are handled, and the consumer goes on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from conftest import make_settings
from libs.common import db, kafka
from libs.common.broker_epoch import BrokerEpoch
from libs.common.embedded import EmbeddedBroker, create_database
from libs.common.events import CampaignScheduled, Topic, encode
from libs.common.kafka import (
    Consumed,
    EventConsumer,
    EventProducer,
    ensure_topics,
    topic_partitions,
)
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

    reasons = await _dlq_reasons(settings, key, 2)
    assert "invalid event" in reasons[b"{not json"]
    assert "campaign_id" in reasons[b'{"campaign_id": "nope"}']


async def _publish(settings: Settings, key: bytes, events: list[CampaignScheduled]) -> None:
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await raw.start()
    try:
        for event in events:
            await raw.send_and_wait(Topic.CAMPAIGN_SCHEDULED.value, encode(event), key=key)
    finally:
        await raw.stop()


def _scheduled(n: int) -> list[CampaignScheduled]:
    return [
        CampaignScheduled(campaign_id=uuid.uuid4(), send_at=datetime.now(UTC)) for _ in range(n)
    ]


async def _dlq_reasons(settings: Settings, key: bytes, expected: int) -> dict[bytes, str]:
    dlq = AIOKafkaConsumer(
        Topic.CAMPAIGN_SCHEDULED.dlq,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,  # no group: nothing to join (Tansu holds a join for seconds)
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await dlq.start()
    reasons: dict[bytes, str] = {}
    try:
        async with asyncio.timeout(20):
            while len(reasons) < expected:
                for records in (await dlq.getmany(timeout_ms=200)).values():
                    for r in records:
                        if r.key == key:
                            reasons[r.value] = dict(r.headers)["reason"].decode()
    finally:
        await dlq.stop()
    return reasons


async def test_a_record_whose_handler_keeps_failing_is_dead_lettered_and_the_partition_goes_on(
    settings: Settings,
) -> None:
    """Issue 11 item 9: before, the partition retried the failing record for ever."""
    key = uuid.uuid4().hex.encode()
    before, poison, after = _scheduled(3)
    await _publish(settings, key, [before, poison, after])
    fast = settings.model_copy(update={"handler_max_attempts": 3, "handler_retry_backoff_s": 0.05})
    producer = EventProducer(fast)
    await producer.start()
    consumer: EventConsumer[CampaignScheduled] = EventConsumer(
        fast, Topic.CAMPAIGN_SCHEDULED, f"test-{uuid.uuid4().hex}", producer
    )
    handled: list[uuid.UUID] = []
    tries_of_poison = 0
    stop = asyncio.Event()

    async def handle(events: list[Consumed[CampaignScheduled]]) -> None:
        nonlocal tries_of_poison
        ids = [e.event.campaign_id for e in events]
        if poison.campaign_id in ids:
            tries_of_poison += 1
            raise RuntimeError("template store said no")
        handled.extend(ids)
        if after.campaign_id in handled:
            stop.set()

    await consumer.start()
    try:
        await asyncio.wait_for(consumer.run(handle, stop), 60)
    finally:
        await consumer.stop()
        await producer.stop()
    assert before.campaign_id in handled and after.campaign_id in handled
    assert poison.campaign_id not in handled
    # Three tries of the batch, one more alone: bounded.
    assert 2 <= tries_of_poison <= 4
    reasons = await _dlq_reasons(settings, key, 1)
    [reason] = reasons.values()
    assert "RuntimeError" in reason and "template store said no" in reason


async def test_a_commit_that_times_out_once_is_retried_not_taken_for_a_lost_broker(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 item 9: before, one slow commit made the consumer rejoin and replay the topic
    from its start."""
    monkeypatch.setattr(kafka, "_COMMIT_TIMEOUT_S", 0.5)
    key = uuid.uuid4().hex.encode()
    first, second = _scheduled(2)
    await _publish(settings, key, [first])
    producer = EventProducer(settings)
    await producer.start()
    consumer: EventConsumer[CampaignScheduled] = EventConsumer(
        settings, Topic.CAMPAIGN_SCHEDULED, f"test-{uuid.uuid4().hex}", producer
    )
    client = consumer.consumer
    real_commit = client.commit
    commits = 0
    retried = asyncio.Event()

    async def slow_once(offsets: object = None) -> None:
        nonlocal commits
        commits += 1
        if commits > 1:
            retried.set()
        if commits == 1:
            await asyncio.sleep(2)  # the broker answers after the commit timeout
        await real_commit(offsets)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "commit", slow_once)
    seen: list[uuid.UUID] = []
    stop = asyncio.Event()

    async def handle(events: list[Consumed[CampaignScheduled]]) -> None:
        seen.extend(e.event.campaign_id for e in events)
        if second.campaign_id in seen:
            stop.set()

    await consumer.start()
    try:
        run = asyncio.create_task(consumer.run(handle, stop))
        async with asyncio.timeout(60):
            await retried.wait()
            await _publish(settings, key, [second])
            await run
    finally:
        stop.set()
        await consumer.stop()
        await producer.stop()
    assert consumer.consumer is client, "the consumer rejoined as if the broker were lost"
    assert seen.count(first.campaign_id) == 1, "the topic was replayed"


Handed = list[list[tuple[int, uuid.UUID]]]


async def _gather_two(
    settings: Settings, meanwhile: Callable[[AIOKafkaConsumer, TopicPartition, int], None]
) -> tuple[Handed, list[uuid.UUID]]:
    """Two events on one partition to a consumer that gathers for 4 s: the second is
    published only once the first has been fetched, after `meanwhile(client, partition,
    first offset)`. Returns each handling's (offset, campaign id) of the two, and the two."""
    key = uuid.uuid4().hex.encode()
    first, second = _scheduled(2)
    producer = EventProducer(settings)
    await producer.start()
    consumer: EventConsumer[CampaignScheduled] = EventConsumer(
        settings,
        Topic.CAMPAIGN_SCHEDULED,
        f"test-{uuid.uuid4().hex}",
        producer,
        max_records=100_000,  # never full: the window alone ends the gathering
        gather_ms=4_000,
    )
    ours = {first.campaign_id, second.campaign_id}
    calls: Handed = []
    stop = asyncio.Event()

    async def handle(events: list[Consumed[CampaignScheduled]]) -> None:
        mine = [(e.offset, e.event.campaign_id) for e in events if e.event.campaign_id in ours]
        if mine:
            calls.append(mine)
        if second.campaign_id in {c for call in calls for _, c in call}:
            stop.set()

    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await raw.start()
    await consumer.start()
    run = asyncio.create_task(consumer.run(handle, stop))
    try:
        sent = await raw.send_and_wait(Topic.CAMPAIGN_SCHEDULED.value, encode(first), key=key)
        tp = TopicPartition(sent.topic, sent.partition)
        async with asyncio.timeout(30):
            await _fetched_past(consumer.consumer, tp, sent.offset)
            meanwhile(consumer.consumer, tp, sent.offset)
            await raw.send_and_wait(Topic.CAMPAIGN_SCHEDULED.value, encode(second), key=key)
            await run
    finally:
        stop.set()
        await raw.stop()
        await consumer.stop()
        await producer.stop()
    return calls, [first.campaign_id, second.campaign_id]


async def test_a_gathering_consumer_hands_over_what_arrives_within_its_window_together(
    settings: Settings,
) -> None:
    """The tracker's results arrive one or two at a time: gathered, they make one fold.
    The second event is published only once the first has been fetched, so only the
    gathering can hand them over together."""
    calls, ours = await _gather_two(settings, lambda client, tp, offset: None)
    assert [[c for _, c in call] for call in calls] == [ours]


async def test_a_position_moved_back_while_gathering_hands_each_record_over_once(
    settings: Settings,
) -> None:
    """A rebalance in the middle of a gathering window puts the partition's position back
    at its committed offset: the next fetch repeats records already held. They are handled
    once, with the held run, and the consumer goes on after them, not from the repeat."""
    calls, ours = await _gather_two(
        settings,
        lambda client, tp, offset: client.seek(tp, offset),  # what a rebalance does
    )
    assert [c for call in calls for _, c in call] == ours
    for call in calls:
        offsets = [o for o, _ in call]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))


async def _fetched_past(client: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    """Until `client` has fetched the record at `offset` (its position is past it)."""
    fetched = False
    while not fetched:
        await asyncio.sleep(0.02)
        fetched = tp in client.assignment() and await client.position(tp) > offset


async def test_the_broker_epoch_is_bumped_only_by_whoever_really_created_topics(
    postgres_admin_dsn: str, tmp_path: Path
) -> None:
    """Issue 11 item 9: services racing to create the topics of a new broker bumped the
    epoch once each (an "already exists" counted as created), so consumers replayed again."""
    dsn = await create_database(postgres_admin_dsn, f"mailfleet_epoch_{uuid.uuid4().hex[:8]}")
    await db.migrate(dsn)
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    bootstrap = broker.start()
    pool = await db.create_pool(dsn, max_size=4)
    try:
        settings = make_settings(dsn, bootstrap)
        epoch = BrokerEpoch(pool)
        created = await asyncio.gather(*(ensure_topics(settings, epoch) for _ in range(4)))
        again = await ensure_topics(settings, epoch)
        value = await epoch.read()
    finally:
        await pool.close()
        broker.stop()
    assert sorted(name for names in created for name in names) == sorted(topic_partitions(settings))
    assert again == []
    assert value == 1
