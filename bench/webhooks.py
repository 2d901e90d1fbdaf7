"""Outbound webhooks: outbox writes, delivery rate to a local HTTPS receiver, and the cost
of one claim behind a campaign whose head keeps failing.

    .venv/bin/python bench/webhooks.py [--events 20000] [--campaigns 50] [--blocked 100000]

- enqueue: `--events` delivery events written to the outbox for one endpoint (batches of
  500, as the consumer does), rows/s;
- deliver: the sender (default concurrency) posts them, signed, to an HTTPS receiver on
  127.0.0.1 (aiohttp, a trustme certificate) spread over `--campaigns` campaigns, events/s;
- claim: with `--blocked` pending deliveries queued behind one failing head, the time of
  one claim (the per-campaign ordering check), ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.infra import machine
from conftest import make_settings
from libs.common import db
from libs.common.embedded import EmbeddedPostgres, can_connect, create_database
from libs.common.events import DeliveryEvent
from libs.common.kafka import Consumed
from services.webhooks.app import Outbox, Sender
from services.webhooks.http import WebhookClient
from services.webhooks.store import WebhookStore
from services.webhooks.tests.support import Receiver, add_endpoint, make_tls, start_receiver


def events(campaigns: list[uuid.UUID], count: int) -> list[DeliveryEvent]:
    now = datetime.now(UTC)
    return [
        DeliveryEvent(
            event_id=f"bench-{uuid.uuid4().hex}",
            campaign_id=campaigns[n % len(campaigns)],
            recipient_id=n,
            email=f"r{n}@example.com",
            event="open",
            provider="sink",
            occurred_at=now,
        )
        for n in range(count)
    ]


async def enqueue(outbox: Outbox, items: list[DeliveryEvent]) -> float:
    started = time.perf_counter()
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        await outbox.on_delivery([Consumed(e, 0, n) for n, e in enumerate(chunk)])
    return time.perf_counter() - started


async def run(args: argparse.Namespace, work: Path) -> None:
    admin = os.environ.get(
        "MAILFLEET_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    postgres = None
    if not await can_connect(admin):
        postgres = EmbeddedPostgres(work / "pg")
        admin = postgres.start()
    name = f"mailfleet_bench_{uuid.uuid4().hex[:8]}"
    dsn = await create_database(admin, name)
    await db.migrate(dsn)
    tls = make_tls(work)
    settings = make_settings(
        dsn,
        "unused:9092",
        webhook_ca_file=str(tls.ca_file),
        webhook_allowed_targets="127.0.0.1/32",
        webhook_poll_s=0.01,
    )
    pool = await db.create_pool(dsn, max_size=10)
    receiver = Receiver()
    runner = await start_receiver(receiver, tls)
    client = WebhookClient(settings.webhook_target_policy(), str(tls.ca_file), 10)
    await client.start()
    try:
        print(f"machine: {machine()}")
        store = WebhookStore(pool)
        outbox = Outbox(store)
        await add_endpoint(
            pool, settings.secret_key, f"{receiver.url}/b", ["delivery.open"], receiver
        )
        campaigns = [uuid.uuid4() for _ in range(args.campaigns)]
        items = events(campaigns, args.events)
        seconds = await enqueue(outbox, items)
        print(
            f"enqueue: {len(items):,} rows in {seconds:.2f} s = {len(items) / seconds:,.0f} rows/s"
        )

        sender = Sender(store, client, settings)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(sender.run(stop))
        while len(receiver.delivered()) < len(items):
            receiver.changed.clear()
            await receiver.changed.wait()
        seconds = time.perf_counter() - started
        stop.set()
        await task
        assert receiver.bad_signatures == [] and len(receiver.delivered()) == len(items)
        print(
            f"deliver: {len(items):,} signed HTTPS posts over {args.campaigns} campaigns in "
            f"{seconds:.2f} s = {len(items) / seconds:,.0f} events/s"
        )

        stuck = uuid.uuid4()
        behind = events([stuck], args.blocked)
        await enqueue(outbox, behind)
        # Its head fails and waits for its retry: everything behind it is blocked.
        await pool.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = now() + interval '1 hour'"
            " WHERE seq = (SELECT min(seq) FROM webhook_deliveries WHERE order_key = $1)",
            str(stuck),
        )
        now = datetime.now(UTC)
        timings = []
        for _ in range(5):
            t0 = time.perf_counter()
            claimed = await store.claim(now, now + timedelta(seconds=1), 16)
            timings.append(time.perf_counter() - t0)
            assert claimed == []
        print(
            f"claim: behind one failing head, {args.blocked:,} blocked rows: "
            f"{min(timings) * 1000:.1f} ms (best of 5), {max(timings) * 1000:.1f} ms worst"
        )
    finally:
        await client.close()
        await runner.cleanup()
        await pool.close()
        if postgres is None:
            conn: asyncpg.Connection = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
        else:
            postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--campaigns", type=int, default=50)
    parser.add_argument("--blocked", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
