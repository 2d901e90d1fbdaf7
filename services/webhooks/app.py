"""Webhooks wiring: consume `campaign.status`, `delivery.event` and `contact.event` into
the PostgreSQL outbox (before the offsets are committed), and deliver the outbox over
HTTPS, signed, in order per campaign and endpoint, retrying with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.common.events import CampaignStatus, ContactEvent, DeliveryEvent, Topic
from libs.common.kafka import Consumed
from libs.common.logging import bound_contextvars, get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import Settings, get_settings
from libs.webhooks.backoff import Backoff
from libs.webhooks.secret_box import SecretUnreadable, open_sealed
from libs.webhooks.signing import sign
from services.webhooks import metrics
from services.webhooks.http import Attempt, WebhookClient
from services.webhooks.mapping import (
    Outgoing,
    from_campaign_status,
    from_contact_event,
    from_delivery_event,
)
from services.webhooks.store import Claimed, WebhookStore

log = get_logger(__name__)

Clock = Callable[[], datetime]

GAUGES_EVERY_SECONDS = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def backoff_of(settings: Settings) -> Backoff:
    return Backoff(
        base_s=settings.webhook_backoff_base_s,
        cap_s=settings.webhook_backoff_cap_s,
        give_up_after_s=settings.webhook_retry_window_s,
    )


class Outbox:
    """Kafka side: every consumed batch becomes outbox rows before its offsets commit."""

    def __init__(self, store: WebhookStore, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock

    async def _enqueue(self, outgoing: list[Outgoing]) -> None:
        written = await self.store.enqueue(outgoing, self.clock())
        kinds: dict[str, int] = {}
        for item in outgoing:
            kinds[item.event_type] = kinds.get(item.event_type, 0) + 1
        for kind, count in kinds.items():
            metrics.ENQUEUED.labels(kind).inc(count)
        if written:
            log.debug("webhook deliveries enqueued", events=len(outgoing), rows=written)

    async def on_status(self, items: list[Consumed[CampaignStatus]]) -> None:
        await self._enqueue([from_campaign_status(i.event) for i in items])

    async def on_delivery(self, items: list[Consumed[DeliveryEvent]]) -> None:
        await self._enqueue([o for i in items if (o := from_delivery_event(i.event))])

    async def on_contact(self, items: list[Consumed[ContactEvent]]) -> None:
        await self._enqueue([o for i in items if (o := from_contact_event(i.event))])


class Sender:
    """PostgreSQL side: claims due deliveries and posts them, at most `concurrency` at once."""

    def __init__(
        self,
        store: WebhookStore,
        client: WebhookClient,
        settings: Settings,
        clock: Clock = utc_now,
        rand: random.Random | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.clock = clock
        self.backoff = backoff_of(settings)
        self.rand = rand or random.Random()
        # Longer than one attempt can take (the client's total timeout), plus the write of
        # its outcome: a sender killed mid-attempt hands the delivery over after this.
        self.lease = timedelta(seconds=settings.webhook_timeout_s + 5)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep up to `webhook_concurrency` attempts in flight: claim as slots free up (a
        slow endpoint holds one slot, not a whole round), write the successes in one
        transaction per wake-up, and finish what is in flight when `stop` is set."""
        poll = self.settings.webhook_poll_s
        delay = poll
        in_flight: set[asyncio.Future[Any]] = set()
        succeeded: list[tuple[Claimed, int]] = []
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                succeeded = await self._record(succeeded)
                if stop.is_set():
                    break
                free = self.settings.webhook_concurrency - len(in_flight)
                if free > 0:
                    try:
                        now = self.clock()
                        for delivery in await self.store.claim(now, now + self.lease, free):
                            in_flight.add(asyncio.create_task(self._deliver(delivery)))
                        delay = poll
                    except Exception as exc:  # the database blinked: wait it out, never exit
                        log.warning("webhook claim failed; retrying", error=repr(exc))
                        delay = min(delay * 2, 10.0)
                done, _ = await asyncio.wait(
                    {*in_flight, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                succeeded += self._collect(done - {stopping}, in_flight)
        finally:
            if in_flight:
                done, _ = await asyncio.wait(in_flight)
                succeeded += self._collect(done, in_flight)
            await self._record(succeeded)
            stopping.cancel()

    def _collect(
        self, done: Iterable[asyncio.Future[Any]], in_flight: set[asyncio.Future[Any]]
    ) -> list[tuple[Claimed, int]]:
        found: list[tuple[Claimed, int]] = []
        for task in done:
            in_flight.discard(task)
            try:
                outcome = task.result()
            except Exception as exc:  # recording a failure met a database outage
                log.warning(
                    "webhook attempt not recorded; retried after its lease", error=repr(exc)
                )
                continue
            if outcome is not None:
                found.append(outcome)
        return found

    async def _record(self, succeeded: list[tuple[Claimed, int]]) -> list[tuple[Claimed, int]]:
        """Write successes; returns what is still to write (kept on a database error)."""
        if not succeeded:
            return succeeded
        try:
            await self.store.delivered(succeeded, self.clock())
        except Exception as exc:
            log.warning("webhook successes not recorded yet; retrying", error=repr(exc))
            return succeeded
        metrics.ATTEMPTS.labels("delivered").inc(len(succeeded))
        return []

    async def _deliver(self, delivery: Claimed) -> tuple[Claimed, int] | None:
        """Attempt one delivery: (it, status code) on success, for the caller to record;
        None after recording a failure."""
        with bound_contextvars(
            webhook_endpoint_id=str(delivery.endpoint_id),
            webhook_event_id=str(delivery.event_id),
            campaign_id=delivery.order_key,
            delivery_id=str(delivery.id),
        ):
            try:
                secret = open_sealed(self.settings.secret_key, delivery.secret_sealed)
            except SecretUnreadable as exc:
                await self._failed(delivery, Attempt(False, None, str(exc)))
                return None
            started = time.perf_counter()
            attempt = await self.client.post(
                delivery.url,
                delivery.payload,
                sign(secret, delivery.payload, int(self.clock().timestamp())),
                str(delivery.event_id),
                delivery.event_type,
            )
            metrics.ATTEMPT_SECONDS.observe(time.perf_counter() - started)
            if attempt.ok:
                log.debug("webhook delivered", attempts=delivery.attempts)
                return delivery, attempt.status_code or 200
            await self._failed(delivery, attempt)
            return None

    async def _failed(self, delivery: Claimed, attempt: Attempt) -> None:
        now = self.clock()
        next_at = self.backoff.next_attempt(
            delivery.created_at.timestamp(), now.timestamp(), delivery.attempts, self.rand
        )
        retry_at = datetime.fromtimestamp(next_at, UTC) if next_at is not None else None
        error = attempt.error or "failed"
        state = await self.store.failed(
            delivery,
            now,
            attempt.status_code,
            error,
            retry_at,
            self.settings.webhook_disable_after_failures,
        )
        refused = error.startswith("refused")
        metrics.ATTEMPTS.labels(
            "refused" if refused else ("retry" if retry_at is not None else "gave_up")
        ).inc()
        if retry_at is None:
            log.warning(
                "webhook delivery given up after the retry window",
                attempts=delivery.attempts,
                error=error,
            )
        else:
            log.info(
                "webhook delivery failed; will retry",
                attempts=delivery.attempts,
                status_code=attempt.status_code,
                error=error,
                retry_in_s=round((retry_at - now).total_seconds(), 3),
            )
        if state.just_disabled:
            metrics.ENDPOINTS_DISABLED.inc()
            log.error(
                "webhook endpoint disabled after failing repeatedly; an admin must re-enable it",
                failure_streak=state.failure_streak,
                last_error=error,
                alert="webhook_endpoint_disabled",
            )


async def maintain(store: WebhookStore, settings: Settings, now: datetime) -> None:
    """Expire what disabled endpoints kept past the retry window; prune the old log."""
    expired = await store.expire(now - timedelta(seconds=settings.webhook_retry_window_s))
    if expired:
        metrics.EXPIRED.inc(expired)
        log.warning("webhook deliveries expired on disabled endpoints", count=expired)
    pruned = await store.prune(now - timedelta(days=settings.webhook_log_retention_days))
    if pruned:
        log.info("old webhook delivery log entries deleted", count=pruned)
    metrics.PENDING.set((await store.backlog()).get("pending", 0))
    metrics.DISABLED_FAILING.set(await store.disabled_failing())


async def _maintain_loop(
    store: WebhookStore, settings: Settings, stop: asyncio.Event, clock: Clock = utc_now
) -> None:
    while not stop.is_set():
        try:
            await maintain(store, settings, clock())
        except Exception as exc:  # the database blinked: next round
            log.warning("webhook maintenance failed; retrying", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), GAUGES_EVERY_SECONDS)


async def main(ctx: ServiceContext, group_id: str = "webhooks") -> None:
    """Run until `ctx.stop` is set. Any number of instances may run: the outbox rows are
    unique per (endpoint, event) and claims are leased with SKIP LOCKED."""
    store = WebhookStore(ctx.pool)
    outbox = Outbox(store)
    client = WebhookClient(
        ctx.settings.webhook_target_policy(),
        ctx.settings.webhook_ca_file,
        ctx.settings.webhook_timeout_s,
    )
    await client.start()
    metrics.start_series()
    try:
        await asyncio.gather(
            ctx.consume(Topic.CAMPAIGN_STATUS, f"{group_id}.status", outbox.on_status),
            ctx.consume(Topic.DELIVERY_EVENT, f"{group_id}.events", outbox.on_delivery),
            ctx.consume(Topic.CONTACT_EVENT, f"{group_id}.contacts", outbox.on_contact),
            Sender(store, client, ctx.settings).run(ctx.stop),
            _maintain_loop(store, ctx.settings, ctx.stop),
        )
    finally:
        await client.close()


def run() -> None:
    asyncio.run(run_service("webhooks", main, get_settings()))
