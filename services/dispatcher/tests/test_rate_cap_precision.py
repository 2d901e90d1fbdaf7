"""A campaign's rate cap is held across 2 running dispatchers (issue 17 item 4):
`batch.ready` on a real broker, real PostgreSQL, the sink provider, and one injected clock
that the dispatchers' windows and waits and this test's measurement all read.

The test moves the clock a minute at a time once the system is at rest (every batch either
done or asleep on the clock, waiting for room), so what the sink received in each minute of
the clock is exact, whatever the machine's speed: no sleep, no wall-clock window. The cap is
lowered mid-hour, as an operator would while the campaign sends: the next minute follows
it, and the hour's count already used holds against it.

"At rest" needs every batch read: a consumer reads again only once every batch of its last
fetch is handled, so a batch that arrived a moment after a fetch would wait behind batches
asleep on the clock, and the clock would never move. So the campaign's batches are put one
per partition while both dispatchers are held in a handler (batches of a "blocker" campaign
asleep on the clock), and the blockers are let go (cancelled) once they are all there.
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
from aiokafka.partitioner import murmur2

from conftest import make_settings
from libs.common.clock import ManualClock
from libs.common.embedded import EmbeddedBroker
from libs.common.events import Topic
from libs.common.kafka import EventProducer, ensure_topics
from libs.common.service import ServiceContext
from libs.mail.config import DispatcherSettings
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.app import main
from services.dispatcher.tests.support import insert_content, make_batch
from services.dispatcher.tests.test_control import new_campaign

pytestmark = pytest.mark.timeout(120)

BATCHES = 12  # one per partition of batch.ready (make_settings: 12)
SIZE = 60  # 720 recipients
FIRST_CAP = 1200  # 20 a minute
LOWERED_CAP = 600  # from minute 15: 10 a minute, and 300 left in the first hour
LOWERED_AT = 15


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = EmbeddedBroker(log_path=Path(tmp_path_factory.mktemp("cap-broker")) / "t.log")
    yield broker.start()
    broker.stop()


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


async def wait_for(condition: str, pool: asyncpg.Pool, *args: object, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await pool.fetchval(condition, *args):
        assert time.monotonic() < deadline, f"not within {within_s} s: {condition}"
        await asyncio.sleep(0.05)


def one_per_partition(campaign: uuid.UUID, partitions: int) -> list[int]:
    """Batch numbers whose keys land on distinct partitions (the producer's partitioner)."""
    chosen: dict[int, int] = {}
    n = 0
    while len(chosen) < partitions:
        partition = (murmur2(f"{campaign}:{n}".encode()) & 0x7FFFFFFF) % partitions
        chosen.setdefault(partition, n)
        n += 1
    return sorted(chosen.values())


def expected_minutes(total: int) -> list[int]:
    """What the cap allows each minute: its minute share, within what is left of the hour
    (the cap in force then), until everyone is sent."""
    out: list[int] = []
    left = total
    used: Counter[int] = Counter()
    minute = 0
    while left > 0:
        cap = FIRST_CAP if minute < LOWERED_AT else LOWERED_CAP
        n = min(math.ceil(cap / 60), max(cap - used[minute // 60], 0), left)
        out.append(n)
        used[minute // 60] += n
        left -= n
        minute += 1
    return out


async def test_a_campaign_cap_is_held_across_two_dispatchers_by_the_same_clock(
    database_url: str, private_broker: str, pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    settings = make_settings(database_url, private_broker, sink_url=sink.url)
    await ensure_topics(settings)
    producer = EventProducer(settings)
    await producer.start()
    stop = asyncio.Event()
    hour = math.floor(time.time() / 3600) * 3600 + 30 * 86_400  # an hour of its own
    clock = ManualClock(hour + 1.0)
    extra = DispatcherSettings(
        MAILFLEET_DOMAIN_THROTTLES="off",  # the campaign's cap alone
        MAILFLEET_THROTTLE_MAX_WAIT_S=240,
        MAILFLEET_DISPATCHER_GROUP=f"cap-{uuid.uuid4().hex[:8]}",
    )
    ctx = ServiceContext("dispatcher", settings, pool, producer, stop)
    owners = ["cap-a", "cap-b"]
    tasks = [
        asyncio.create_task(main(ctx, extra=extra, instance_id=o, clock=clock)) for o in owners
    ]
    try:
        # Both dispatchers hold partitions once each has sent a probe batch (no cap).
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

        # Both held in a handler: a blocker campaign of 1 an hour, its batches asleep.
        blocker = await new_campaign(pool)
        await pool.execute("UPDATE campaigns SET max_per_hour = 1 WHERE id = $1", blocker)
        content = await insert_content(pool, blocker)
        blockers = [make_batch(blocker, content, n, 2, batches_total=24) for n in range(24)]
        await producer.send_many(Topic.BATCH_READY, [(b.batch_id, b) for b in blockers])
        await wait_for(
            "SELECT count(DISTINCT owner) = 2 FROM send_ledger WHERE campaign_id = $1"
            " AND state = 'sending' AND result->>'released' = 'true'",
            pool, blocker, within_s=30,
        )  # fmt: skip

        campaign = await new_campaign(pool)
        await pool.execute(
            "UPDATE campaigns SET max_per_hour = $2 WHERE id = $1", campaign, FIRST_CAP
        )
        content = await insert_content(pool, campaign)
        numbers = one_per_partition(campaign, settings.batch_ready_partitions)
        assert len(numbers) == BATCHES
        batches = [make_batch(campaign, content, n, SIZE, batches_total=BATCHES) for n in numbers]
        emails = {r.email for b in batches for r in b.recipients}
        await producer.send_many(Topic.BATCH_READY, [(b.batch_id, b) for b in batches])
        # Let the blockers go: cancelled, they end at their next look (the dispatchers' status
        # cache is refreshed every 0.5 s; they look when the clock moves: a few ms of it).
        await pool.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", blocker)
        deadline = time.monotonic() + 30
        while await pool.fetchval(
            "SELECT count(*) < 24 FROM send_ledger WHERE campaign_id = $1 AND state = 'done'",
            blocker,
        ):
            assert time.monotonic() < deadline, "the blockers did not end"
            clock.advance(0.01)
            await asyncio.sleep(0.05)
        assert clock.now() < hour + 30  # still the first minute

        async def at_rest() -> int:
            """Wait until every batch is done or asleep on the clock; then what the sink
            has received of the campaign is all this minute of the clock sends."""
            deadline = time.monotonic() + 30
            while True:
                done = await pool.fetchval(
                    "SELECT count(*) FROM send_ledger WHERE campaign_id = $1 AND state = 'done'",
                    campaign,
                )
                if done + clock.sleeping == BATCHES:
                    return sum(1 for m in sink.messages if m.email in emails)
                assert time.monotonic() < deadline, (done, clock.sleeping)
                await asyncio.sleep(0.01)

        per_minute: list[int] = []
        received = 0
        while received < len(emails):
            now = await at_rest()
            per_minute.append(now - received)
            received = now
            minute = len(per_minute)
            assert minute < 200, per_minute
            if minute == LOWERED_AT:
                # While it sends: the API's PATCH writes just this column.
                await pool.execute(
                    "UPDATE campaigns SET max_per_hour = $2 WHERE id = $1", campaign, LOWERED_CAP
                )
            clock.advance(60)
        await wait_for(
            "SELECT count(*) = $2 FROM send_ledger WHERE campaign_id = $1 AND state = 'done'",
            pool, campaign, BATCHES, within_s=20,
        )  # fmt: skip
        results = await pool.fetch(
            "SELECT owner, result FROM send_ledger WHERE campaign_id = $1", campaign
        )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await producer.stop()

    # Everyone sent once, by both dispatchers together.
    statuses = Counter(o["status"] for r in results for o in r["result"]["outcomes"])
    assert statuses == {"sent": BATCHES * SIZE}, statuses
    got = Counter(m.email for m in sink.messages if m.email in emails)
    assert len(got) == BATCHES * SIZE and set(got.values()) == {1}
    assert {r["owner"] for r in results} == set(owners)

    # Each minute of the clock sent exactly what the cap allows: its share of the hour,
    # the lowered cap from the minute after the change, nothing once the hour had its 600.
    print(f"received per minute of the clock: {per_minute}")
    assert per_minute == expected_minutes(BATCHES * SIZE), per_minute
    # Held within 5 %: every hour, fixed or sliding, under the cap in force throughout it;
    # and the first hour used its (lowered) cap fully.
    for start in range(len(per_minute)):
        cap = FIRST_CAP if start < LOWERED_AT else LOWERED_CAP
        assert sum(per_minute[start : start + 60]) <= cap * 1.05, start
    assert LOWERED_CAP * 0.95 <= sum(per_minute[:60]) <= LOWERED_CAP * 1.05
