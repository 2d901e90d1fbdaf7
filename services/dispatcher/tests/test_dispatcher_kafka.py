"""The dispatcher service end to end: batch.ready in, the sink, delivery.result out.

Runs on a broker of its own: a dispatcher consumes `batch.ready` from the beginning, and
on the shared broker it would also send the batches other services' tests publish.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from conftest import first_events, make_settings
from libs.common.embedded import EmbeddedBroker
from libs.common.events import CampaignControl, DeliveryResult, Topic
from libs.common.kafka import EventProducer, ensure_topics
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from libs.mail.config import DispatcherSettings
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.app import main
from services.dispatcher.ledger_store import PostgresLedger
from services.dispatcher.tests.support import insert_content, make_batch

pytestmark = pytest.mark.timeout(120)

INSTANCE = f"dispatcher-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = EmbeddedBroker(
        log_path=Path(tmp_path_factory.mktemp("dispatcher-broker")) / "tansu.log"
    )
    yield broker.start()
    broker.stop()


@pytest.fixture(scope="module")
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


@pytest.fixture(scope="module")
async def dispatcher_settings(database_url: str, private_broker: str, sink: SinkHandle) -> Settings:
    s = make_settings(database_url, private_broker, sink_url=sink.url, provider_concurrency=8)
    await ensure_topics(s)
    return s


class Results:
    """Every delivery.result read so far, by campaign."""

    def __init__(self) -> None:
        self.by_campaign: dict[uuid.UUID, list[DeliveryResult]] = defaultdict(list)

    async def wait_for(
        self,
        campaign: uuid.UUID,
        predicate: Callable[[list[DeliveryResult]], bool],
        timeout: float = 30,
    ) -> list[DeliveryResult]:
        deadline = time.monotonic() + timeout
        while not predicate(self.by_campaign[campaign]):
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching results: {self.by_campaign[campaign]}")
            await asyncio.sleep(0.05)
        return self.by_campaign[campaign]


@pytest.fixture(scope="module")
async def producer(dispatcher_settings: Settings) -> AsyncIterator[EventProducer]:
    p = EventProducer(dispatcher_settings)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(scope="module")
async def results(dispatcher_settings: Settings) -> AsyncIterator[Results]:
    consumer = AIOKafkaConsumer(
        Topic.DELIVERY_RESULT.value,
        bootstrap_servers=dispatcher_settings.kafka_bootstrap_servers,
        group_id=f"dispatcher-test-results-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    found = Results()

    async def read() -> None:
        async for record in consumer:
            result = DeliveryResult.model_validate_json(record.value)
            found.by_campaign[result.campaign_id].append(result)

    task = asyncio.create_task(read())
    yield found
    task.cancel()
    await consumer.stop()


@pytest.fixture(scope="module")
async def running_dispatcher(
    dispatcher_settings: Settings, pool: asyncpg.Pool, producer: EventProducer, results: Results
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    ctx = ServiceContext("dispatcher", dispatcher_settings, pool, producer, stop)
    extra = DispatcherSettings(
        MAILFLEET_PROVIDER_MAX_ATTEMPTS=4,
        MAILFLEET_PROVIDER_RETRY_INITIAL_S=0.01,
        MAILFLEET_PROVIDER_RETRY_MAX_S=0.05,
        MAILFLEET_LEDGER_LEASE_S=5,
        MAILFLEET_PROVIDER_STATUS_EVERY_S=0.2,
    )
    task = asyncio.create_task(
        main(
            ctx,
            group_id=f"dispatcher-test-{uuid.uuid4().hex[:8]}",
            extra=extra,
            instance_id=INSTANCE,
        )
    )
    yield
    stop.set()
    await asyncio.wait_for(task, 20)


def sink_messages_of(sink: SinkHandle, campaign: uuid.UUID) -> list[object]:
    return [m for m in sink.messages if m.custom_args.get("campaign_id") == str(campaign)]


async def test_every_recipient_receives_exactly_once_with_its_merge_fields(
    running_dispatcher: None,
    pool: asyncpg.Pool,
    producer: EventProducer,
    results: Results,
    sink: SinkHandle,
) -> None:
    campaign = uuid.uuid4()
    content = await insert_content(pool, campaign)
    batches = [make_batch(campaign, content, n, 400, batches_total=5) for n in range(5)]
    await producer.send_many(Topic.BATCH_READY, [(f"{campaign}:{b.batch_no}", b) for b in batches])
    got = await results.wait_for(campaign, lambda rs: len(rs) >= 5)
    assert sorted(r.batch_no for r in got) == [0, 1, 2, 3, 4]
    assert all(
        r.batches_total == 5 and r.audience_total == 2000 and r.provider == "sink" for r in got
    )
    outcomes = [o for r in got for o in r.outcomes]
    assert len(outcomes) == 2000 and {o.status for o in outcomes} == {"sent"}
    received = sink_messages_of(sink, campaign)
    assert len(received) == 2000
    assert len({m.email for m in received}) == 2000  # type: ignore[attr-defined]
    sample = next(m for m in received if m.email.startswith("r1234."))  # type: ignore[attr-defined]
    assert sample.subject == "Hello Name1234"  # type: ignore[attr-defined]
    html, text = sample.html, sample.text  # type: ignore[attr-defined]
    # The content, then the unsubscribe footer (the template has no link) with its own link.
    assert html.startswith("<p>Dear Name1234 from Zürich &amp; Co</p><p")
    assert "/u/" in html.split("<p", 2)[2] and html.endswith("Unsubscribe</a></p>")
    assert text.startswith("Dear Name1234 from Zürich & Co\n") and "Unsubscribe" in text


async def test_a_redelivered_batch_is_replayed_not_resent(
    running_dispatcher: None,
    pool: asyncpg.Pool,
    producer: EventProducer,
    results: Results,
    sink: SinkHandle,
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 30)
    await producer.send(Topic.BATCH_READY, batch.batch_id, batch)
    await results.wait_for(campaign, lambda rs: len(rs) == 1)
    await producer.send(Topic.BATCH_READY, batch.batch_id, batch.model_copy(update={"emitted": 2}))
    first, second = await results.wait_for(campaign, lambda rs: len(rs) == 2)
    assert not first.replayed and second.replayed
    assert second.outcomes == first.outcomes
    assert len(sink_messages_of(sink, campaign)) == 30


async def test_a_batch_left_sending_is_reported_unknown(
    running_dispatcher: None,
    pool: asyncpg.Pool,
    producer: EventProducer,
    results: Results,
    sink: SinkHandle,
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 10)
    assert await PostgresLedger(pool).claim(batch.batch_id, campaign, "killed-dispatcher", 0.1)
    await producer.send(Topic.BATCH_READY, batch.batch_id, batch)
    (result,) = await results.wait_for(campaign, lambda rs: len(rs) == 1)
    assert {o.status for o in result.outcomes} == {"unknown"}
    assert sink_messages_of(sink, campaign) == []


async def test_server_errors_are_retried_and_rejections_fail_with_the_providers_message(
    running_dispatcher: None,
    pool: asyncpg.Pool,
    producer: EventProducer,
    results: Results,
    sink: SinkHandle,
) -> None:
    campaign = uuid.uuid4()
    content = await insert_content(pool, campaign)
    sink.inject_fault(500, count=2)
    retried = make_batch(campaign, content, 0, 20, batches_total=2)
    await producer.send(Topic.BATCH_READY, retried.batch_id, retried)
    (result,) = await results.wait_for(campaign, lambda rs: len(rs) == 1)
    assert {o.status for o in result.outcomes} == {"sent"}
    assert len(sink_messages_of(sink, campaign)) == 20

    sink.inject_fault(400, count=1)
    rejected = make_batch(campaign, content, 1, 20, batches_total=2)
    await producer.send(Topic.BATCH_READY, rejected.batch_id, rejected)
    results_now = await results.wait_for(campaign, lambda rs: len(rs) == 2)
    failed = next(r for r in results_now if r.batch_no == 1)
    assert {o.status for o in failed.outcomes} == {"failed"}
    assert failed.outcomes[0].error == "400: injected fault 400"
    assert len(sink_messages_of(sink, campaign)) == 20


async def _sink_status(
    pool: asyncpg.Pool, predicate: Callable[[asyncpg.Record], bool]
) -> asyncpg.Record:
    """The sink's row that this test module's dispatcher published, once it matches."""
    deadline = time.monotonic() + 30
    while True:
        row = await pool.fetchrow(
            "SELECT * FROM provider_status WHERE instance = $1 AND provider = 'sink'", INSTANCE
        )
        if row is not None and predicate(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching provider status: {row}")
        await asyncio.sleep(0.05)


class LoopLag:
    """The longest the event loop went without running this task (heartbeats, consumers
    and every other batch run on the same loop)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            self.worst = max(self.worst, time.monotonic() - before - 0.02)

    def stop(self) -> None:
        self._task.cancel()


