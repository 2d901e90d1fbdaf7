"""Tracker wiring: fold `delivery.result`, `delivery.event` and `contact.event` into
PostgreSQL, publish each campaign's final `campaign.status` once its fold has committed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg

from libs.common.events import (
    CampaignStatus,
    ContactEvent,
    DeliveryEvent,
    DeliveryResult,
    Event,
    Topic,
    encode,
)
from libs.common.kafka import Consumed
from libs.common.logging import bound_contextvars, get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import get_settings
from libs.stats import engagement
from services.tracker import metrics, retention
from services.tracker.contacts import as_delivery_event
from services.tracker.store import EventsFold, FinishedCampaign, ResultsFold, TrackerStore

log = get_logger(__name__)

RESULTS_PER_FOLD = 50  # up to 500 recipients each: one transaction, one COPY
# Dispatchers publish each batch's result as soon as its ledger row is done, so results
# arrive one or two at a time: gathered for this long, a fold takes tens of them (a 1M
# campaign was folded in 1,229 transactions of 1.7 results each without it).
RESULTS_GATHER_MS = 250
EVENTS_PER_FOLD = 1000
OUTBOX_EVERY_SECONDS = 5.0
# A finished campaign's sends reach the engagement summary within this (filters read them
# from the delivery log meanwhile, so they are exact either way).
SUMMARY_EVERY_SECONDS = 30.0
# A final status this old and still unpublished belongs to no fold in flight.
OUTBOX_AFTER_SECONDS = 10.0

# What PostgreSQL (or asyncpg encoding) refuses in a valid event: such an event is
# dead-lettered alone rather than retried forever with its whole partition.
REFUSED_DATA: tuple[type[Exception], ...] = (
    asyncpg.DataError,  # refused by PostgreSQL, e.g. a value out of its column's range
    OverflowError,  # refused by asyncpg's encoder (COPY), e.g. an id beyond bigint
    UnicodeError,  # text that cannot be UTF-8, e.g. a lone surrogate from JSON
)

E = TypeVar("E", bound=Event)


class Tracker:
    def __init__(self, ctx: ServiceContext, store: TrackerStore) -> None:
        self.ctx = ctx
        self.store = store

    async def fold_results(self, items: list[Consumed[DeliveryResult]]) -> None:
        started = time.perf_counter()
        fold = ResultsFold()
        await _fold_isolating_bad_events(
            [i.event for i in items],
            lambda batch: self._fold_results(batch, fold),
            lambda event, reason: self._dead_letter(Topic.DELIVERY_RESULT, event, reason),
        )
        metrics.FOLD_SECONDS.labels(Topic.DELIVERY_RESULT.value).observe(
            time.perf_counter() - started
        )
        self._record(fold)
        for finished in fold.finished:
            await self._publish_outcome(finished)

    async def _fold_results(self, batch: list[DeliveryResult], into: ResultsFold) -> None:
        into.merge(await self.store.fold_results(batch, self.ctx.settings.failure_threshold))

    def _record(self, fold: ResultsFold) -> None:
        now = datetime.now(UTC)
        for result in fold.folded:
            finished = result.finished_at
            if finished.tzinfo is None:
                finished = finished.replace(tzinfo=UTC)
            metrics.RESULT_LAG_SECONDS.observe(max(0.0, (now - finished).total_seconds()))
        metrics.BATCHES_FOLDED.inc(len(fold.folded))
        metrics.DUPLICATE_BATCHES.inc(fold.duplicates)
        metrics.CONFLICTING_RECIPIENTS.inc(fold.conflicts)
        for reason, count in fold.suppressed.items():
            metrics.SUPPRESSIONS_ADDED.labels(reason).inc(count)
        for status, count in fold.recipients.items():
            metrics.RECIPIENTS_FOLDED.labels(status).inc(count)
        if fold.duplicates:
            log.info("duplicate batches ignored", count=fold.duplicates)
        if fold.conflicts:
            log.warning("outcomes for recipients already logged were ignored", count=fold.conflicts)

    async def fold_events(self, items: list[Consumed[DeliveryEvent]]) -> None:
        events = [i.event for i in items]
        await self._fold_delivery_events(Topic.DELIVERY_EVENT, events, {})

    async def fold_contacts(self, items: list[Consumed[ContactEvent]]) -> None:
        """Unsubscribes from links (published by the edge), folded like provider events."""
        # Other actions (subscriptions, custom events) are for the services that own them.
        unsubscribes = [i.event for i in items if i.event.action == "unsubscribe"]
        originals: dict[str, Event] = {e.event_id: e for e in unsubscribes}
        events = [as_delivery_event(e) for e in unsubscribes]
        if not events:
            return
        await self._fold_delivery_events(Topic.CONTACT_EVENT, events, originals)

    async def _fold_delivery_events(
        self, topic: Topic, events: list[DeliveryEvent], originals: dict[str, Event]
    ) -> None:
        """`originals`: what was read from `topic`, by event id, when the events folded are
        translations of it (a dead letter keeps the record as it was published)."""
        started = time.perf_counter()
        fold = EventsFold()

        async def fold_batch(batch: list[DeliveryEvent]) -> None:
            fold.merge(await self.store.fold_events(batch))

        async def dead_letter(event: DeliveryEvent, reason: str) -> None:
            await self._dead_letter(topic, originals.get(event.event_id, event), reason)

        await _fold_isolating_bad_events(events, fold_batch, dead_letter)
        metrics.FOLD_SECONDS.labels(topic.value).observe(time.perf_counter() - started)
        for kind, count in fold.folded.items():
            metrics.DELIVERY_EVENTS.labels(kind).inc(count)
        metrics.DUPLICATE_EVENTS.inc(fold.duplicates)
        metrics.UNMATCHED_EVENTS.inc(fold.unmatched)
        for reason, count in fold.suppressed.items():
            metrics.SUPPRESSIONS_ADDED.labels(reason).inc(count)
        if fold.unmatched:
            log.info("provider events for unknown messages", count=fold.unmatched)
        if fold.resolved:
            log.info("unknown recipients resolved as sent by provider events", count=fold.resolved)

    async def _dead_letter(self, topic: Topic, event: Event, reason: str) -> None:
        metrics.REJECTED_EVENTS.labels(topic.value).inc()
        key = str(getattr(event, "campaign_id", "") or "").encode() or None
        log.error("event refused by the database; dead-lettered", topic=topic.value, reason=reason)
        await self.ctx.producer.send_raw(
            topic.dlq,
            key,
            encode(event),
            [("reason", reason.encode()), ("source-topic", topic.value.encode())],
        )

    async def _publish_outcome(self, finished: FinishedCampaign) -> None:
        """Publish the final status; on failure the outbox loop publishes it later."""
        with bound_contextvars(campaign_id=str(finished.campaign_id)):
            event = CampaignStatus(
                campaign_id=finished.campaign_id,
                status=finished.outcome,
                counts=finished.counts,
                at=finished.finished_at,
            )
            try:
                await self.ctx.producer.send(
                    Topic.CAMPAIGN_STATUS, str(finished.campaign_id), event
                )
                await self.store.mark_published(finished.campaign_id)
            except Exception as exc:
                log.warning("campaign.status not published; will retry", error=repr(exc))
                return
            metrics.CAMPAIGNS_FINISHED.labels(finished.outcome).inc()
            log.info("campaign finished", outcome=finished.outcome, **finished.counts)

    async def publish_outbox(self) -> None:
        """Publish final statuses whose publisher died after its fold committed."""
        while not self.ctx.stop.is_set():
            try:
                for finished in await self.store.unpublished_outcomes(OUTBOX_AFTER_SECONDS):
                    await self._publish_outcome(finished)
            except Exception:
                log.exception("outbox check failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), OUTBOX_EVERY_SECONDS)

    async def summarise_engagement(self) -> None:
        """Add the sends of finished campaigns to the per-address engagement summary that
        segment filters read (libs/stats/engagement.py)."""
        while not self.ctx.stop.is_set():
            try:
                done = await engagement.summarise_finished_campaigns(self.ctx.pool, limit=10)
                if done:
                    log.info("engagement summarised", campaigns=done)
            except Exception:
                log.exception("engagement summary failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), SUMMARY_EVERY_SECONDS)


async def _fold_isolating_bad_events(
    events: Sequence[E],
    fold: Callable[[list[E]], Awaitable[None]],
    dead_letter: Callable[[E, str], Awaitable[None]],
) -> None:
    """Fold all events in one transaction; if the database refuses the data, fold them one
    by one so that only the offending event is dead-lettered (each fold is idempotent)."""
    try:
        await fold(list(events))
        return
    except REFUSED_DATA as exc:
        log.warning("fold refused; isolating the bad event", error=repr(exc))
    for event in events:
        try:
            await fold([event])
        except REFUSED_DATA as exc:
            await dead_letter(event, f"refused by the database: {exc!r}"[:500])


async def main(ctx: ServiceContext, group_id: str = "tracker") -> None:
    """Run until `ctx.stop` is set. Any number of instances may run, in any groups: the
    folds are gated by batch and event ids, so a second reader never double-counts."""
    tracker = Tracker(ctx, TrackerStore(ctx.pool, ctx.settings.soft_bounce_limit))
    metrics.start_series()
    await asyncio.gather(
        ctx.consume(
            Topic.DELIVERY_RESULT,
            group_id,
            tracker.fold_results,
            max_records=RESULTS_PER_FOLD,
            gather_ms=RESULTS_GATHER_MS,
        ),
        ctx.consume(
            Topic.DELIVERY_EVENT,
            f"{group_id}.events",
            tracker.fold_events,
            max_records=EVENTS_PER_FOLD,
        ),
        ctx.consume(
            Topic.CONTACT_EVENT,
            f"{group_id}.contacts",
            tracker.fold_contacts,
            max_records=EVENTS_PER_FOLD,
        ),  # fmt: skip
        tracker.publish_outbox(),
        tracker.summarise_engagement(),
        retention.sweep_periodically(
            ctx.pool, timedelta(days=ctx.settings.delivery_retention_days), ctx.stop
        ),
    )


def run() -> None:
    asyncio.run(run_service("tracker", main, get_settings()))
