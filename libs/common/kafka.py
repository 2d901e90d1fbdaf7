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

from libs.common import db
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
# A commit that times out is tried this many times before the broker is suspected: a busy
# broker or machine answers late, and taking that for a lost broker replays every topic.
_COMMIT_ATTEMPTS = 3
# While the database is unavailable, a handler is tried again after this pause, doubling.
_DB_RETRY_S = 0.5
_DB_RETRY_MAX_S = 10.0
# Lag is also refreshed while a consumer is idle, so a caught-up partition shows 0.
_LAG_REFRESH_S = 1.0
# How long after a broker loss new assignments are read from the log's start.
_FROM_START_WINDOW_S = 60.0


def topic_configs(settings: Settings) -> dict[str, str]:
    """Stated explicitly, so that `batch.ready` sizing and the topic agree on the limit."""
    return {"max.message.bytes": str(settings.kafka_max_message_bytes)}


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
    every consumer re-reads from the start of the new logs, once. Services race to create
    the topics of a new broker and may split them between them, so the bump belongs to
    whoever created one marker topic (the first), which is created alone: "already exists"
    never counts, and two winners of different topics do not bump twice (seen under load).
    """
    admin = AIOKafkaAdminClient(**kafka_connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = topic_partitions(settings)
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        configs = topic_configs(settings)
        # One topic marks the broker's generation: it is created alone, first, and only the
        # caller that really created it bumps the epoch. Racing callers split the other
        # topics between them in any way, but exactly one of them creates the marker.
        marker = next(iter(wanted))
        first = [marker] if marker in missing else []
        rest = [name for name in missing if name != marker]
        created: list[str] = []
        for names in (first, rest):
            if names:
                created += await _create(admin, names, wanted, configs, settings)
        if not created:
            return []
        log.info("topics created", topics=created)
        if epoch is not None and marker in created:
            await epoch.bump()
        return created
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient,
    names: list[str],
    partitions: dict[str, int],
    configs: dict[str, str],
    settings: Settings,
) -> list[str]:
    """Create `names`; returns those this call created ("already exists" is not created)."""
    response = await admin.create_topics(
        [
            NewTopic(n, partitions[n], settings.replication_factor, topic_configs=configs)
            for n in names
        ]
    )
    created = []
    for name, code, *_ in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            raise KafkaError(f"creating topic {name} failed with error code {code}")
    return created


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
            # What the topics accept (see topic_configs): refused here rather than by a broker.
            max_request_size=settings.kafka_max_message_bytes,
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

    async def send_each(
        self, topic: Topic, items: Sequence[tuple[str, Event | bytes]]
    ) -> list[Exception | None]:
        """As `send_many`, but each event's own error (or None) instead of the first raised:
        one record the broker refuses (too large, say) must not hide that the others went."""
        futures: list[asyncio.Future[Any] | Exception] = []
        for key, event in items:
            try:
                futures.append(
                    await self._producer.send(topic.value, encode(event), key=key.encode())
                )
            except KafkaError as exc:  # refused before sending, e.g. over max_request_size
                futures.append(exc)
        sent = [f for f in futures if not isinstance(f, Exception)]
        settled = iter(await asyncio.gather(*sent, return_exceptions=True))
        errors: list[Exception | None] = []
        for future in futures:
            outcome = future if isinstance(future, Exception) else next(settled)
            errors.append(outcome if isinstance(outcome, Exception) else None)
        EVENTS_PRODUCED.labels(topic.value).inc(errors.count(None))
        return errors

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        await self._producer.send_and_wait(topic, value, key=key, headers=headers)


@dataclass(frozen=True)
class Consumed(Generic[E]):
    event: E
    partition: int
    offset: int
    # The record's timestamp (producer's create time), when the broker gave one.
    timestamp_ms: int | None = None


Handler = Callable[[list[Consumed[E]]], Awaitable[None]]


class EventConsumer(Generic[E]):
    """Reads one topic in a consumer group and hands validated events to a handler.

    The handler gets the events of one partition in order; offsets are committed after it
    returns, so a crash means redelivery (handlers are idempotent). A record that does not
    validate goes to the dead-letter topic with the reason and is skipped. A handler that
    raises is retried a bounded number of times with a growing pause; then each record is
    tried alone, and the one that still fails goes to the dead-letter topic with the error,
    so that one record never stops its partition. While the database is unavailable the
    handler is retried for as long as it takes: that is an outage, not the record's fault.
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
        fetch_max_wait_ms: int | None = None,
        gather_ms: int = 0,
    ) -> None:
        self.settings = settings
        # After a fetch that did not fill `max_records`, keep fetching this long: a stream
        # of small publishes then reaches the handler in fewer, larger calls.
        self.gather_ms = gather_ms
        # A latency-sensitive lane waits less for a fetch (Tansu answers only at its end).
        self.fetch_max_wait_ms = fetch_max_wait_ms or settings.kafka_fetch_max_wait_ms
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
        self._stop = asyncio.Event()
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
            fetch_max_wait_ms=self.fetch_max_wait_ms,
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
        # First, so that a broker still away leaves everything as it was for the next try.
        await ensure_topics(self.settings, self.epoch)
        old, self.consumer = self.consumer, self._new_consumer()
        try:
            await asyncio.wait_for(old.stop(), _COMMIT_TIMEOUT_S)
        except Exception as exc:  # the old client's state is already lost
            log.info("old consumer did not stop cleanly", error=repr(exc))
        self._from_start_until = asyncio.get_running_loop().time() + _FROM_START_WINDOW_S
        await self._start_consumer()
        self._broker_lost = False
        self._known_epoch = None  # whatever it is now is the epoch of this new client
        await self._watch_epoch()

    async def start(self) -> None:
        await self._watch_epoch()  # the database may be away: the epoch is read later then
        await self._start_consumer()

    async def _start_consumer(self) -> None:
        # Subscribed before start: subscribing a started aiokafka consumer stalled its fetches.
        self.consumer.subscribe([self.topic.value], listener=_FromStartListener(self))
        await self.consumer.start()

    async def _watch_epoch(self) -> None:
        if self.epoch is None:
            return
        try:
            current = await self.epoch.read()
        except Exception as exc:
            if not db.is_unavailable(exc):
                raise
            return  # looked at again once the database is back
        if self._known_epoch is not None and current != self._known_epoch:
            self._broker_lost = True
        self._known_epoch = current

    async def stop(self) -> None:
        await self.consumer.stop()

    async def run(self, handler: Handler[E], stop: asyncio.Event) -> None:
        self._stop = stop
        lag_recorded_at = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
            except KafkaError as exc:
                log.warning("fetch failed; retrying", topic=self.topic.value, error=str(exc))
                await self._pause(1)
                continue
            if batches and self.gather_ms:
                await self._gather_more(batches)
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
                try:
                    await self._rejoin()
                except Exception as exc:  # broker or database still away: try again
                    log.warning("rejoin failed; retrying", topic=self.topic.value, error=repr(exc))
                    await self._pause(1)
                continue
            if batches or loop.time() - lag_recorded_at >= _LAG_REFRESH_S:
                await self._watch_epoch()
                await self._record_lag()
                lag_recorded_at = loop.time()

    async def _gather_more(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Add to `batches` what arrives within `gather_ms`, up to `max_records` in all.

        A partition's records must stay one run of offsets: its commit is the last one's
        offset + 1, and a failed handling seeks back to the first. A fetch that does not
        continue where the held records end (a rebalance put the position back at the
        committed offset meanwhile) is dropped, the position is set right after the held
        records (they are handled now: reading them again would hand them over twice),
        and the gathering ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gather_ms / 1000
        count = sum(len(records) for records in batches.values())
        while count < self.max_records and not self._stop.is_set():
            left_ms = int((deadline - loop.time()) * 1000)
            if left_ms <= 0:
                return
            try:
                more = await self.consumer.getmany(
                    timeout_ms=left_ms, max_records=self.max_records - count
                )
            except KafkaError as exc:  # what was fetched is handled; the next fetch retries
                log.warning("fetch failed; retrying", topic=self.topic.value, error=str(exc))
                return
            continuous = True
            for tp, records in more.items():
                held = batches.setdefault(tp, [])
                if held and records[0].offset != held[-1].offset + 1:
                    self.consumer.seek(tp, held[-1].offset + 1)
                    continuous = False
                    continue
                held.extend(records)
                count += len(records)
            if not continuous:
                return

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the consumer is asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _handle_partition(
        self, tp: TopicPartition, records: list[ConsumerRecord], handler: Handler[E]
    ) -> None:
        good: list[tuple[ConsumerRecord, Consumed[E]]] = []
        for record in records:
            event = await self._decode_or_dead_letter(record)
            if event is not None:
                good.append(
                    (record, Consumed(event, record.partition, record.offset, record.timestamp))
                )
        if good:
            in_flight = EVENTS_IN_FLIGHT.labels(self.topic.value)
            in_flight.inc(len(good))
            try:
                handled = await self._handle(good, handler)
            finally:
                in_flight.dec(len(good))
            if not handled:
                # Stopping (or the dead-letter topic unreachable): the partition's next
                # reader, or this one later, starts again at the first record.
                self.consumer.seek(tp, records[0].offset)
                return
        await self._commit({tp: records[-1].offset + 1})

    async def _handle(
        self, good: list[tuple[ConsumerRecord, Consumed[E]]], handler: Handler[E]
    ) -> bool:
        """Hand the events over with bounded retries; then isolate and dead-letter the ones
        that still fail. False: not done (stopping), the offsets must not be committed."""
        attempts = self.settings.handler_max_attempts
        error = await self._attempt(handler, [item for _, item in good], attempts)
        if error is None:
            EVENTS_CONSUMED.labels(self.topic.value).inc(len(good))
            return True
        for record, item in good:
            if self._stop.is_set():
                return False
            # Alone, each record gets one more try: the batch's retries were spent already.
            alone = error if len(good) == 1 else await self._attempt(handler, [item], 1)
            if alone is None:
                EVENTS_CONSUMED.labels(self.topic.value).inc()
                continue
            if self._stop.is_set():
                return False
            reason = f"handler failed {attempts} times: {alone!r}"[:1000]
            if not await self._dead_letter_failed(record, reason):
                return False
        return True

    async def _attempt(
        self, handler: Handler[E], events: list[Consumed[E]], attempts: int
    ) -> Exception | None:
        """Run the handler until it succeeds (None), fails `attempts` times, or the consumer
        stops (the last error). A database outage does not count as an attempt."""
        failures = 0
        delay = self.settings.handler_retry_backoff_s
        db_delay = _DB_RETRY_S
        while True:
            try:
                await handler(events)
                return None
            except Exception as exc:
                HANDLER_ERRORS.labels(self.topic.value).inc()
                if self._stop.is_set():
                    return exc
                if db.is_unavailable(exc):
                    log.warning(
                        "database unavailable; consumer paused",
                        topic=self.topic.value,
                        error=repr(exc),
                        retry_in=db_delay,
                    )
                    await self._pause(db_delay)
                    db_delay = min(db_delay * 2, _DB_RETRY_MAX_S)
                    continue
                failures += 1
                log.warning(
                    "handler failed",
                    topic=self.topic.value,
                    attempt=failures,
                    attempts=attempts,
                    exc_info=exc,
                )
                if failures >= attempts:
                    return exc
                await self._pause(delay)
                delay *= 2

    async def _dead_letter_failed(self, record: ConsumerRecord, reason: str) -> bool:
        try:
            await self._send_to_dlq(record, reason, "event dead-lettered after handler failures")
        except Exception as exc:  # the broker is away: the record is read again later
            log.warning("dead-letter topic unreachable", error=repr(exc))
            return False
        return True

    async def _decode_or_dead_letter(self, record: ConsumerRecord) -> E | None:
        try:
            if record.value is None:
                raise ValueError("record has no value")
            return self.model.model_validate_json(record.value)
        except (ValidationError, ValueError) as exc:
            await self._send_to_dlq(
                record, _describe(exc), "malformed event sent to dead-letter topic"
            )
            return None

    async def _send_to_dlq(self, record: ConsumerRecord, reason: str, what: str) -> None:
        log.warning(
            what,
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

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._broker_lost:
            return  # the rejoin re-reads these records anyway
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                await asyncio.wait_for(self.consumer.commit(offsets), _COMMIT_TIMEOUT_S)
                return
            except (CommitFailedError, IllegalStateError) as exc:
                # The partition moved to another member during a rebalance; it re-reads from
                # the last commit, and the handlers are idempotent.
                log.info("commit skipped after rebalance", topic=self.topic.value, error=str(exc))
                return
            except UnknownTopicOrPartitionError as exc:
                log.warning("commit failed: the broker lost the topic", error=repr(exc))
                self._broker_lost = True
                return
            except (TimeoutError, KafkaError) as exc:
                log.warning(
                    "commit failed; retrying",
                    topic=self.topic.value,
                    attempt=attempt,
                    error=repr(exc),
                )
            if self._stop.is_set():
                return
        # Still failing: a lost broker only if the topic is really gone. Otherwise the next
        # commit covers these offsets (and a broker that lost its state and had its topics
        # re-created meanwhile shows in the epoch).
        if not await self._topic_exists():
            self._broker_lost = True

    async def _topic_exists(self) -> bool:
        try:
            topics = await asyncio.wait_for(self.consumer.topics(), _COMMIT_TIMEOUT_S)
        except (TimeoutError, KafkaError) as exc:
            log.warning(
                "broker unreachable; cannot tell whether it lost the topic", error=repr(exc)
            )
            return True  # a broker that is away is not a broker that lost its state
        return self.topic.value in topics

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
