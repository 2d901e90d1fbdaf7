"""Scheduler wiring: schedules from `campaign.scheduled`, a clock that claims due campaigns,
and the emitter that publishes `batch.ready` for every batch not yet accounted for."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from libs.common.events import BatchReady, BatchRecipient, CampaignControl, CampaignScheduled, Topic
from libs.common.kafka import Consumed, EventConsumer, ensure_topics
from libs.common.logging import bound_contextvars, get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import get_settings
from services.scheduler.metrics import BATCHES_EMITTED, CAMPAIGNS_CLAIMED, SCHEDULES_UNKNOWN
from services.scheduler.planner import PlanSummary, ScheduleRequest
from services.scheduler.repository import PendingBatch, ScheduleRepository

log = get_logger(__name__)

EMIT_WINDOW = 50  # batches per emit transaction
TOPIC_CHECK_SECONDS = 5.0


class BatchEmitter:
    """Publishes the batches the plan says are due. The one path for first emission,
    re-emission after a timeout, and re-emission after the broker lost its topics."""

    def __init__(self, ctx: ServiceContext, repo: ScheduleRepository) -> None:
        self.ctx = ctx
        self.repo = repo
        self._plans: dict[object, PlanSummary] = {}

    async def emit_due(self, emitted_before: datetime) -> int:
        total = 0
        while not self.ctx.stop.is_set():
            async with self.repo.batches_to_emit(emitted_before, EMIT_WINDOW) as batches:
                if not batches:
                    return total
                events = [(b.batch_id, await self._event_for(b)) for b in batches]
                await self.ctx.producer.send_many(Topic.BATCH_READY, events)
            total += len(batches)
            BATCHES_EMITTED.inc(len(batches))
        return total

    async def _event_for(self, batch: PendingBatch) -> BatchReady:
        plan = self._plans.get(batch.campaign_id)
        if plan is None:
            plan = self._plans[batch.campaign_id] = await self.repo.plan_of(batch.campaign_id)
        return BatchReady(
            batch_id=batch.batch_id,
            campaign_id=batch.campaign_id,
            batch_no=batch.batch_no,
            batches_total=plan.batches_total,
            audience_total=plan.audience_total,
            suppressed_total=plan.suppressed_total,
            content_id=plan.content_id,
            provider=plan.provider,
            recipients=[
                BatchRecipient(recipient_id=rid, email=email, fields=fields)
                for rid, email, fields in batch.recipients
            ],
            emitted=batch.emitted,
            suppressed_ids=batch.suppressed_ids,
        )


async def _consume_schedules(ctx: ServiceContext, repo: ScheduleRepository) -> None:
    consumer: EventConsumer[CampaignScheduled] = EventConsumer(
        ctx.settings, Topic.CAMPAIGN_SCHEDULED, "scheduler", ctx.producer, epoch=ctx.epoch
    )

    async def handle(events: list[Consumed[CampaignScheduled]]) -> None:
        for item in events:
            e = item.event
            with bound_contextvars(campaign_id=str(e.campaign_id)):
                request = ScheduleRequest(e.campaign_id, e.send_at, e.timezone, e.revision)
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


async def _clock(ctx: ServiceContext, repo: ScheduleRepository, emitter: BatchEmitter) -> None:
    settings = ctx.settings
    next_topic_check = 0.0
    known_epoch: int | None = None
    loop = asyncio.get_running_loop()
    while not ctx.stop.is_set():
        try:
            for campaign_id in await repo.due_campaigns():
                with bound_contextvars(campaign_id=str(campaign_id)):
                    plan = await repo.claim_and_plan(campaign_id, settings.batch_size)
                    if plan is not None:
                        CAMPAIGNS_CLAIMED.inc()
                        log.info(
                            "campaign started",
                            audience=plan.audience_total,
                            suppressed=plan.suppressed_total,
                            batches=plan.batches_total,
                        )
            cutoff = datetime.now(UTC) - timedelta(seconds=settings.reemit_after_seconds)
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


async def main(ctx: ServiceContext) -> None:
    repo = ScheduleRepository(ctx.pool)
    emitter = BatchEmitter(ctx, repo)
    await asyncio.gather(
        _consume_schedules(ctx, repo),
        _consume_control(ctx, repo),
        _clock(ctx, repo, emitter),
    )


def run() -> None:
    asyncio.run(run_service("scheduler", main, get_settings()))
