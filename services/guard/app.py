"""Reputation guard wiring: count `delivery.result` and `delivery.event` into hopping
windows, and ask for a campaign's pause on `campaign.control` (origin `guard`) when one of
its rates crosses its threshold. The scheduler applies the pause (as for a provider's).

The windows (services/guard/windows.py) and the rules (services/guard/rules.py) are pure;
this module feeds them from the topics, from PostgreSQL at start, and from the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from libs.common import db
from libs.common.events import CampaignControl, DeliveryEvent, DeliveryResult, Topic
from libs.common.kafka import Consumed
from libs.common.logging import bound_contextvars, get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import get_settings
from libs.mail.throttles import domain_group
from services.guard import metrics
from services.guard.repository import GuardRepository
from services.guard.rules import CampaignState, Thresholds, breach, held_off, pause_reason
from services.guard.windows import (
    RATES,
    Counts,
    HoppingWindows,
    Key,
    event_counts,
    outcome_counts,
)

log = get_logger(__name__)

# A campaign's status and thresholds are read again after this long (an admin's resume
# shows within it; a pause the guard asked for drops the campaign's entry at once).
STATE_TTL_S = 2.0
# After asking for a pause, the guard asks again only after this long (the scheduler may
# not have applied it yet; asking twice is harmless, asking on every event is noise).
REASK_S = 10.0

Clock = Callable[[], float]


class Guard:
    def __init__(
        self, ctx: ServiceContext, repo: GuardRepository, clock: Clock = time.time
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.repo = repo
        self.clock = clock
        self.windows = HoppingWindows(settings.guard_window_seconds, settings.guard_hop_seconds)
        self.defaults = Thresholds.from_settings(settings)
        self.hold_off_s = settings.guard_hold_off_seconds
        self._states: dict[UUID, tuple[float, CampaignState | None]] = {}
        self._asked: dict[UUID, float] = {}
        self._held: dict[UUID, float] = {}  # when a held-off pause was last counted
        self._reading = False

    # ----- counting -----

    def count_result(self, result: DeliveryResult, at: float, now: float) -> bool:
        per_key: dict[Key, Counts] = {}
        for outcome in result.outcomes:
            key = (result.campaign_id, domain_group(outcome.email))
            per_key.setdefault(key, Counts()).add(outcome_counts(outcome.status, outcome.error))
        return self.windows.add(f"r:{result.batch_id}", at, now, per_key)

    def count_event(self, event: DeliveryEvent, at: float, now: float) -> bool:
        if event.campaign_id is None:
            return False  # matched by Message-ID later, in the tracker: not attributable here
        counts = event_counts(event.event, event.detail)
        if counts.is_empty():
            return False
        key = (event.campaign_id, domain_group(event.email))
        return self.windows.add(f"e:{event.event_id}", at, now, {key: counts})

    async def on_results(self, items: list[Consumed[DeliveryResult]]) -> None:
        now = self.clock()
        if not self._reading:
            self._reading = True
            log.info("reading delivery.result", partition=items[0].partition)
        # Every campaign named is looked at, counted now or before: a handler retried after
        # a failed evaluation (database away) finds its records counted already.
        touched = set()
        for item in items:
            if self.count_result(item.event, _learned_at(item, now), now):
                metrics.RECORDS_COUNTED.labels(Topic.DELIVERY_RESULT.value).inc()
            touched.add(item.event.campaign_id)
        await self.evaluate(touched, now)

    async def on_events(self, items: list[Consumed[DeliveryEvent]]) -> None:
        now = self.clock()
        touched = set()
        for item in items:
            if self.count_event(item.event, _learned_at(item, now), now):
                metrics.RECORDS_COUNTED.labels(Topic.DELIVERY_EVENT.value).inc()
            if item.event.campaign_id is not None:
                touched.add(item.event.campaign_id)
        await self.evaluate(touched, now)

    async def rebuild(self) -> int:
        """Count what the tracker folded within the window back in: the broker may have
        lost it (Tansu keeps nothing), and this process surely did. Records the topics
        deliver again later are counted once (by batch and event id)."""
        now = self.clock()
        since = now - self.windows.size_s
        counted = 0
        by_batch: dict[str, tuple[UUID, float, dict[Key, Counts]]] = {}
        for o in await self.repo.recent_outcomes(since):
            _, _, per_key = by_batch.setdefault(o.batch_id, (o.campaign_id, o.at, {}))
            per_key.setdefault((o.campaign_id, domain_group(o.email)), Counts()).add(
                outcome_counts(o.status, o.error)
            )
        for batch_id, (_, at, per_key) in by_batch.items():
            counted += self.windows.add(f"r:{batch_id}", at, now, per_key)
        for e in await self.repo.recent_events(since):
            key = (e.campaign_id, domain_group(e.email))
            counts = event_counts(e.event, e.detail)
            counted += self.windows.add(f"e:{e.event_id}", e.at, now, {key: counts})
        metrics.REBUILT_RECORDS.set(counted)
        log.info("windows rebuilt from PostgreSQL", records=counted, since_s=self.windows.size_s)
        return counted

    # ----- deciding -----

    async def _state(self, campaign_id: UUID, now: float) -> CampaignState | None:
        cached = self._states.get(campaign_id)
        if cached is not None and now - cached[0] < STATE_TTL_S:
            return cached[1]
        state = await self.repo.campaign_state(campaign_id)
        self._states[campaign_id] = (now, state)
        return state

    async def evaluate(self, campaign_ids: Iterable[UUID], now: float) -> list[UUID]:
        """Ask for the pause of every campaign among these that crossed a threshold; returns
        those asked for."""
        asked = []
        for campaign_id in campaign_ids:
            counts = self.windows.campaign(campaign_id, now)
            if counts.sends == 0 and counts.delivered == 0:
                continue  # no rate has a denominator: nothing to read the campaign for
            state = await self._state(campaign_id, now)
            if state is None:
                continue
            if state.status != "in_progress":
                # Paused (by us or anyone), finished: once resumed it is looked at afresh.
                self._asked.pop(campaign_id, None)
                continue
            if now - self._asked.get(campaign_id, -math.inf) < REASK_S:
                continue  # asked already; the scheduler has not applied it yet
            limits = self.defaults
            reason = pause_reason(counts, state, limits, now, self.hold_off_s)
            if reason is None:
                if held_off(state, now, self.hold_off_s):
                    recently = now - self._held.get(campaign_id, -math.inf) < REASK_S
                    if not recently and breach(counts, limits.overridden(state.guard)):
                        metrics.HELD_OFF.inc()  # counted once per REASK_S and campaign
                        self._held[campaign_id] = now
                continue
            await self._ask_pause(campaign_id, reason, counts, now)
            asked.append(campaign_id)
        return asked

    async def _ask_pause(self, campaign_id: UUID, reason: str, counts: Counts, now: float) -> None:
        with bound_contextvars(campaign_id=str(campaign_id)):
            event = CampaignControl(
                campaign_id=campaign_id, action="pause", origin="guard", reason=reason
            )
            await self.ctx.producer.send(Topic.CAMPAIGN_CONTROL, str(campaign_id), event)
            self._asked[campaign_id] = now
            self._states.pop(campaign_id, None)
            metrics.PAUSES.labels(reason.split(" ", 1)[0]).inc()
            groups = {
                group: {k: round(v, 4) for k, v in c.rates().items() if v is not None}
                for group, c in self.windows.by_group(now, campaign_id).items()
                if c.sends or c.delivered
            }
            log.warning(
                "campaign pause asked for",
                reason=reason,
                sends=counts.sends,
                delivered=counts.delivered,
                by_group=groups,
            )

    # ----- the clock -----

    def refresh_gauges(self, now: float) -> None:
        for group, counts in self.windows.by_group(now).items():
            rates = counts.rates()
            for rate in RATES:
                value = rates[rate]
                metrics.RATE.labels(group, rate).set(math.nan if value is None else value)
        metrics.CAMPAIGNS_WATCHED.set(len(self.windows.campaigns(now)))

    async def tick(self) -> None:
        """Once a hop: forget what left the window, and look at every campaign again (a
        window that hops can cross a threshold without a new record)."""
        now = self.clock()
        self.windows.expire(now)
        for asked in (self._asked, self._held):
            for campaign_id in [c for c, t in asked.items() if now - t > REASK_S]:
                del asked[campaign_id]
        for campaign_id in [c for c, (t, _) in self._states.items() if now - t > STATE_TTL_S]:
            del self._states[campaign_id]
        self.refresh_gauges(now)
        await self.evaluate(self.windows.campaigns(now), now)
        metrics.LAST_TICK.set(time.time())

    async def run_clock(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.windows.hop_s)
            if stop.is_set():
                return
            try:
                await self.tick()
            except Exception as exc:  # the database or broker blinked: next hop
                log.warning("guard tick failed; next hop", error=repr(exc))


def _learned_at(item: Consumed[Any], now: float) -> float:
    """When the record reached the broker (replays keep their time), else now."""
    return item.timestamp_ms / 1000 if item.timestamp_ms is not None else now


async def _rebuild_when_ready(guard: Guard, stop: asyncio.Event) -> None:
    delay = 0.5
    while not stop.is_set():
        try:
            await guard.rebuild()
            return
        except Exception as exc:
            if not db.is_unavailable(exc):
                raise
            log.warning("database unavailable; rebuild retried", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)


async def main(ctx: ServiceContext, group_id: str = "guard", clock: Clock = time.time) -> None:
    """Run until `ctx.stop` is set. One instance (its windows are its memory): a second one
    in the same group would see only part of each campaign's records."""
    guard = Guard(ctx, GuardRepository(ctx.pool), clock)
    metrics.start_series()
    await _rebuild_when_ready(guard, ctx.stop)
    await asyncio.gather(
        ctx.consume(Topic.DELIVERY_RESULT, group_id, guard.on_results),
        ctx.consume(Topic.DELIVERY_EVENT, f"{group_id}.events", guard.on_events),
        guard.run_clock(ctx.stop),
    )


def run() -> None:
    asyncio.run(run_service("guard", main, get_settings()))
