"""Automations wiring: `contact.event` (joined, custom events, goals, leaving) and
`import.completed` start runs; a loop on the service's clock advances due runs in
PostgreSQL and publishes their `message.requested` from the outbox; after a broker loss
the messages the tracker has not accounted for are published again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from libs.automations.definition import (
    AnniversaryTrigger,
    EventTrigger,
    JoinedTrigger,
    parse_month_day,
)
from libs.common.events import ContactEvent, ImportProgress, Topic
from libs.common.kafka import Consumed, ensure_topics
from libs.common.logging import bound_contextvars, get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import Settings, get_settings
from services.automations import metrics
from services.automations.store import AutomationStore, anniversary_due

log = get_logger(__name__)

Clock = Callable[[], datetime]

OUTBOX_BATCH = 500
# Imports completed this recently are swept for an `import.completed` the broker lost.
IMPORT_SWEEP_WINDOW = timedelta(days=2)
IMPORT_SWEEP_EVERY_S = 30.0
# Anniversaries are looked for once per hour of the service's clock.
ANNIVERSARY_SCAN_EVERY = timedelta(hours=1)
GAUGES_EVERY_S = 10.0
TOPIC_CHECK_S = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def clock_of(settings: Settings) -> Clock:
    """The real clock, or (tests) the instant written in MAILFLEET_AUTOMATIONS_CLOCK_FILE."""
    if not settings.automations_clock_file:
        return utc_now
    path = Path(settings.automations_clock_file)

    def from_file() -> datetime:
        at = datetime.fromisoformat(path.read_text().strip())
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    return from_file


class Automations:
    def __init__(self, ctx: ServiceContext, store: AutomationStore, clock: Clock) -> None:
        self.ctx = ctx
        self.store = store
        self.clock = clock
        self.last_scan: datetime | None = None

    # --- Kafka side ---------------------------------------------------------------------

    async def on_contact(self, items: list[Consumed[ContactEvent]]) -> None:
        for item in items:
            event = item.event
            if event.email is None:  # an unsubscribe from a link: the send step checks
                continue
            with bound_contextvars(contact_event_id=event.event_id, action=event.action):
                if event.action == "joined" and event.list_id is not None:
                    await self._joined(event)
                elif event.action == "custom" and event.name is not None:
                    await self._custom(event)
                elif event.action == "left" and event.list_id is not None:
                    stopped = await self.store.stop_for_list(
                        event.email, event.list_id, "left", self.clock()
                    )
                    if stopped:
                        metrics.STOPPED.labels("left").inc(stopped)

    async def _joined(self, event: ContactEvent) -> None:
        assert event.email is not None and event.list_id is not None
        for automation in await self.store.joined_automations(event.list_id):
            trigger = automation.definition.trigger
            assert isinstance(trigger, JoinedTrigger)
            if trigger.sources is not None and event.source not in trigger.sources:
                continue
            if event.occurred_at < automation.created_at:
                continue  # joined before the automation existed (a replay of old events)
            if await self.store.enrol(
                automation, event.email, f"joined:{event.source}", self.clock(),
                list_id=event.list_id, data=event.data,
            ):  # fmt: skip
                metrics.ENROLLED.labels("joined").inc()
                log.info("automation run started", automation_id=str(automation.id))

    async def _custom(self, event: ContactEvent) -> None:
        assert event.email is not None and event.name is not None
        now = self.clock()
        reached = await self.store.reach_goal(event.email, event.name, now)
        if reached:
            metrics.STOPPED.labels("goal").inc(reached)
            log.info("automation goal reached", runs=reached, name=event.name)
        for automation in await self.store.event_automations(event.name):
            if event.occurred_at < automation.created_at:
                continue
            trigger = automation.definition.trigger
            assert isinstance(trigger, EventTrigger)
            if await self.store.enrol(
                automation, event.email, f"event:{event.name}", now,
                list_id=trigger.list_id, data=event.data,
            ):  # fmt: skip
                metrics.ENROLLED.labels("event").inc()
                log.info("automation run started", automation_id=str(automation.id))

    async def on_import(self, items: list[Consumed[ImportProgress]]) -> None:
        for item in items:
            event = item.event
            if event.status == "completed":
                await self.enrol_import(event.import_id, event.list_id)

    async def enrol_import(self, import_id: object, list_id: object) -> None:
        from uuid import UUID

        assert isinstance(import_id, UUID) and isinstance(list_id, UUID)
        for automation in await self.store.joined_automations(list_id):
            trigger = automation.definition.trigger
            assert isinstance(trigger, JoinedTrigger)
            if trigger.sources is not None and "import" not in trigger.sources:
                continue
            count = await self.store.enrol_import(automation, import_id, list_id, self.clock())
            if count:
                metrics.ENROLLED.labels("import").inc(count)
                log.info(
                    "automation runs started from an import",
                    automation_id=str(automation.id), import_id=str(import_id), runs=count,
                )  # fmt: skip

    # --- the clock side -------------------------------------------------------------------

    async def tick(self) -> int:
        """Advance every due run, then publish the outbox. Returns messages published."""
        now = self.clock()
        while True:
            advanced, queued, stopped = await self.store.run_due(now)
            metrics.STEPS.inc(advanced)
            metrics.QUEUED.inc(queued)
            if stopped:
                metrics.STOPPED.labels("unsubscribed").inc(stopped)
            if advanced < self.store.batch:
                break
        await self.scan_anniversaries(now)
        return await self.publish()

    async def publish(self) -> int:
        sent = 0
        while True:
            batch = await self.store.unpublished(OUTBOX_BATCH)
            if not batch:
                return sent
            errors = await self.ctx.producer.send_each(
                Topic.MESSAGE_REQUESTED, [(o.key, o.event) for o in batch]
            )
            ok = [o.message_id for o, error in zip(batch, errors, strict=True) if error is None]
            if ok:
                await self.store.published(ok, utc_now())
                metrics.PUBLISHED.inc(len(ok))
                sent += len(ok)
            if len(ok) < len(batch):
                log.warning("message.requested not published; retried next tick",
                            failed=len(batch) - len(ok))  # fmt: skip
                return sent

    async def scan_anniversaries(self, now: datetime) -> int:
        if self.last_scan is not None and now - self.last_scan < ANNIVERSARY_SCAN_EVERY:
            return 0
        self.last_scan = now
        started = 0
        for automation in await self.store.anniversary_automations():
            trigger = automation.definition.trigger
            assert isinstance(trigger, AnniversaryTrigger)
            for row in await self.store.anniversary_candidates(automation, trigger):
                month_day = parse_month_day(row["day"])
                if month_day is None:
                    continue
                due = anniversary_due(month_day, row["timezone"], trigger, now)
                if due is None:
                    continue
                year, at = due
                if await self.store.enrol(
                    automation, row["email"], f"anniversary:{trigger.field}", now,
                    list_id=trigger.list_id, enrol_key=f"{row['email']}:{year}", due_at=at,
                ):  # fmt: skip
                    started += 1
        if started:
            metrics.ENROLLED.labels("anniversary").inc(started)
            log.info("anniversary runs started", runs=started)
        return started


async def _clock_loop(ctx: ServiceContext, service: Automations) -> None:
    loop = asyncio.get_running_loop()
    known_epoch: int | None = None
    next_sweep = 0.0
    next_gauges = 0.0
    next_topic_check = 0.0
    while not ctx.stop.is_set():
        try:
            if loop.time() >= next_topic_check:
                # A broker that lost its topics gets them back (and the epoch is bumped)
                # even while nothing else here touches Kafka.
                next_topic_check = loop.time() + TOPIC_CHECK_S
                await ensure_topics(ctx.settings, ctx.epoch)
            epoch = await ctx.epoch.read()
            if known_epoch is not None and epoch != known_epoch:
                again = await service.store.republish_unaccounted()
                metrics.REPUBLISHED.inc(again)
                log.warning("broker epoch changed; publishing unaccounted messages again",
                            messages=again)  # fmt: skip
            known_epoch = epoch
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + IMPORT_SWEEP_EVERY_S
                for import_id, list_id in await service.store.unswept_imports(IMPORT_SWEEP_WINDOW):
                    await service.enrol_import(import_id, list_id)
            await service.tick()
            if loop.time() >= next_gauges:
                next_gauges = loop.time() + GAUGES_EVERY_S
                gauges = await service.store.gauges(service.clock())
                metrics.ACTIVE.set(gauges["active"])
                metrics.DUE.set(gauges["due"])
                metrics.OUTBOX.set(gauges["outbox"])
        except Exception as exc:  # the database or broker blinked: next tick
            log.warning("automations tick failed; retrying", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), ctx.settings.automations_tick_s)


async def main(ctx: ServiceContext, clock: Clock | None = None) -> None:
    """Run until `ctx.stop` is set. Several instances may run: runs are claimed with SKIP
    LOCKED, enrolment is unique per (automation, person), the outbox is idempotent."""
    store = AutomationStore(ctx.pool, ctx.settings.automations_batch)
    service = Automations(ctx, store, clock or clock_of(ctx.settings))
    await asyncio.gather(
        ctx.consume(Topic.CONTACT_EVENT, "automations.contacts", service.on_contact),
        ctx.consume(Topic.IMPORT_COMPLETED, "automations.imports", service.on_import),
        _clock_loop(ctx, service),
    )


def run() -> None:
    asyncio.run(run_service("automations", main, get_settings()))
