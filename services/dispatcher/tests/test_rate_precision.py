"""A sink rate limit is held within 5 % by a running dispatcher (batch.ready in, sink out).

Runs on a broker of its own, like test_dispatcher_kafka: a dispatcher reads `batch.ready`
from the beginning.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from conftest import make_settings
from libs.common.embedded import EmbeddedBroker
from libs.common.events import Topic
from libs.common.kafka import EventProducer, ensure_topics
from libs.common.service import ServiceContext
from libs.mail.config import DispatcherSettings
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.app import main
from services.dispatcher.tests.support import insert_content, make_batch

pytestmark = pytest.mark.timeout(90)

RATE = 500.0
BATCH = 50
BATCHES = 100  # 5,000 emails: 10 s at 500/s


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = EmbeddedBroker(log_path=Path(tmp_path_factory.mktemp("rate-broker")) / "tansu.log")
    yield broker.start()
    broker.stop()


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0, keep_messages=0)
    yield handle
    await handle.stop()


async def test_the_sink_rate_is_held_within_five_percent(
    database_url: str, private_broker: str, pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    settings = make_settings(database_url, private_broker, sink_url=sink.url)
    await ensure_topics(settings)
    producer = EventProducer(settings)
    await producer.start()
    stop = asyncio.Event()
    extra = DispatcherSettings(MAILFLEET_SINK_RATE_PER_SEC=RATE)
    ctx = ServiceContext("dispatcher", settings, pool, producer, stop)
    task = asyncio.create_task(main(ctx, group_id=f"rate-{uuid.uuid4().hex[:8]}", extra=extra))
    try:
        campaign = uuid.uuid4()
        content = await insert_content(pool, campaign)
        batches = [
            make_batch(campaign, content, n, BATCH, batches_total=BATCHES) for n in range(BATCHES)
        ]
        await producer.send_many(Topic.BATCH_READY, [(b.batch_id, b) for b in batches])
        total = BATCH * BATCHES
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 60
        while (count := sink.stats()["messages"]) < total:
            assert time.monotonic() < deadline, f"only {count} of {total} sent"
            samples.append((time.monotonic(), count))
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await producer.stop()
    # The steady state: from a fifth to four fifths of the campaign (the start waits for the
    # partition assignment, and the end is one last batch).
    start = next(s for s in samples if s[1] >= total // 5)
    end = next(s for s in samples if s[1] >= total * 4 // 5)
    measured = (end[1] - start[1]) / (end[0] - start[0])
    assert abs(measured - RATE) / RATE < 0.05, f"measured {measured:.1f} emails/s"
