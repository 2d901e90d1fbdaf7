"""Transactional latency benchmark: request to provider accept, beside a running campaign.

    .venv/bin/python bench/transactional.py --campaign-recipients 1000000 --rate 100 --seconds 30

Starts its own broker (Tansu) and a fresh database (the machine's PostgreSQL, or an
embedded one), runs every service as its own process (the sink as provider, in this
process), and sends `--rate` messages/s through `POST /api/v1/messages` for `--seconds`,
open loop (each request at its planned time, whatever the earlier ones are doing). The
latency of one message is from just before its request to the sink's accept of it.

Baseline, measured in the same run: the same load with nothing else sending. Then a
campaign of `--campaign-recipients` is imported and started, and once the sink receives
its mail the same load runs again beside it; its send rate meanwhile is printed too, to
show that it was sending all along.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.infra import BenchInfrastructure, machine  # noqa: E402
from libs.common.events import MessageRequested, Topic  # noqa: E402
from libs.common.kafka import EventProducer  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from libs.mail.sink import SinkMessage  # noqa: E402
from tests.e2e.harness import RunningStack, start_stack  # noqa: E402

TX_DOMAIN = "@tx.example.net"


class Watch(collections.deque[SinkMessage]):
    """The sink's message store, noting when each transactional message was accepted."""

    def __init__(self, maxlen: int) -> None:
        super().__init__(maxlen=maxlen)
        self.accepted: dict[str, float] = {}
        self.campaign = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Event]] = []

    def append(self, message: SinkMessage) -> None:
        if message.email.endswith(TX_DOMAIN):
            self.accepted.setdefault(message.email, message.received_at)
        else:
            self.campaign += 1
        super().append(message)
        for done, event in self._waiters:
            if done():
                event.set()

    async def until(self, done: Callable[[], bool], timeout: float) -> None:
        """Return once `done()` holds (looked at as each message arrives), or after
        `timeout`. Keep `done` cheap: it runs on every message."""
        if done():
            return
        waiter = (done, asyncio.Event())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1].wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.remove(waiter)