# Runs for hours unbounded: 10^10 loop iterations, for the recipients with `bomb` set.
RUNAWAY_HTML = (
    "{% if bomb %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}{% endif %}<p>Hi {{ first_name }}</p>"
)


@pytest.mark.timeout(90)  # today's code never comes back: the red run ends here
async def test_a_refused_api_key_hands_the_batch_back_asks_for_a_pause_and_is_published(
    running_dispatcher: None,
    dispatcher_settings: Settings,
    pool: asyncpg.Pool,
    producer: EventProducer,
    results: Results,
    sink: SinkHandle,
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 40)
    sink.inject_fault(401, count=1000)
    try:
        await producer.send(Topic.BATCH_READY, batch.batch_id, batch)
        (pause,) = await first_events(
            dispatcher_settings.kafka_bootstrap_servers,
            Topic.CAMPAIGN_CONTROL,
            CampaignControl,
            lambda e: e.campaign_id == campaign,
        )
        opened = await _sink_status(pool, lambda r: r["breaker_state"] == "open")
    finally:
        sink.state.faults.clear()
    # The breaker the refusal opened is published for the console, with its reason.
    assert opened["breaker_reason"].startswith("401")
    assert opened["last_error"] == opened["breaker_reason"]
    assert opened["last_error_at"] is not None and opened["rate_limit_per_s"] == 0
    assert pause.action == "pause" and pause.origin == "provider"
    assert pause.reason is not None and "401" in pause.reason
    entry = await PostgresLedger(pool).get(batch.batch_id)
    assert entry is not None and entry.released and entry.recorded_outcomes() == []
    assert results.by_campaign[campaign] == []  # nobody failed
    # Resumed: the scheduler emits the batch again, and it is sent once.
    await producer.send(Topic.BATCH_READY, batch.batch_id, batch.model_copy(update={"emitted": 2}))
    (result,) = await results.wait_for(campaign, lambda rs: len(rs) == 1)
    assert {o.status for o in result.outcomes} == {"sent"}
    assert len(sink_messages_of(sink, campaign)) == 40
    # A send that works closes the breaker; the last error stays on show.
    closed = await _sink_status(pool, lambda r: r["breaker_state"] == "closed")
    assert closed["breaker_reason"] is None and closed["last_error"].startswith("401")


