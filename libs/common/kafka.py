"""Kafka I/O: topic creation, a JSON event producer, and a consumer loop with dead-lettering.

Written for Apache Kafka and for Tansu (the local broker) alike: no idempotent producer,
no transactions, offsets committed explicitly with a timeout (a commit to a broker that
lost its topics would otherwise retry forever), topics re-created when they vanish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    UnknownTopicOrPartitionError,
)
from pydantic import ValidationError

from libs.common.broker_epoch import BrokerEpoch
from libs.common.events import TOPIC_MODELS, Event, Topic, encode
from libs.common.kafka_security import kafka_connection_options
from libs.common.logging import get_logger
from libs.common.metrics import (
    CONSUMER_LAG,
    DLQ_EVENTS,
    EVENTS_CONSUMED,
    EVENTS_IN_FLIGHT,
    EVENTS_PRODUCED,
    HANDLER_ERRORS,
)
from libs.common.settings import Settings

log = get_logger(__name__)

E = TypeVar("E", bound=Event)

_TOPIC_ALREADY_EXISTS = 36
_COMMIT_TIMEOUT_S = 5.0
# Lag is also refreshed while a consumer is idle, so a caught-up partition shows 0.
_LAG_REFRESH_S = 1.0
# How long after a broker loss new assignments are read from the log's start.
_FROM_START_WINDOW_S = 60.0


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic mailfleet uses, with its partition count (dead-letter topics get one)."""
    counts: dict[str, int] = {}
    for topic in Topic:
        counts[topic.value] = (
            settings.batch_ready_partitions
            if topic is Topic.BATCH_READY
            else settings.default_partitions
        )
        counts[topic.dlq] = 1
    return counts


async def ensure_topics(settings: Settings, epoch: BrokerEpoch | None = None) -> list[str]:
    """Create the topics that are missing; returns the names it created.

    Creating a topic means the broker is new or lost its state: `epoch` is bumped so that
    every consumer re-reads from the start of the new logs.
    """
    admin = AIOKafkaAdminClient(**kafka_connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = topic_partitions(settings)
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(n, wanted[n], settings.replication_factor) for n in missing]
        )
        for name, code, *_ in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"creating topic {name} failed with error code {code}")
        log.info("topics created", topics=missing)
        if epoch is not None:
            await epoch.bump()
        return missing
    finally:
        await admin.close()


async def wait_for_broker(
    settings: Settings, epoch: BrokerEpoch | None = None, stop: asyncio.Event | None = None
) -> None:
    """Create the topics, waiting for the broker if it is not up yet (or until `stop`)."""
    delay = 0.5
    while stop is None or not stop.is_set():
        try:
            await ensure_topics(settings, epoch)
            return
        except Exception as exc:  # the broker is not up yet: any client error
            log.warning("broker not ready; retrying", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class EventProducer:
    """Writes events as JSON. Keys decide the partition: see the topic table in the design."""

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            **kafka_connection_options(settings),
            linger_ms=5,
            max_batch_size=256 * 1024,
            max_request_size=2 * 1024 * 1024,
            acks="all",
            # Tansu rejects the InitProducerId version aiokafka sends for idempotence.
            enable_idempotence=False,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: Topic, key: str, event: Event) -> None:
        """Send and wait until the broker has the record."""
        await self._producer.send_and_wait(topic.value, encode(event), key=key.encode())
        EVENTS_PRODUCED.labels(topic.value).inc()

    async def send_many(self, topic: Topic, items: Sequence[tuple[str, Event]]) -> None:
        """Send several events, letting the client batch them, and wait for all of them."""
        futures = [
            await self._producer.send(topic.value, encode(event), key=key.encode())
            for key, event in items
        ]
        await asyncio.gather(*futures)
        EVENTS_PRODUCED.labels(topic.value).inc(len(items))

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        await self._producer.send_and_wait(topic, value, key=key, headers=headers)


@dataclass(frozen=True)
class Consumed(Generic[E]):
    event: E
    partition: int
    offset: int


Handler = Callable[[list[Consumed[E]]], Awaitable[None]]