def make_csv(n: int) -> bytes:
    lines = ["email,first_name"]
    lines += [f"user{i}@bench{i % 97}.example.com,Name{i}" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


async def load(
    http: aiohttp.ClientSession,
    producer: EventProducer | None,
    watch: Watch,
    phase: str,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Send rate × seconds messages open loop; their latencies (ms) once all arrived.
    With `producer`, published on `message.requested` instead of POSTed."""
    n = max(1, int(rate * seconds))
    asked: dict[str, float] = {}
    answered: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def one(i: int) -> None:
        to = f"{phase}{i}{TX_DOMAIN}"
        body = {
            "to": to,
            "content": {
                "subject": "Your code {{ code }}",
                "html": "<p>Hello, your code is {{ code }}</p>",
                "from_email": "auth@example.com",
            },
            "data": {"code": f"{i:06d}"},
            "category": "password_reset",
        }
        asked[to] = time.monotonic()
        if producer is not None:
            event = MessageRequested.model_validate({**body, "idempotency_key": to})
            await producer.send(Topic.MESSAGE_REQUESTED, to, event)
            answered.append((time.monotonic() - asked[to]) * 1000)
            return
        try:
            async with http.post(
                "/api/v1/messages", json=body, headers={"Idempotency-Key": to}
            ) as answer:
                await answer.read()
                answered.append((time.monotonic() - asked[to]) * 1000)
                if answer.status != 202:
                    errors[str(answer.status)] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1

    campaign_before = watch.campaign
    accepted_before = len(watch.accepted)
    started = time.monotonic()
    tasks = []
    for i in range(n):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the open-loop schedule, not a wait on a condition
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    window = time.monotonic() - started
    campaign_rate = (watch.campaign - campaign_before) / window
    await watch.until(lambda: len(watch.accepted) >= accepted_before + n, 60)
    latencies = sorted(
        (watch.accepted[to] - t0) * 1000 for to, t0 in asked.items() if to in watch.accepted
    )
    quantiles = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else latencies * 99
    )
    return {
        "phase": phase,
        "sent": n,
        "arrived": len(latencies),
        "errors": dict(errors),
        "p50": quantiles[49],
        "p99": quantiles[98],
        "max": latencies[-1] if latencies else float("nan"),
        "offered": n / window,
        "campaign_rate": campaign_rate,
        "api_p50": statistics.median(answered) if answered else float("nan"),
        "api_p99": (
            statistics.quantiles(answered, n=100, method="inclusive")[98]
            if len(answered) > 1
            else float("nan")
        ),
    }


async def start_campaign(stack: RunningStack, recipients: int, watch: Watch) -> str:
    api = stack.client()
    try:
        list_id = await api.create_list("bench")
        import_id = await api.import_csv(list_id, make_csv(recipients))
        job = await api.wait_import(import_id, timeout=1800)
        assert job["rows_imported"] == recipients, job
        campaign_id = await api.create_campaign(
            name="bench", subject="Hello {{ first_name }}", html="<p>Hi {{ first_name }}</p>",
            from_email="news@example.com", list_id=list_id,
        )  # fmt: skip
        await api.schedule(campaign_id)
        await watch.until(lambda: watch.campaign >= min(1000, recipients), 300)
        return campaign_id
    finally:
        await api.close()


async def run(
    campaign_recipients: int, rate: float, seconds: float, own_lane: bool, via: str
) -> None:
    print(f"machine: {machine()}")
    print(
        f"campaign: {campaign_recipients:,} recipients; transactional: {rate:g} messages/s"
        f" for {seconds:g} s per phase (password_reset, inline content, idempotency key)"
    )
    print(
        f"requests: {'POST /api/v1/messages' if via == 'api' else 'published on message.requested'}"
    )
    print(
        "message lane: "
        + ("a dispatcher process of its own" if own_lane else "inside the one dispatcher")
    )
    work = Path(tempfile.mkdtemp(prefix="mailfleet-bench-tx-"))
    infra = BenchInfrastructure(work)
    bootstrap, dsn = await infra.start()
    stack = await start_stack(
        dsn, bootstrap, work / "logs", keep_messages=1000, env={"MAILFLEET_LOG_LEVEL": "WARNING"},
        message_dispatchers=1 if own_lane else 0,
    )  # fmt: skip
    watch = Watch(maxlen=1000)
    stack.sink.state.messages = watch
    # aiohttp: a tenth of httpx's client CPU per request (this process also runs the sink).
    http = aiohttp.ClientSession(
        base_url=stack.api_url, timeout=aiohttp.ClientTimeout(total=60),
        connector=aiohttp.TCPConnector(limit=200),
        headers={"Authorization": f"Bearer {stack.api_key}"},
    )  # fmt: skip
    producer: EventProducer | None = None
    if via == "topic":
        producer = EventProducer(Settings(kafka_bootstrap_servers=bootstrap, database_url=dsn))
        await producer.start()
    try:
        await load(
            http, producer, watch, "warmup", rate, min(seconds, 3)
        )  # connections, first joins
        baseline = await load(http, producer, watch, "baseline", rate, seconds)
        campaign_id = await start_campaign(stack, campaign_recipients, watch)
        during = await load(http, producer, watch, "campaign", rate, seconds)
        async with http.get(f"/api/v1/campaigns/{campaign_id}") as answer:
            status = (await answer.json())["status"]
        print()
        print(
            f"{'phase':28} {'sent':>6} {'arrived':>7} {'req/s':>6} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'max ms':>8} {'campaign mail/s':>16}"
        )
        for name, r in (("baseline (nothing else)", baseline), ("beside the campaign", during)):
            print(
                f"{name:28} {r['sent']:6} {r['arrived']:7} {r['offered']:6.0f} {r['p50']:8.1f}"
                f" {r['p99']:8.1f} {r['max']:8.1f} {r['campaign_rate']:16,.0f}"
            )
            what = "API answer" if via == "api" else "publish"
            print(f"  {'':26} {what} p50 {r['api_p50']:.1f} ms, p99 {r['api_p99']:.1f} ms")
            if r["errors"]:
                print(f"  request errors: {r['errors']}")
        print(f"campaign status at the end of the window: {status}")
        print(
            f"\ntransactional p99 beside the campaign = {during['p99']:.0f} ms"
            f" (baseline {baseline['p99']:.0f} ms; goal < 1000 ms)"
        )
    finally:
        if producer is not None:
            await producer.stop()
        await http.close()
        await stack.stop()
        await infra.drop_database()
        infra.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--campaign-recipients", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase")
    parser.add_argument(
        "--own-lane-process", action="store_true",
        help="run the message lane as a dispatcher of its own (MAILFLEET_DISPATCHER_LANES)",
    )  # fmt: skip
    parser.add_argument(
        "--via", choices=["api", "topic"], default="api",
        help="POST /api/v1/messages, or publish message.requested from this process",
    )  # fmt: skip
    args = parser.parse_args()
    asyncio.run(
        run(args.campaign_recipients, args.rate, args.seconds, args.own_lane_process, args.via)
    )


if __name__ == "__main__":
    main()
