"""Dispatcher wiring: `batch.ready` in, provider out, `delivery.result` out."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from functools import partial
from typing import Any

import aiohttp

from libs.common.clock import Clock
from libs.common.events import (
    BatchReady,
    CampaignControl,
    DeliveryResult,
    MessageRequested,
    Topic,
    encode,
)
from libs.common.kafka import Consumed, EventConsumer
from libs.common.logging import get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import Settings, get_settings
from libs.common.suppressions import ErasureKey, erasure_key, suppressed_among
from libs.common.templating import render_limits
from libs.mail.circuit_breaker import BreakerState
from libs.mail.config import DispatcherSettings, get_dispatcher_settings
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.base import Provider
from libs.mail.providers.registry import build_providers
from libs.mail.render_pool import RenderPool
from services.dispatcher.campaign_status import CampaignStatuses
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.control_feed import follow_control_events
from services.dispatcher.dispatch import BatchDispatcher, HandedBack
from services.dispatcher.durable_ledger import DurableLedgerWrites
from services.dispatcher.ledger_store import PostgresLedger
from services.dispatcher.message_store import (
    PostgresKeys,
    PostgresSuppressionReasons,
    PostgresTemplates,
)
from services.dispatcher.messages import KeyReused, MessageLane
from services.dispatcher.metrics import BREAKER_OPEN, MESSAGES, RATE_LIMIT, start_failover_series
from services.dispatcher.provider_status import publish_provider_status
from services.dispatcher.provider_status_store import PostgresStatusStore
from services.dispatcher.throttle_store import PostgresThrottles

log = get_logger(__name__)

_SHARE_REFRESH_S = 1.0
# A provider outage hands back every batch in flight; one pause request per campaign is
# enough, repeated at most this often while batches keep coming back.
_PAUSE_REQUEST_EVERY_S = 5.0
# Throttle windows older than two days are dropped this often.
_PRUNE_THROTTLES_EVERY_S = 600.0


class PauseRequests:
    """Asks for a campaign to be paused when its provider refused the account: publishes
    `campaign.control` pause (origin `provider`, with the reason). The scheduler applies it
    to `campaigns.status`; a dispatcher owns only its ledger."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._asked: dict[uuid.UUID, float] = {}

    async def ask_for(self, settled: list[DeliveryResult | BaseException]) -> None:
        now = asyncio.get_running_loop().time()
        for outcome in settled:
            if not (isinstance(outcome, HandedBack) and outcome.reason == "outage"):
                continue
            campaign_id = outcome.campaign_id
            if (
                campaign_id is None
                or now - self._asked.get(campaign_id, -1e9) < _PAUSE_REQUEST_EVERY_S
            ):
                continue
            self._asked[campaign_id] = now
            event = CampaignControl(
                campaign_id=campaign_id, action="pause", origin="provider",
                reason=f"provider refused the account: {outcome.detail}"[:1000],
            )  # fmt: skip
            await self._ctx.producer.send(Topic.CAMPAIGN_CONTROL, str(campaign_id), event)
            log.error("campaign pause requested: provider outage",
                      campaign_id=str(campaign_id), reason=outcome.detail)  # fmt: skip


def header_policy(settings: Settings, extra: DispatcherSettings) -> HeaderPolicy:
    base = settings.public_base_url()
    if not settings.secret_key:
        # Every message must carry a working one-click unsubscribe link (RFC 8058).
        raise SystemExit("MAILFLEET_SECRET_KEY is not set: it signs the unsubscribe links")
    return HeaderPolicy(
        base, settings.secret_key, extra.unsubscribe_mailto, settings.unsubscribe_footer
    )


async def _track_partition_share(
    consumer: EventConsumer[BatchReady],
    providers: dict[str, Provider],
    total_partitions: int,
    stop: asyncio.Event,
) -> None:
    """Keep each rate limiter at this instance's share of the partitions (re-read often, so
    a rebalance is reflected within a second without a rebalance listener)."""
    while not stop.is_set():
        assigned = len(consumer.consumer.assignment())
        for name, provider in providers.items():
            provider.limiter.set_share(assigned, total_partitions)
            RATE_LIMIT.labels(name).set(provider.limiter.rate)
            BREAKER_OPEN.labels(name).set(provider.breaker.state is BreakerState.OPEN)
        try:
            await asyncio.wait_for(stop.wait(), _SHARE_REFRESH_S)
        except TimeoutError:
            pass


