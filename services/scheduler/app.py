"""Scheduler wiring: schedules from `campaign.scheduled`, a clock that claims due campaigns,
and the emitter that publishes `batch.ready` for every batch not yet accounted for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from libs.common.events import (
    BatchReady,
    CampaignControl,
    CampaignScheduled,
    CampaignStatus,
    DeliveryResult,
    RecipientOutcome,
    Topic,
    encode_batch_ready,
)
from libs.common.kafka import Consumed, EventConsumer, ensure_topics
from libs.common.logging import bound_contextvars, get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import Settings, get_settings
from libs.mail.config import DispatcherSettings, get_dispatcher_settings
from services.scheduler.compaction import compact_periodically
from services.scheduler.metrics import (
    AB_WINNERS,
    BATCHES_EMITTED,
    BATCHES_SET_ASIDE,
    CAMPAIGNS_CLAIMED,
    SCHEDULES_UNKNOWN,
)
from services.scheduler.planner import PlanSummary, ScheduleRequest
from services.scheduler.repository import (
    EmitWindow,
    PendingBatch,
    ReemitPolicy,
    ScheduleRepository,
)

log = get_logger(__name__)

EMIT_WINDOW = 50  # batches per emit transaction
# No forced re-emission: only first emissions, resumed campaigns and stalled batches.
NO_CUTOFF = datetime(1970, 1, 1, tzinfo=UTC)
# What a producer or broker answers for a record over the topic's max.message.bytes.
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)
TOPIC_CHECK_SECONDS = 5.0
AB_CANCELLED = "campaign cancelled before its A/B test had a winner"

Clock = Callable[[], datetime]


def real_clock() -> datetime:
    return datetime.now(UTC)


class BatchEmitter:
    """Publishes the batches the plan says are due. The one path for first emission,
    re-emission after a timeout, and re-emission after the broker lost its topics.

    A batch whose `batch.ready` the broker (or the client) refuses as too large is set
    aside with the reason, and its recipients are reported `failed` with it through
    `delivery.result`, so that the campaign still ends and its counts reconcile; the other
    batches of the window, and every other campaign, go on (issue 11, item 8).
    """

    def __init__(
        self,
        ctx: ServiceContext,
        repo: ScheduleRepository,
        policy: ReemitPolicy | None = None,
        clock: Clock = real_clock,
    ) -> None:
        self.ctx = ctx
        self.repo = repo
        # When zoned batches are due and send windows open (tests drive it).
        self.clock = clock
        self.policy = policy or reemit_policy(ctx.settings, get_dispatcher_settings())
        self._plans: dict[object, PlanSummary] = {}

    async def emit_due(self, emitted_before: datetime = NO_CUTOFF) -> int:
        """Emit what is due: new batches, batches emitted before `emitted_before` (now,
        after a broker loss), and batches the re-emission policy finds stalled."""
        total = 0
        while not self.ctx.stop.is_set():
            window_of = self.repo.batches_to_emit(
                emitted_before, EMIT_WINDOW, self.policy, now=self.clock()
            )
            async with window_of as window:
                if not window.batches:
                    return total
                await self._emit(window)
            total += len(window.batches)
            unsent = sum(b.cancelled_unsent for b in window.batches)
            BATCHES_EMITTED.inc(len(window.batches) - len(window.set_aside) - unsent)
        return total

    async def _emit(self, window: EmitWindow) -> None:
        ready = [
            (b, await self._encoded_batch(b))
            for b in window.batches
            if not b.set_aside_reason and not b.cancelled_unsent
        ]
        errors = await self.ctx.producer.send_each(
            Topic.BATCH_READY, [(b.batch_id, event) for b, event in ready]
        )
        for (batch, event), error in zip(ready, errors, strict=True):
            if error is None:
                continue
            if not isinstance(error, TOO_LARGE):
                raise error  # the broker is away: the whole window is tried again later
            reason = (
                f"batch.ready of {len(event)} bytes refused: over the topic's "
                f"max.message.bytes ({self.ctx.settings.kafka_max_message_bytes})"
            )
            with bound_contextvars(campaign_id=str(batch.campaign_id), batch_id=batch.batch_id):
                log.error("batch set aside: it cannot be published", reason=reason)
            BATCHES_SET_ASIDE.inc()
            window.set_aside[batch.batch_id] = reason
        reports = [
            (b, window.set_aside.get(b.batch_id) or b.set_aside_reason) for b in window.batches
        ]
        failed = [await self._failed_result(b, reason) for b, reason in reports if reason]
        failed += [await self._cancelled_result(b) for b in window.batches if b.cancelled_unsent]
        await self.ctx.producer.send_many(
            Topic.DELIVERY_RESULT, [(str(r.campaign_id), r) for r in failed]
        )

    async def _plan_of(self, campaign_id: UUID) -> PlanSummary:
        plan = self._plans.get(campaign_id)
        if plan is None:
            plan = self._plans[campaign_id] = await self.repo.plan_of(campaign_id)
        return plan

    async def _batch_fields(self, batch: PendingBatch) -> dict[str, Any]:
        """What `batch.ready` and `delivery.result` both say of a batch and its plan."""
        plan = await self._plan_of(batch.campaign_id)
        return {
            "batch_id": batch.batch_id,
            "campaign_id": batch.campaign_id,
            "batch_no": batch.batch_no,
            "batches_total": plan.batches_total,
            "audience_total": plan.audience_total,
            "suppressed_total": plan.suppressed_total,
            "provider": plan.provider,
            "variant": batch.variant,
        }

    async def _failed_result(self, batch: PendingBatch, reason: str) -> DeliveryResult:
        """The result of a batch that was set aside: every recipient failed, with the reason
        (the tracker folds it like any batch's, once)."""
        now = datetime.now(UTC)
        return DeliveryResult(
            **await self._batch_fields(batch),
            outcomes=[
                RecipientOutcome(recipient_id=rid, email=email, status="failed", error=reason)
                for rid, email, _ in batch.recipients
            ],
            started_at=now,
            finished_at=now,
        )

    async def _cancelled_result(self, batch: PendingBatch) -> DeliveryResult:
        """The result of an A/B campaign's remainder cancelled before its winner: nobody in
        it was sent (those suppressed since planning are reported so), and no dispatcher
        gets the batch, so no stale status can send it the campaign's base content."""
        now = datetime.now(UTC)
        suppressed = set(batch.suppressed_ids)
        return DeliveryResult(
            **await self._batch_fields(batch),
            outcomes=[
                RecipientOutcome(
                    recipient_id=rid,
                    email=email,
                    status="suppressed" if rid in suppressed else "cancelled",
                    error=None if rid in suppressed else AB_CANCELLED,
                )
                for rid, email, _ in batch.recipients
            ],
            started_at=now,
            finished_at=now,
        )

    async def _encoded_batch(self, batch: PendingBatch) -> bytes:
        """The batch's `batch.ready`, encoded: the header is a validated model, the
        recipients the JSON array PostgreSQL built from the plan (`encode_batch_ready`)."""
        plan = await self._plan_of(batch.campaign_id)
        header = BatchReady(
            **await self._batch_fields(batch),
            # A variant's content, the winner's for an A/B test's remainder, else the plan's.
            content_id=batch.content_id or plan.content_id,
            recipients=[],
            emitted=batch.emitted,
            suppressed_ids=batch.suppressed_ids,
        )
        return encode_batch_ready(header, batch.recipients_json)


def reemit_policy(settings: Settings, rates: DispatcherSettings) -> ReemitPolicy:
    """The scheduler reads the dispatchers' rate limits from the same environment."""
    return ReemitPolicy(
        base_s=settings.reemit_after_seconds,
        rates={
            "sendgrid": rates.sendgrid_rate_per_sec,
            "smtp": rates.smtp_rate_per_sec,
            "sink": rates.sink_rate_per_sec,
        },
    )


async def _consume_schedules(ctx: ServiceContext, repo: ScheduleRepository) -> None:
    consumer: EventConsumer[CampaignScheduled] = EventConsumer(
        ctx.settings, Topic.CAMPAIGN_SCHEDULED, "scheduler", ctx.producer, epoch=ctx.epoch
    )

    async def handle(events: list[Consumed[CampaignScheduled]]) -> None:
        for item in events:
            e = item.event
            with bound_contextvars(campaign_id=str(e.campaign_id)):
                request = ScheduleRequest(
                    e.campaign_id, e.send_at, e.timezone, e.revision,
                    local_time=e.local_time, local_send_at=e.local_send_at,
                    send_window=e.send_window.model_dump() if e.send_window else None,
                )  # fmt: skip
                if await repo.record_schedule(request):
                    log.info("schedule recorded", send_at=e.send_at.isoformat(), rev=e.revision)
                else:
                    SCHEDULES_UNKNOWN.inc()
                    log.warning("schedule for an unknown campaign ignored")

    await consumer.start()
    try:
        await consumer.run(handle, ctx.stop)
    finally:
        await consumer.stop()


async def _consume_control(ctx: ServiceContext, repo: ScheduleRepository) -> None:
    consumer: EventConsumer[CampaignControl] = EventConsumer(
        ctx.settings, Topic.CAMPAIGN_CONTROL, "scheduler-control", ctx.producer, epoch=ctx.epoch
    )

    async def handle(events: list[Consumed[CampaignControl]]) -> None:
        for item in events:
            if item.event.action == "pause" and item.event.origin != "admin":
                await _apply_requested_pause(ctx, repo, item.event)
            if item.event.action in ("unschedule", "cancel"):
                await repo.drop_schedule(item.event.campaign_id, item.event.revision)
            if item.event.action in ("resume", "cancel"):
                # Dispatchers handed back a paused campaign's batches: send them again now
                # rather than after `reemit_after_seconds`.
                due = await repo.reemit_unaccounted_now(item.event.campaign_id)
                log.info("unaccounted batches due again", action=item.event.action, batches=due)

    await consumer.start()
    try:
        await consumer.run(handle, ctx.stop)
    finally:
        await consumer.stop()


async def _apply_requested_pause(
    ctx: ServiceContext, repo: ScheduleRepository, event: CampaignControl
) -> None:
    """A pause asked for by a service (an admin's pause is applied by the API itself)."""
    reason = event.reason or f"paused by {event.origin}"
    with bound_contextvars(campaign_id=str(event.campaign_id)):
        async with repo.pausing(event.campaign_id, event.origin, reason) as changed:
            if changed:
                status = CampaignStatus(
                    campaign_id=event.campaign_id, status="paused", reason=reason,
                    at=datetime.now(UTC),
                )  # fmt: skip
                await ctx.producer.send(Topic.CAMPAIGN_STATUS, str(event.campaign_id), status)
        log.warning("campaign paused", origin=event.origin, reason=reason, changed=changed)


async def _clock(ctx: ServiceContext, repo: ScheduleRepository, emitter: BatchEmitter) -> None:
    settings = ctx.settings
    next_topic_check = 0.0
    known_epoch: int | None = None
    loop = asyncio.get_running_loop()
    while not ctx.stop.is_set():
        try:
            for campaign_id in await repo.due_campaigns(now=emitter.clock()):
                with bound_contextvars(campaign_id=str(campaign_id)):
                    plan = await repo.claim_and_plan(
                        campaign_id,
                        settings.batch_size,
                        settings.kafka_max_message_bytes,
                        now=emitter.clock(),
                    )
                    if plan is not None:
                        CAMPAIGNS_CLAIMED.inc()
                        log.info(
                            "campaign started",
                            audience=plan.audience_total,
                            suppressed=plan.suppressed_total,
                            batches=plan.batches_total,
                            invalid_timezones=plan.invalid_timezones,
                        )
            for decision in await repo.decide_winners(emitter.clock()):
                AB_WINNERS.inc()
                with bound_contextvars(campaign_id=str(decision.campaign_id)):
                    log.info("a/b winner chosen", winner=decision.winner, reason=decision.reason)
            cutoff = NO_CUTOFF
            if loop.time() >= next_topic_check:
                next_topic_check = loop.time() + TOPIC_CHECK_SECONDS
                await ensure_topics(settings, ctx.epoch)
                epoch = await ctx.epoch.read()
                if known_epoch is not None and epoch != known_epoch:
                    # The broker lost its topics (a restart of a memory-only broker, say),
                    # whoever noticed first: every batch not yet accounted for travels again.
                    log.warning("broker epoch changed; re-emitting unaccounted batches")
                    cutoff = datetime.now(UTC)
                known_epoch = epoch
            emitted = await emitter.emit_due(cutoff)
            if emitted:
                log.info("batches emitted", count=emitted)
        except Exception:
            log.exception("scheduler tick failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), settings.scheduler_tick_seconds)


async def main(ctx: ServiceContext, clock: Clock = real_clock) -> None:
    """`clock`: when campaigns and zoned batches are due (tests drive it)."""
    repo = ScheduleRepository(ctx.pool)
    emitter = BatchEmitter(ctx, repo, clock=clock)
    await asyncio.gather(
        _consume_schedules(ctx, repo),
        _consume_control(ctx, repo),
        _clock(ctx, repo, emitter),
        compact_periodically(ctx.pool, ctx.stop),
    )


def run() -> None:
    asyncio.run(run_service("scheduler", main, get_settings()))
