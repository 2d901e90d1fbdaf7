"""Publishing tracking hits without making the reader wait for the broker.

A pixel must answer in milliseconds and a redirect must work while the broker is slow or
away, so a hit is handed to the producer in the background: the response never waits for
the broker's acknowledgement. A hit the broker refuses is logged and counted (lost: an
open is not worth a reader's wait); at most `MAX_PENDING` hits wait at once, past that
new ones are dropped and counted the same way. On shutdown the pending ones are awaited
(bounded) before the producer stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from libs.common.events import DeliveryEvent, Topic
from libs.common.kafka import EventProducer
from libs.common.logging import get_logger
from services.edge.metrics import TRACKING_HITS

log = get_logger(__name__)

MAX_PENDING = 10_000


class HitPublisher:
    def __init__(self, producer: Callable[[], EventProducer]) -> None:
        self._producer = producer
        self._pending: set[asyncio.Task[None]] = set()

    def publish(self, event: DeliveryEvent) -> None:
        if len(self._pending) >= MAX_PENDING:
            TRACKING_HITS.labels(event.event, "dropped").inc()
            log.warning("tracking hit dropped: too many waiting for the broker")
            return
        task = asyncio.get_running_loop().create_task(self._send(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, event: DeliveryEvent) -> None:
        try:
            await self._producer().send(Topic.DELIVERY_EVENT, str(event.campaign_id), event)
        except Exception as exc:  # the broker's or the producer's: the hit is lost, said so
            TRACKING_HITS.labels(event.event, "lost").inc()
            log.warning(
                "tracking hit not published",
                campaign_id=str(event.campaign_id),
                kind=event.event,
                error=repr(exc),
            )
        else:
            TRACKING_HITS.labels(event.event, "published").inc()

    async def drain(self, timeout: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
