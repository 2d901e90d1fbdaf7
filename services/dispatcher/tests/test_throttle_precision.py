"""A per-domain throttle is held within 5 % across 2 running dispatchers (issue 14 item 4):
`batch.ready` on a real broker, real PostgreSQL, the sink provider; a 2-second "minute".

Every batch mixes gmail and other recipients: the other ones go at once, gmail is held to
its limit a window, and every batch that waited completes (sent, nobody twice).

What the sink received is measured against the limit in two ways that latency cannot fool:
the running total never passes the limit times the windows begun since the first
reservation, and the windows after the first two (by then every batch waits and is woken
at a window's start, so its sends land inside that window) each hold the limit within 5 %.
The first windows are left out of the per-window count only: a batch that reserved in the
last milliseconds of a window is received in the next one.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from conftest import make_settings
from libs.common.embedded import EmbeddedBroker
from libs.common.events import BatchReady, BatchRecipient, Topic
from libs.common.kafka import EventProducer, ensure_topics
from libs.common.service import ServiceContext
from libs.mail.config import DispatcherSettings
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.app import main
from services.dispatcher.tests.support import insert_content, make_batch

pytestmark = pytest.mark.timeout(120)

WINDOW_S = 2
LIMIT = 40  # gmail recipients a window, over both dispatchers
BATCHES = 12
GMAIL_PER_BATCH = 15  # 180 gmail recipients: 5 windows
OTHER_PER_BATCH = 10


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = EmbeddedBroker(log_path=Path(tmp_path_factory.mktemp("throttle-broker")) / "t.log")
    yield broker.start()
    broker.stop()


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


def mixed(batch: BatchReady, tag: str) -> BatchReady:
    recipients = [
        BatchRecipient(
            recipient_id=r.recipient_id,
            email=f"r{r.recipient_id}.{tag}@{'gmail.com' if i < GMAIL_PER_BATCH else 'example.com'}",
            fields=r.fields,
        )
        for i, r in enumerate(batch.recipients)
    ]
    return batch.model_copy(update={"recipients": recipients})


async def wait_for(condition: str, pool: asyncpg.Pool, *args: object, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await pool.fetchval(condition, *args):
        assert time.monotonic() < deadline, f"not within {within_s} s: {condition}"
        await asyncio.sleep(0.05)


async def test_a_group_limit_is_held_within_five_percent_across_two_dispatchers(
    database_url: str, private_broker: str, pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    settings = make_settings(database_url, private_broker, sink_url=sink.url)
    await ensure_topics(settings)
    producer = EventProducer(settings)
    await producer.start()
    stop = asyncio.Event()
    extra = DispatcherSettings(
        MAILFLEET_DOMAIN_THROTTLES=f"sink.gmail:{LIMIT}/-",
        MAILFLEET_THROTTLE_MINUTE_S=WINDOW_S,
        MAILFLEET_DISPATCHER_GROUP=f"throttle-{uuid.uuid4().hex[:8]}",
    )
    ctx = ServiceContext("dispatcher", settings, pool, producer, stop)
    owners = ["throttle-a", "throttle-b"]
    tasks = [asyncio.create_task(main(ctx, extra=extra, instance_id=o)) for o in owners]
    try:
        # Both dispatchers hold partitions once each has sent a probe batch (other domains).
        probe = uuid.uuid4()
        content = await insert_content(pool, probe)
        probes = [make_batch(probe, content, n, 1, batches_total=24) for n in range(24)]
        await producer.send_many(Topic.BATCH_READY, [(b.batch_id, b) for b in probes])
        await wait_for(
            "SELECT count(DISTINCT owner) = 2 FROM send_ledger WHERE campaign_id = $1",
            pool, probe, within_s=60,
        )  # fmt: skip
        await wait_for(
            "SELECT count(*) = 24 FROM send_ledger WHERE campaign_id = $1 AND state = 'done'",
            pool, probe, within_s=30,
        )  # fmt: skip

        await pool.execute(
            "DELETE FROM throttle_windows WHERE scope = 'sink:gmail' AND window_s = $1", WINDOW_S
        )
        campaign = uuid.uuid4()
        content = await insert_content(pool, campaign)
        size = GMAIL_PER_BATCH + OTHER_PER_BATCH
        batches = [
            mixed(make_batch(campaign, content, n, size, batches_total=BATCHES), campaign.hex[:8])
            for n in range(BATCHES)
        ]
        gmail_total = BATCHES * GMAIL_PER_BATCH
        await producer.send_many(Topic.BATCH_READY, [(b.batch_id, b) for b in batches])
        emails = {r.email for b in batches for r in b.recipients}
        samples: list[tuple[float, int]] = []  # (wall clock, gmail recipients received)
        deadline = time.monotonic() + 60
        while True:
            got = sum(1 for m in sink.messages if m.email in emails and "@gmail.com" in m.email)
            samples.append((time.time(), got))
            if got >= gmail_total:
                break
            assert time.monotonic() < deadline, f"only {got} of {gmail_total} gmail sent"
            await asyncio.sleep(0.01)
        await wait_for(
            "SELECT count(*) = $2 FROM send_ledger WHERE campaign_id = $1 AND state = 'done'",
            pool, campaign, BATCHES, within_s=20,
        )  # fmt: skip
        results = await pool.fetch(
            "SELECT owner, result FROM send_ledger WHERE campaign_id = $1", campaign
        )
        reserved = await pool.fetch(
            "SELECT extract(epoch FROM window_start)::float8 AS start, used FROM throttle_windows"
            " WHERE scope = 'sink:gmail' AND window_s = $1 ORDER BY window_start",
            WINDOW_S,
        )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await producer.stop()

    # Every batch completed: everyone sent, once, by both dispatchers together.
    statuses = Counter(o["status"] for r in results for o in r["result"]["outcomes"])
    assert statuses == {"sent": BATCHES * size}, statuses
    received = Counter(m.email for m in sink.messages if m.email in emails)
    assert len(received) == BATCHES * size and set(received.values()) == {1}
    assert {r["owner"] for r in results} == set(owners)

    # Both instances counted in the same windows, each exactly up to the limit.
    assert sum(r["used"] for r in reserved) == gmail_total
    assert all(r["used"] <= LIMIT for r in reserved), [r["used"] for r in reserved]
    first_window = math.floor(reserved[0]["start"] / WINDOW_S)
    # Received so far never passes the limit times the windows begun (the database and
    # the sink share this host's clock).
    for at, got in samples:
        begun = math.floor(at / WINDOW_S) - first_window + 1
        assert got <= LIMIT * begun * 1.05, (at, got, begun)
    # Gmail recipients received per window.
    per_window: Counter[int] = Counter()
    previous = 0
    for at, got in samples:
        per_window[math.floor(at / WINDOW_S)] += got - previous
        previous = got
    counts = [per_window[w] for w in range(first_window, max(per_window) + 1)]
    assert len(counts) >= math.ceil(gmail_total / LIMIT), counts
    steady = counts[2:]
    assert max(steady) <= LIMIT * 1.05, counts
    # ... and used to the limit (within 5 %) but for the last: the batches that waited were
    # sent as soon as there was room.
    assert all(c >= LIMIT * 0.95 for c in steady[:-1]), counts
    print(f"gmail received per {WINDOW_S} s window (limit {LIMIT}): {counts}")


async def test_a_batch_that_waits_longer_than_a_handling_may_is_requeued_and_completes(
    database_url: str, private_broker: str, pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    """The wait of one handling is bounded (the consumer must poll within its interval):
    the batch goes back on `batch.ready`, its offset is committed, and it completes later."""
    settings = make_settings(database_url, private_broker, sink_url=sink.url)
    await ensure_topics(settings)
    producer = EventProducer(settings)
    await producer.start()
    stop = asyncio.Event()
    extra = DispatcherSettings(
        MAILFLEET_DOMAIN_THROTTLES="sink.yahoo:4/-",
        MAILFLEET_THROTTLE_MINUTE_S=WINDOW_S,
        MAILFLEET_THROTTLE_MAX_WAIT_S=1,
        MAILFLEET_DISPATCHER_GROUP=f"requeue-{uuid.uuid4().hex[:8]}",
    )
    requeued_before = _requeued()
    ctx = ServiceContext("dispatcher", settings, pool, producer, stop)
    task = asyncio.create_task(main(ctx, extra=extra, instance_id="requeue-a"))
    try:
        campaign = uuid.uuid4()
        content = await insert_content(pool, campaign)
        batch = make_batch(campaign, content, 0, 10)
        batch = batch.model_copy(
            update={
                "recipients": [
                    r.model_copy(
                        update={"email": f"r{r.recipient_id}.{campaign.hex[:8]}@yahoo.com"}
                    )
                    for r in batch.recipients
                ]
            }
        )
        await producer.send(Topic.BATCH_READY, batch.batch_id, batch)
        await wait_for(
            "SELECT count(*) = 1 FROM send_ledger WHERE campaign_id = $1 AND state = 'done'",
            pool, campaign, within_s=40,
        )  # fmt: skip
        result = await pool.fetchval(
            "SELECT result FROM send_ledger WHERE campaign_id = $1", campaign
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await producer.stop()
    assert [o["status"] for o in result["outcomes"]] == ["sent"] * 10
    emails = {r.email for r in batch.recipients}
    received = Counter(m.email for m in sink.messages if m.email in emails)
    assert len(received) == 10 and set(received.values()) == {1}
    assert _requeued() > requeued_before


def _requeued() -> float:
    value = REGISTRY.get_sample_value(
        "mailfleet_dispatcher_throttle_requeued_total", {"provider": "sink"}
    )
    return value or 0.0