async def main(
    ctx: ServiceContext,
    *,
    group_id: str | None = None,
    extra: DispatcherSettings | None = None,
    instance_id: str | None = None,
    clock: Clock | None = None,
) -> None:
    """`clock` (tests): what throttle and rate-cap windows are aligned by and waited on;
    default the database's clock for windows and the system's for waits."""
    extra = extra or get_dispatcher_settings()
    group_id = group_id or extra.consumer_group
    owner = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if extra.lanes == "messages":
        await run_message_lane(ctx, group_id, extra, owner)
        return
    connector = aiohttp.TCPConnector(limit=ctx.settings.provider_concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        providers = build_providers(ctx.settings, extra, session)
        start_failover_series(list(providers))
        statuses = CampaignStatuses(ctx.pool, refresh_s=extra.campaign_status_refresh_s)
        throttles = PostgresThrottles(
            ctx.pool,
            extra.throttle_policy(),
            extra.warmup(),
            minute_s=extra.throttle_minute_s,
            clock=clock,
        )
        dispatcher = BatchDispatcher(
            content=ContentRepository(ctx.pool),
            ledger=DurableLedgerWrites(PostgresLedger(ctx.pool)),
            providers=providers,
            headers=header_policy(ctx.settings, extra),
            owner=owner,
            mode=ctx.settings.delivery_mode,
            lease_s=extra.ledger_lease_s,
            gate=statuses,
            fallback=extra.fallback_provider or None,
            stopping=ctx.stop.is_set,
            renderer=RenderPool(extra.render_threads, render_limits(ctx.settings)),
            suppressed=partial(suppressed_among, ctx.pool),
            max_sending=extra.max_batches_sending,
            throttles=throttles,
            throttle_max_wait_s=extra.throttle_max_wait_s,
            throttle_clock=clock,
        )

        in_flight = asyncio.Semaphore(extra.max_batches_in_flight)
        pauses = PauseRequests(ctx)

        async def dispatch_bounded(event: BatchReady) -> DeliveryResult:
            async with in_flight:
                result = await dispatcher.dispatch(event)
            # Published as soon as the ledger says `done`, not with the rest of the poll:
            # under a rate limit a poll's batches end minutes apart, and the scheduler takes
            # a result still missing well after its ledger row and a later result for lost
            # (it re-emits it; a replay, but not a needless one). Failing here fails the
            # batch: its offset is not committed, and the next read replays the result.
            await ctx.producer.send(Topic.DELIVERY_RESULT, str(result.campaign_id), result)
            return result

        async def handle(items: list[Consumed[BatchReady]]) -> None:
            settled = await asyncio.gather(
                *(dispatch_bounded(i.event) for i in items), return_exceptions=True
            )
            # A batch that waited the longest a handling may for a domain throttle goes back
            # on `batch.ready` (same key, so the same partition): its offset is then committed
            # and the consumer polls again within its interval. Its parked ledger row makes
            # whoever reads it next send the rest, once.
            requeue = [
                (i.event.batch_id, i.event)
                for i, outcome in zip(items, settled, strict=True)
                if isinstance(outcome, HandedBack) and outcome.reason == "throttled"
            ]
            if requeue:
                await ctx.producer.send_many(Topic.BATCH_READY, requeue)
            # Before the commit: a lost pause request is asked again when the batch is read
            # again.
            await pauses.ask_for(settled)
            raise_unless_committable(settled)

        consumer: EventConsumer[BatchReady] = EventConsumer(
            ctx.settings,
            Topic.BATCH_READY,
            group_id,
            ctx.producer,
            partitions_in_parallel=True,
            epoch=ctx.epoch,
            # Fetch no more than can be in flight: a slow provider's backlog of fetched
            # batches must never outlast the consumer's poll interval.
            max_records=extra.max_batches_in_flight,
        )
        await consumer.start()
        background = [
            asyncio.create_task(
                _track_partition_share(
                    consumer, providers, ctx.settings.batch_ready_partitions, ctx.stop
                )
            ),
            asyncio.create_task(statuses.run(ctx.stop)),
            asyncio.create_task(
                publish_provider_status(
                    PostgresStatusStore(ctx.pool),
                    owner,
                    providers,
                    ctx.stop,
                    extra.provider_status_every_s,
                )
            ),
            asyncio.create_task(follow_control_events(ctx.settings, statuses, ctx.stop)),
            asyncio.create_task(_prune_throttles(throttles, ctx.stop)),
        ]
        log.info("dispatcher consuming", group_id=group_id, owner=owner)
        try:
            # The message lane runs beside the batch consumer; either failing ends both.
            lanes = [consumer.run(handle, ctx.stop)]
            if extra.lanes == "all":
                lanes.append(run_message_lane(ctx, group_id, extra, owner))
            await asyncio.gather(*lanes)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await consumer.stop()
            for provider in providers.values():
                await provider.close()


async def run_message_lane(
    ctx: ServiceContext, group_id: str, extra: DispatcherSettings, owner: str
) -> None:
    """Transactional messages (issue 18 item 1): `message.requested` in its own consumer
    group, with its own concurrency, providers (own rate limiter, breaker and connections)
    and render thread, so that no campaign backlog stands before a message."""
    settings = ctx.settings
    connector = aiohttp.TCPConnector(limit=settings.provider_concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        providers = build_providers(settings, extra, session)
        renderer = RenderPool(1, render_limits(settings))
        ledger = DurableLedgerWrites(PostgresLedger(ctx.pool))
        policy = header_policy(settings, extra)

        def make_dispatcher(**parts: Any) -> BatchDispatcher:
            # No campaign gate (a message cannot be paused) and no domain throttles.
            return BatchDispatcher(
                ledger=ledger, providers=providers, owner=owner, mode=settings.delivery_mode,
                lease_s=extra.ledger_lease_s, stopping=ctx.stop.is_set, renderer=renderer,
                max_sending=settings.message_concurrency, **parts,
            )  # fmt: skip

        lane = MessageLane(
            make_dispatcher=make_dispatcher,
            headers=policy,
            suppressions=PostgresSuppressionReasons(
                ctx.pool, ErasureKey.of(erasure_key(settings.secret_key))
            ),
            templates=PostgresTemplates(ctx.pool),
            accept=PostgresKeys(ctx.pool),
            essential=settings.essential(),
            default_provider=settings.default_provider,
        )
        slots = asyncio.Semaphore(settings.message_concurrency)

        async def send_one(event: MessageRequested) -> DeliveryResult:
            async with slots:
                return await lane.send(event)

        async def handle(items: list[Consumed[MessageRequested]]) -> None:
            settled = await asyncio.gather(
                *(send_one(i.event) for i in items), return_exceptions=True
            )
            results = [r for r in settled if isinstance(r, DeliveryResult)]
            await ctx.producer.send_many(
                Topic.DELIVERY_RESULT, [(str(r.message_id), r) for r in results]
            )
            for result in results:
                MESSAGES.labels(result.outcomes[0].status).inc()
            for item, outcome in zip(items, settled, strict=True):
                if isinstance(outcome, KeyReused):
                    MESSAGES.labels("refused").inc()
                    log.warning("message refused", reason=str(outcome))
                    await ctx.producer.send_raw(
                        Topic.MESSAGE_REQUESTED.dlq, item.event.to.encode(), encode(item.event),
                        [("reason", str(outcome).encode()),
                         ("source-topic", Topic.MESSAGE_REQUESTED.value.encode())],
                    )  # fmt: skip
            for outcome in settled:
                if isinstance(outcome, BaseException) and not isinstance(outcome, KeyReused):
                    raise outcome  # read again (the ledger replays what was sent)

        consumer: EventConsumer[MessageRequested] = EventConsumer(
            settings,
            Topic.MESSAGE_REQUESTED,
            f"{group_id}.messages",
            ctx.producer,
            partitions_in_parallel=True,
            epoch=ctx.epoch,
            max_records=settings.message_concurrency,
            fetch_max_wait_ms=settings.message_fetch_max_wait_ms,
        )
        await consumer.start()
        log.info("dispatcher consuming messages", group_id=f"{group_id}.messages")
        try:
            await consumer.run(handle, ctx.stop)
        finally:
            await consumer.stop()
            renderer.close()
            for provider in providers.values():
                await provider.close()


async def _prune_throttles(throttles: PostgresThrottles, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await throttles.prune()
        except Exception as exc:  # the database may be away: next time
            log.warning("throttle windows not pruned", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), _PRUNE_THROTTLES_EVERY_S)
        except TimeoutError:
            pass


def raise_unless_committable(settled: list[DeliveryResult | BaseException]) -> None:
    """Batches handed back for a pause, or for a provider outage that pauses the campaign,
    may have their offsets committed (the scheduler re-emits them on resume), and so may a
    batch put back on `batch.ready` after a long domain-throttle wait; a batch handed back
    because this instance is stopping, or one that failed, must be read again: raising keeps
    the partition's offset uncommitted."""
    for outcome in settled:
        if isinstance(outcome, HandedBack) and outcome.reason in ("paused", "outage", "throttled"):
            continue
        if isinstance(outcome, BaseException):
            raise outcome


def run() -> None:
    asyncio.run(run_service("dispatcher", main, get_settings()))