class EventConsumer(Generic[E]):
    """Reads one topic in a consumer group and hands validated events to a handler.

    The handler gets the events of one partition in order; offsets are committed after it
    returns, so a crash means redelivery (handlers are idempotent). A record that does not
    validate goes to the dead-letter topic with the reason and is skipped. A handler that
    raises is retried from the same offset after a pause.
    """

    def __init__(
        self,
        settings: Settings,
        topic: Topic,
        group_id: str,
        producer: EventProducer,
        *,
        max_records: int = 500,
        partitions_in_parallel: bool = False,
        epoch: BrokerEpoch | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.model: type[E] = TOPIC_MODELS[topic]  # type: ignore[assignment]
        self.producer = producer
        self.max_records = max_records
        self.partitions_in_parallel = partitions_in_parallel
        self._lag_partitions: set[int] = set()
        self.group_id = group_id
        self.epoch = epoch
        self._broker_lost = False
        self._known_epoch: int | None = None
        # After the broker lost its state, assignments start at the log's beginning rather
        # than at committed offsets (which may be stale ones from the lost logs).
        self._from_start_until = 0.0
        self.consumer = self._new_consumer()
        # A series from the start (at 0), so that rate() and increase() see the first error.
        HANDLER_ERRORS.labels(topic.value)
        DLQ_EVENTS.labels(topic.value)

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **kafka_connection_options(self.settings),
            group_id=self.group_id,
            enable_auto_commit=False,
            # Tansu's end-offset answers undercount, so "latest" is unreliable there; every
            # handler is idempotent, so starting a new group from the beginning is safe.
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
            session_timeout_ms=self.settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=self.settings.kafka_heartbeat_interval_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def _rejoin(self) -> None:
        """Replace the client after the broker lost its topics and groups.

        The old client keeps positions in logs that no longer exist and retries commits
        for ever; a new one joins afresh and, with no committed offsets on the new broker,
        reads the re-created topic from its start (handlers are idempotent, and PostgreSQL
        re-publishes what was not accounted for).
        """
        log.warning("broker lost its state; rejoining with a new consumer", topic=self.topic.value)
        old, self.consumer = self.consumer, self._new_consumer()
        try:
            await asyncio.wait_for(old.stop(), _COMMIT_TIMEOUT_S)
        except Exception as exc:  # the old client's state is already lost
            log.info("old consumer did not stop cleanly", error=repr(exc))
        await ensure_topics(self.settings, self.epoch)
        self._from_start_until = asyncio.get_running_loop().time() + _FROM_START_WINDOW_S
        await self._start_consumer()
        self._broker_lost = False
        if self.epoch is not None:
            self._known_epoch = await self.epoch.read()

    async def start(self) -> None:
        if self.epoch is not None:
            self._known_epoch = await self.epoch.read()
        await self._start_consumer()

    async def _start_consumer(self) -> None:
        # Subscribed before start: subscribing a started aiokafka consumer stalled its fetches.
        self.consumer.subscribe([self.topic.value], listener=_FromStartListener(self))
        await self.consumer.start()

    async def _watch_epoch(self) -> None:
        if self.epoch is None:
            return
        current = await self.epoch.read()
        if self._known_epoch is not None and current != self._known_epoch:
            self._broker_lost = True
        self._known_epoch = current

    async def stop(self) -> None:
        await self.consumer.stop()

    async def run(self, handler: Handler[E], stop: asyncio.Event) -> None:
        lag_recorded_at = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
            except KafkaError as exc:
                log.warning("fetch failed; retrying", topic=self.topic.value, error=str(exc))
                await asyncio.sleep(1)
                continue
            if batches:
                work = [
                    self._handle_partition(tp, records, handler) for tp, records in batches.items()
                ]
                if self.partitions_in_parallel:
                    await asyncio.gather(*work)
                else:
                    for item in work:
                        await item
            if self._broker_lost:
                await self._rejoin()
                continue
            if batches or loop.time() - lag_recorded_at >= _LAG_REFRESH_S:
                await self._watch_epoch()
                await self._record_lag()
                lag_recorded_at = loop.time()

    async def _handle_partition(
        self, tp: TopicPartition, records: list[ConsumerRecord], handler: Handler[E]
    ) -> None:
        good: list[Consumed[E]] = []
        for record in records:
            event = await self._decode_or_dead_letter(record)
            if event is not None:
                good.append(Consumed(event, record.partition, record.offset))
        if good:
            in_flight = EVENTS_IN_FLIGHT.labels(self.topic.value)
            in_flight.inc(len(good))
            try:
                await handler(good)
            except Exception:
                HANDLER_ERRORS.labels(self.topic.value).inc()
                log.exception(
                    "handler failed; will retry", topic=self.topic.value, partition=tp.partition
                )
                self.consumer.seek(tp, records[0].offset)
                await asyncio.sleep(1)
                return
            finally:
                in_flight.dec(len(good))
            EVENTS_CONSUMED.labels(self.topic.value).inc(len(good))
        await self._commit({tp: records[-1].offset + 1})

    async def _decode_or_dead_letter(self, record: ConsumerRecord) -> E | None:
        try:
            if record.value is None:
                raise ValueError("record has no value")
            return self.model.model_validate_json(record.value)
        except (ValidationError, ValueError) as exc:
            reason = _describe(exc)
            log.warning(
                "malformed event sent to dead-letter topic",
                topic=self.topic.value,
                partition=record.partition,
                offset=record.offset,
                reason=reason,
            )
            await self.producer.send_raw(
                self.topic.dlq,
                record.key,
                record.value or b"",
                [
                    ("reason", reason.encode()),
                    ("source-topic", self.topic.value.encode()),
                    ("source-partition", str(record.partition).encode()),
                    ("source-offset", str(record.offset).encode()),
                ],
            )
            DLQ_EVENTS.labels(self.topic.value).inc()
            return None

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._broker_lost:
            return  # the rejoin re-reads these records anyway
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), _COMMIT_TIMEOUT_S)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partition moved to another member during a rebalance; it re-reads from the
            # last commit, and the handlers are idempotent.
            log.info("commit skipped after rebalance", topic=self.topic.value, error=str(exc))
        except (TimeoutError, UnknownTopicOrPartitionError) as exc:
            log.warning("commit failed; the broker lost the topic?", error=repr(exc))
            self._broker_lost = True

    async def _record_lag(self) -> None:
        assigned = self.consumer.assignment()
        for tp in assigned:
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(self.consumer.position(tp), 1)
            except (KafkaError, IllegalStateError, TimeoutError):
                continue  # revoked or not yet positioned: measured again on the next round
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
            self._lag_partitions.add(tp.partition)
        # A partition that moved to another instance is reported there; a stale value here
        # would count its lag twice.
        for partition in self._lag_partitions - {tp.partition for tp in assigned}:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(self.topic.value, str(partition))
            self._lag_partitions.discard(partition)


class _FromStartListener(ConsumerRebalanceListener):
    def __init__(self, owner: EventConsumer[Any]) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned and asyncio.get_running_loop().time() < self.owner._from_start_until:
            await self.owner.consumer.seek_to_beginning(*assigned)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
            for err in exc.errors()[:5]
        ]
        return "invalid event: " + "; ".join(parts)
    return f"invalid event: {exc}"