async def test_a_runaway_template_fails_its_recipients_alone_and_the_loop_stays_free(
    running_dispatcher: None,
    pool: asyncpg.Pool,
    producer: EventProducer,
    results: Results,
    sink: SinkHandle,
) -> None:
    lag = LoopLag()
    campaign, other = uuid.uuid4(), uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign, html=RUNAWAY_HTML), 0, 12)
    bombs = {r.recipient_id for r in batch.recipients[::2]}
    for r in batch.recipients:
        r.fields["bomb"] = r.recipient_id in bombs
    injected = batch.recipients[1]
    injected.fields["first_name"] = "Eve\r\nBcc: everyone@example.com"
    await producer.send(Topic.BATCH_READY, batch.batch_id, batch)
    normal = make_batch(other, await insert_content(pool, other), 0, 20)
    await producer.send(Topic.BATCH_READY, normal.batch_id, normal)
    try:
        (done,) = await results.wait_for(other, lambda rs: len(rs) == 1, timeout=60)
        (result,) = await results.wait_for(campaign, lambda rs: len(rs) == 1, timeout=60)
    finally:
        lag.stop()
    assert {o.status for o in done.outcomes} == {"sent"}
    by_id = {o.recipient_id: o for o in result.outcomes}
    for recipient_id in bombs:
        assert by_id[recipient_id].status == "failed"
        assert "MAILFLEET_RENDER_TIMEOUT_MS" in (by_id[recipient_id].error or "")
    assert by_id[injected.recipient_id].status == "failed"
    assert "line break" in (by_id[injected.recipient_id].error or "")
    sent = {o.recipient_id for o in result.outcomes if o.status == "sent"}
    assert sent == {r.recipient_id for r in batch.recipients} - bombs - {injected.recipient_id}
    assert {m.email for m in sink_messages_of(sink, campaign)} == {  # type: ignore[attr-defined]
        r.email for r in batch.recipients if r.recipient_id in sent
    }
    # Six renders of 100 ms each ran meanwhile; the loop was never held for long.
    assert lag.worst < 2.0, f"event loop held for {lag.worst:.2f} s"  # session timeout: 6 s
