"""Server time of the edge's open pixel (issue 14 item 1: under 5 ms).

    .venv/bin/python bench/edge_pixel.py [--requests 5000]

Serves the real edge app with uvicorn on a local port, with a real broker (a Tansu of its
own), and times each request inside the server: from the moment the ASGI app is called to
the last byte of its answer handed to uvicorn (every middleware included; the client and
the network are not). Requests alternate between the pixel (`/o/{token}`, a valid token
per recipient, so each hit is verified and published) and the baseline, `/healthz` of the
same app (routing, middleware, a JSON answer: what any route costs), so both are measured
under the same load in the same run. `make test` runs `measure` at a small size
(services/edge/tests/test_tracking.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.logging import configure  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from libs.mail.tracking import open_token  # noqa: E402
from services.edge.app import create_app  # noqa: E402
from services.edge.tests.http_server import serving  # noqa: E402

LIMIT_MS = 5.0


class ServerTiming:
    """Outermost ASGI wrapper: records each request's server time (ms) by kind."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.times: dict[str, list[float]] = {"pixel": [], "baseline": []}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = "pixel" if scope["path"].startswith("/o/") else "baseline"
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.times[kind].append((time.perf_counter() - started) * 1000)

        await self.app(scope, receive, timed_send)


@dataclass(frozen=True)
class Figures:
    requests: int
    pixel_p50: float
    pixel_p99: float
    baseline_p50: float
    baseline_p99: float

    def lines(self) -> list[str]:
        return [
            f"pixel    /o/{{token}}  p50 {self.pixel_p50:.3f} ms  p99 {self.pixel_p99:.3f} ms",
            f"baseline /healthz     p50 {self.baseline_p50:.3f} ms  p99 {self.baseline_p99:.3f} ms",
            f"pixel minus baseline  p50 {self.pixel_p50 - self.baseline_p50:.3f} ms",
        ]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(settings: Settings, requests: int, warmup: int = 50) -> Figures:
    """`requests` pixels and as many baselines, alternating, after `warmup` of each."""
    timing = ServerTiming(create_app(settings))
    campaign = uuid.uuid4()
    sent_at = int(time.time()) - 3600
    tokens = [open_token(settings.secret_key, campaign, i, sent_at) for i in range(requests)]
    async with serving(timing) as url, httpx.AsyncClient(base_url=url) as client:
        for _ in range(warmup):
            assert (await client.get(f"/o/{tokens[0]}")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
        for kind in timing.times.values():
            kind.clear()
        for token in tokens:
            assert (await client.get(f"/o/{token}")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
    pixel, baseline = timing.times["pixel"], timing.times["baseline"]
    return Figures(
        requests,
        statistics.median(pixel),
        _p(pixel, 0.99),
        statistics.median(baseline),
        _p(baseline, 0.99),
    )


async def _main(requests: int) -> None:
    from bench.infra import BenchInfrastructure, machine
    from libs.common.kafka import ensure_topics

    print(f"machine: {machine()}")
    # As in production: a JSON log line per request (INFO), here written to /dev/null.
    terminal, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115
    try:
        configure("edge", "INFO")
    finally:
        sys.stdout = terminal
    with tempfile.TemporaryDirectory() as work:
        infra = BenchInfrastructure(Path(work))
        bootstrap, dsn = await infra.start()
        try:
            settings = Settings(
                kafka_bootstrap_servers=bootstrap,
                database_url=dsn,
                secret_key="bench-secret-key-for-the-edge-pixel-0123",
            )
            await ensure_topics(settings)
            figures = await measure(settings, requests)
        finally:
            await infra.drop_database()
            infra.stop()
    print(f"{figures.requests} pixels and {figures.requests} baselines, sequential, over HTTP")
    for line in figures.lines():
        print(line)
    verdict = "PASS" if figures.pixel_p50 < LIMIT_MS else "FAIL"
    print(f"{verdict}: pixel p50 {figures.pixel_p50:.3f} ms (limit {LIMIT_MS} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(_main(args.requests))


if __name__ == "__main__":
    main()
