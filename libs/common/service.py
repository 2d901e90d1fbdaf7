"""The frame every background service runs in: logging, migrations, signals, ops server.

A service is a `ServiceMain`: an async function that gets the settings, a database pool,
a started producer and a stop event, and returns when the stop event is set.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from libs.common import db
from libs.common.kafka import EventProducer, ensure_topics
from libs.common.logging import configure, get_logger
from libs.common.metrics import CampaignGauges, start_ops_server
from libs.common.settings import Settings

log = get_logger(__name__)


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    pool: asyncpg.Pool
    producer: EventProducer
    stop: asyncio.Event


ServiceMain = Callable[[ServiceContext], Awaitable[None]]


async def _wait_for_broker(settings: Settings, stop: asyncio.Event) -> None:
    """Create the topics, waiting for the broker if it is not up yet."""
    delay = 0.5
    while not stop.is_set():
        try:
            await ensure_topics(settings)
            return
        except Exception as exc:  # broker not reachable yet: any client error
            log.warning("broker not ready; retrying", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


async def run_service(name: str, main: ServiceMain, settings: Settings) -> None:
    configure(name, settings.log_level)
    settings.require_infrastructure()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await db.migrate(settings.database_url)
    pool = await db.create_pool(settings.database_url, max_size=settings.db_pool_size)
    await _wait_for_broker(settings, stop)
    producer = EventProducer(settings)
    await producer.start()

    async def readiness() -> dict[str, bool]:
        broker_ok = True
        try:
            await asyncio.wait_for(ensure_topics(settings), 3)
        except Exception:
            broker_ok = False
        return {"database": await db.ping(pool), "broker": broker_ok}

    ops = None
    if settings.metrics_port:
        ops = await start_ops_server(
            "0.0.0.0",  # noqa: S104
            settings.metrics_port,
            readiness,
            before_scrape=CampaignGauges(pool).refresh,
        )
    log.info("service started", metrics_port=settings.metrics_port or None)
    try:
        await main(ServiceContext(name, settings, pool, producer, stop))
    finally:
        # Graceful shutdown: the service has handed back or finished its work; close all.
        if ops is not None:
            await ops.cleanup()
        await producer.stop()
        await pool.close()
        log.info("service stopped")
