"""Prometheus metrics shared by every service, and the small HTTP server that shows them.

Label sets stay bounded: topics, partitions, providers, outcomes, never ids or addresses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

EVENTS_CONSUMED = Counter(
    "mailfleet_events_consumed_total", "Events read from Kafka and handled.", ["topic"]
)
EVENTS_PRODUCED = Counter("mailfleet_events_produced_total", "Events written to Kafka.", ["topic"])
DLQ_EVENTS = Counter(
    "mailfleet_dlq_events_total", "Malformed events sent to a dead-letter topic.", ["topic"]
)
HANDLER_ERRORS = Counter(
    "mailfleet_handler_errors_total",
    "Batches of events whose handling failed and will be retried.",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "mailfleet_consumer_lag",
    "Records behind the partition's high-water mark.",
    ["topic", "partition"],
)

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


async def start_ops_server(host: str, port: int, readiness: ReadinessCheck) -> web.AppRunner:
    """Serve /metrics, /healthz (alive) and /readyz (dependencies reachable) on `port`."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        ok = all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
