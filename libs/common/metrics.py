"""Prometheus metrics shared by every service, and the small HTTP server that shows them.

Label sets stay bounded: topics, partitions, providers, outcomes, never ids or addresses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import asyncpg
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
EVENTS_IN_FLIGHT = Gauge(
    "mailfleet_events_in_flight",
    "Events handed to a handler and not finished yet (on batch.ready: batches being sent).",
    ["topic"],
)

# Campaign counts come from PostgreSQL at scrape time (every background service reports
# them, so dashboards and rules take `max by (status)`): they survive restarts, unlike
# counters, and need no owner service to be up.
CAMPAIGN_STATUSES = (
    "draft",
    "scheduled",
    "in_progress",
    "paused",
    "completed",
    "failed",
    "cancelled",
)
CAMPAIGNS = Gauge("mailfleet_campaigns", "Campaigns by status.", ["status"])
CAMPAIGN_STALL_SECONDS = Gauge(
    "mailfleet_campaign_longest_stall_seconds",
    "Among in-progress campaigns, the longest time since one last made progress (its start "
    "or its last batch folded by the tracker); 0 when none is in progress.",
)
_CAMPAIGN_REFRESH_S = 5.0
_CAMPAIGN_QUERY_TIMEOUT_S = 2.0


class CampaignGauges:
    """Refreshes the campaign gauges from PostgreSQL, at most every few seconds."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._refreshed_at = 0.0

    async def refresh(self) -> None:
        if time.monotonic() - self._refreshed_at < _CAMPAIGN_REFRESH_S:
            return
        try:
            async with asyncio.timeout(_CAMPAIGN_QUERY_TIMEOUT_S):
                counts, stall = await self._query()
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return  # keep the last values; /readyz reports the database
        self._refreshed_at = time.monotonic()
        for status in CAMPAIGN_STATUSES:
            CAMPAIGNS.labels(status).set(counts.get(status, 0))
        CAMPAIGN_STALL_SECONDS.set(stall)

    async def _query(self) -> tuple[dict[str, int], float]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT status, count(*) AS n FROM campaigns GROUP BY status")
            stall = await longest_stall_seconds(conn)
        return {r["status"]: int(r["n"]) for r in rows}, stall


async def longest_stall_seconds(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    campaign_ids: list[UUID] | None = None,
) -> float:
    """Among in-progress campaigns (those of `campaign_ids`, default all), the longest time
    since one last made progress: its start, its last batch folded by the tracker, or, for
    a local-time or windowed plan, its last batch that fell due, or, for an A/B test, the
    end of its wait or its winner's decision. Such a campaign whose unaccounted batches are
    all due later is waiting for a zone's instant or its window, not stuck: left out (issue
    17); so is one whose A/B test group is all accounted for and whose remainder waits for
    a winner due later (or picked by hand). A campaign with a rate cap (`max_per_hour`) is
    given the time its cap needs to send what it has in flight (emitted, not accounted
    for) before it counts as stalled: its batches fold that slowly by design."""
    stall = await conn.fetchval(
        """
        SELECT coalesce(max(greatest(extract(epoch FROM now() - greatest(
            coalesce(c.started_at, c.updated_at),
            (SELECT max(t.folded_at) FROM tracker_batches t WHERE t.campaign_id = c.id),
            (SELECT max(b.due_at) FROM batch_plans b
              WHERE b.campaign_id = c.id AND b.due_at <= now()),
            (SELECT CASE WHEN a.winner IS NOT NULL THEN a.decided_at
                         WHEN a.metric <> 'manual'
                         THEN least(now(), a.test_started_at
                                           + make_interval(secs => a.wait_seconds)) END
               FROM ab_tests a WHERE a.campaign_id = c.id)
        )) - CASE WHEN c.max_per_hour IS NULL THEN 0 ELSE 3600.0 * (
              SELECT coalesce(sum(cardinality(b.recipient_ids)), 0) FROM batch_plans b
               WHERE b.campaign_id = c.id AND b.emitted > 0
                 AND NOT EXISTS (SELECT 1 FROM tracker_batches t
                                  WHERE t.batch_id = b.batch_id)) / c.max_per_hour END,
        0)), 0)::float8
        FROM campaigns c
        WHERE c.status = 'in_progress'
          AND ($1::uuid[] IS NULL OR c.id = ANY($1::uuid[]))
          AND NOT EXISTS (
              SELECT 1 FROM ab_tests a
               WHERE a.campaign_id = c.id AND a.winner IS NULL
                 AND (a.metric = 'manual'
                      OR a.test_started_at + make_interval(secs => a.wait_seconds) > now())
                 AND NOT EXISTS (
                     SELECT 1 FROM batch_plans b
                      WHERE b.campaign_id = c.id AND b.variant IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM tracker_batches t
                                         WHERE t.batch_id = b.batch_id)))
          AND (NOT EXISTS (SELECT 1 FROM batch_plans b
                            WHERE b.campaign_id = c.id AND b.due_at IS NOT NULL)
               OR EXISTS (SELECT 1 FROM batch_plans b
                           WHERE b.campaign_id = c.id AND b.due_at <= now()
                             AND NOT EXISTS (SELECT 1 FROM tracker_batches t
                                              WHERE t.batch_id = b.batch_id)))
        """,
        campaign_ids,
    )
    return float(stall)


ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
BeforeScrape = Callable[[], Awaitable[None]]


async def start_ops_server(
    host: str, port: int, readiness: ReadinessCheck, before_scrape: BeforeScrape | None = None
) -> web.AppRunner:
    """Serve /metrics, /healthz (alive) and /readyz (dependencies reachable) on `port`.

    `before_scrape` refreshes gauges that are read from elsewhere (e.g. PostgreSQL).
    """

    async def metrics(_: web.Request) -> web.Response:
        if before_scrape is not None:
            await before_scrape()
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
