"""The frame every background service runs in: logging, migrations, signals, ops server.

A service is a `ServiceMain`: an async function that gets the settings, a database pool,
a started producer and a stop event, and returns when the stop event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from libs.common import db
from libs.common.broker_epoch import BrokerEpoch
from libs.common.events import Event, Topic
from libs.common.kafka import Consumed, EventConsumer, EventProducer, ensure_topics, wait_for_broker
from libs.common.logging import configure, get_logger
from libs.common.metrics import CampaignGauges, start_ops_server
from libs.common.process import freeze_startup_objects, lower_priority
from libs.common.settings import Settings

log = get_logger(__name__)

# A background service that had to cut its shutdown short (see `_exit_overrun`).
SHUTDOWN_OVERRUN_EXIT_CODE = 70

E = TypeVar("E", bound=Event)


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    pool: asyncpg.Pool
    producer: EventProducer
    stop: asyncio.Event

    @property
    def epoch(self) -> BrokerEpoch:
        """Pass to every EventConsumer: it re-reads topics the broker lost and re-created."""
        return BrokerEpoch(self.pool)

    async def consume(
        self,
        topic: Topic,
        group_id: str,
        handler: Callable[[list[Consumed[E]]], Awaitable[None]],
        *,
        max_records: int = 500,
        gather_ms: int = 0,
    ) -> None:
        """Read `topic` in `group_id`, handing each batch to `handler`, until `stop` is set
        (`gather_ms`: see `EventConsumer`)."""
        consumer: EventConsumer[E] = EventConsumer(
            self.settings, topic, group_id, self.producer, max_records=max_records,
            epoch=self.epoch, gather_ms=gather_ms,
        )  # fmt: skip
        await consumer.start()
        try:
            await consumer.run(handler, self.stop)
        finally:
            await consumer.stop()


ServiceMain = Callable[[ServiceContext], Awaitable[None]]


def _stop_on(sig: signal.Signals, stop: asyncio.Event, budget_s: float) -> None:
    """Ask the service to stop, and start the clock on its shutdown budget."""
    if stop.is_set():
        return
    # Logged: a deploy's grace period is measured from here to "service stopped".
    log.info("stop requested", signal=sig.name, budget_s=budget_s)
    stop.set()
    loop = asyncio.get_running_loop()
    # A thread, not the loop: a loop that is blocked must not keep the process alive.
    watchdog = threading.Timer(budget_s, _exit_overrun, (loop, budget_s))
    watchdog.daemon = True
    watchdog.start()


def _exit_overrun(loop: asyncio.AbstractEventLoop, budget_s: float) -> None:
    """The shutdown outlived its budget: log what is still running, then exit now.

    What was in flight is safe to drop: a claimed ledger row without a result is resolved
    by its lease, and an offset not committed is read again. The orchestrator would kill the
    process a little later anyway; this way the log says what hung."""
    logged = threading.Event()

    def log_stuck_tasks() -> None:
        stuck = [_describe_task(task) for task in asyncio.all_tasks(loop)]
        log.error("shutdown overran its budget; exiting", budget_s=budget_s, tasks=stuck)
        logged.set()

    with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
        loop.call_soon_threadsafe(log_stuck_tasks)
    if not logged.wait(1.0):  # the loop itself is blocked: say so, and where, from here
        log.error("shutdown overran its budget; event loop blocked", budget_s=budget_s)
        faulthandler.dump_traceback(all_threads=True)
    sys.stdout.flush()  # os._exit skips the interpreter's own flushing
    sys.stderr.flush()
    os._exit(SHUTDOWN_OVERRUN_EXIT_CODE)


def _describe_task(task: asyncio.Task[Any]) -> str:
    """A task's name and the chain of coroutines it waits in, outermost first."""
    chain = []
    awaited: Any = task.get_coro()
    while awaited is not None and getattr(awaited, "cr_frame", None) is not None:
        chain.append(f"{awaited.__qualname__}:{awaited.cr_frame.f_lineno}")
        awaited = awaited.cr_await
    return f"{task.get_name()}: {' > '.join(chain)}"


async def run_service(name: str, main: ServiceMain, settings: Settings) -> None:
    configure(name, settings.log_level)
    settings.require_infrastructure()
    lower_priority(settings.bulk_nice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_on, sig, stop, settings.shutdown_budget_s)

    # Started while the database restarts: wait for it rather than exit.
    await db.migrate_when_ready(settings.database_url, stop)
    pool = await db.create_pool_when_ready(
        settings.database_url, stop, max_size=settings.db_pool_size
    )
    await wait_for_broker(settings, BrokerEpoch(pool), stop)
    producer = EventProducer(settings)
    await producer.start()

    async def readiness() -> dict[str, bool]:
        broker_ok = True
        try:
            await asyncio.wait_for(ensure_topics(settings, BrokerEpoch(pool)), 3)
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
    freeze_startup_objects()
    try:
        await main(ServiceContext(name, settings, pool, producer, stop))
    finally:
        # Graceful shutdown: the service has handed back or finished its work; close all.
        if ops is not None:
            await ops.cleanup()
        await producer.stop()
        await pool.close()
        log.info("service stopped")
