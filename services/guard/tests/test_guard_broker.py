"""The guard through the real broker (Tansu over TCP) and PostgreSQL.

A bounce storm (10 % hard bounces, posted as signed SendGrid webhooks to the edge) pauses
its campaign within 10 s with the reason, applied by the scheduler's own code; a clean
campaign sending beside it goes on; an admin's resume (through the API) holds the guard
off, and the guard pauses again once the hold-off is over. A guard that starts afresh
rebuilds its windows from the tracker's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import first_events, make_settings
from libs.common.events import CampaignControl, DeliveryResult, RecipientOutcome, Topic
from libs.common.kafka import Consumed, EventConsumer, EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.api.app import create_app as create_api
from services.api.tests.support import running
from services.edge.tests.support import WEBHOOK_PATH, public_key_b64, running_edge, signed
from services.guard import metrics
from services.guard.app import Guard, main
from services.guard.repository import GuardRepository
from services.scheduler.app import _apply_requested_pause
from services.scheduler.repository import ScheduleRepository

DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "example.org")
OURS: set[uuid.UUID] = set()  # campaigns this module made
REASON = "hard_bounce_rate 0.10 > 0.05"


@pytest.fixture(scope="module")
def guard_settings(database_url: str, kafka_bootstrap: str, settings: Settings) -> Settings:
    return make_settings(
        database_url,
        kafka_bootstrap,
        guard_hop_seconds=0.5,
        guard_hold_off_seconds=30,  # shorter than the window: the storm is still in it after
        bootstrap_api_key=f"mf_test_admin_{uuid.uuid4().hex}",
    )


@pytest.fixture(scope="module")
async def producer(guard_settings: Settings) -> AsyncIterator[EventProducer]:
    p = EventProducer(guard_settings)
    await p.start()
    yield p
    await p.stop()


class ShiftedClock:
    """The wall clock, moved forward on demand (the hold-off without waiting it out)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


@contextlib.asynccontextmanager
async def running_guard(
    settings: Settings, pool: asyncpg.Pool, producer: EventProducer, clock: Callable[[], float]
) -> AsyncIterator[None]:
    ctx = ServiceContext("guard", settings, pool, producer, asyncio.Event())
    task = asyncio.create_task(main(ctx, f"guard-test-{uuid.uuid4().hex[:8]}", clock))
    try:
        yield
    finally:
        ctx.stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


@contextlib.asynccontextmanager
async def applying_pauses(
    settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> AsyncIterator[None]:
    """The scheduler's side of `campaign.control`: it applies a service's pause (its own
    code, in a group of this test's own)."""
    ctx = ServiceContext("scheduler", settings, pool, producer, asyncio.Event())
    repo = ScheduleRepository(pool)
    consumer: EventConsumer[CampaignControl] = EventConsumer(
        settings, Topic.CAMPAIGN_CONTROL, f"pauses-{uuid.uuid4().hex[:8]}", producer
    )

    async def handle(events: list[Consumed[CampaignControl]]) -> None:
        for item in events:
            if item.event.campaign_id not in OURS:
                continue  # other tests' campaigns in the shared database are left alone
            if item.event.action == "pause" and item.event.origin != "admin":
                await _apply_requested_pause(ctx, repo, item.event)

    await consumer.start()
    task = asyncio.create_task(consumer.run(handle, ctx.stop))
    try:
        yield
    finally:
        ctx.stop.set()
        await asyncio.wait_for(task, 30)
        await consumer.stop()


async def new_campaign(pool: asyncpg.Pool, name: str) -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('guard test') RETURNING id")
    campaign_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " started_at) VALUES ($1, 's', '<p>x</p>', 'news@example.com', $2, 'sink',"
        " 'in_progress', now()) RETURNING id",
        name,
        list_id,
    )
    OURS.add(campaign_id)
    return campaign_id


def address(n: int) -> str:
    return f"person{n}@{DOMAINS[n % len(DOMAINS)]}"


def results(campaign_id: uuid.UUID, sends: int, batch: int = 500) -> list[DeliveryResult]:
    now = datetime.now(UTC)
    batches = range(0, sends, batch)
    return [
        DeliveryResult(
            batch_id=f"{campaign_id}:{n}",
            campaign_id=campaign_id,
            batch_no=n,
            batches_total=len(batches),
            audience_total=sends,
            suppressed_total=0,
            provider="sendgrid",
            outcomes=[
                RecipientOutcome(recipient_id=r, email=address(r), status="sent")
                for r in range(start, min(start + batch, sends))
            ],
            started_at=now,
            finished_at=now,
        )
        for n, start in enumerate(batches)
    ]


def bounces(campaign_id: uuid.UUID, recipients: range) -> list[dict[str, object]]:
    """SendGrid's hard bounces, with the custom args the dispatcher sets."""
    return [
        {
            "email": address(r),
            "timestamp": int(time.time()),
            "event": "bounce",
            "type": "bounce",
            "status": "5.1.1",
            "sg_event_id": f"sg-{uuid.uuid4().hex}",
            "campaign_id": str(campaign_id),
            "recipient_id": r,
        }
        for r in recipients
    ]


async def status_of(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT status, pause_reason, paused_by FROM campaigns WHERE id = $1", campaign_id
    )
    assert row is not None
    return row


async def wait_until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds it took; fails after `timeout`."""
    started = time.monotonic()
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def test_bounce_storm_pauses_its_campaign_only_and_resume_holds_the_guard_off(
    guard_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    stormy = await new_campaign(pool, "bounce storm")
    clean = await new_campaign(pool, "clean")
    key = ec.generate_private_key(ec.SECP256R1())
    clock = ShiftedClock()
    held_off_before = metrics.HELD_OFF._value.get()
    pauses = metrics.PAUSES.labels("hard_bounce_rate")
    pauses_before = pauses._value.get()
    counted = metrics.RECORDS_COUNTED.labels(Topic.DELIVERY_EVENT.value)
    counted_before = counted._value.get()
    async with (
        applying_pauses(guard_settings, pool, producer),
        running_guard(guard_settings, pool, producer, clock),
        running_edge(guard_settings, sendgrid_webhook_verification_key=public_key_b64(key)) as edge,
        running(create_api(guard_settings)) as api,
    ):
        admin = {"Authorization": f"Bearer {guard_settings.bootstrap_api_key}"}
        for campaign_id in (stormy, clean):
            await producer.send_many(
                Topic.DELIVERY_RESULT, [(str(campaign_id), r) for r in results(campaign_id, 1000)]
            )

        async def post(events: list[dict[str, object]]) -> None:
            body = json.dumps(events).encode()
            answer = await edge.client.post(WEBHOOK_PATH, content=body, headers=signed(key, body))
            assert answer.status_code in (200, 202), answer.text

        started = time.monotonic()
        await post(bounces(stormy, range(0, 100)))  # 100 of 1,000: 10 %
        await post(bounces(clean, range(0, 10)))  # 10 of 1,000: 1 %

        async def stormy_paused() -> bool:
            return (await status_of(pool, stormy))["status"] == "paused"

        await wait_until(stormy_paused, 10, "the stormy campaign paused")
        took = time.monotonic() - started
        assert took < 10
        row = await status_of(pool, stormy)
        assert row["pause_reason"] == REASON and row["paused_by"] == "guard"
        shown = (await api.get(f"/api/v1/campaigns/{stormy}", headers=admin)).json()
        assert shown["pause_reason"] == REASON and shown["paused_by"] == "guard"
        print(f"paused {took:.2f} s after the bounces were posted")
        # The clean campaign goes on: every bounce was counted, and the guard looked at
        # every campaign of its window once more since; it asked for one pause only.
        await wait_until(
            lambda: counted._value.get() >= counted_before + 110, 10, "all bounces counted"
        )
        after_count = time.time()
        await wait_until(lambda: metrics.LAST_TICK._value.get() > after_count, 10, "a tick")
        assert pauses._value.get() == pauses_before + 1
        assert (await status_of(pool, clean))["status"] == "in_progress"

        # An admin resumes: the guard holds off although the window still holds the storm.
        answer = await api.post(f"/api/v1/campaigns/{stormy}/resume", headers=admin)
        assert answer.status_code == 200 and answer.json()["status"] == "in_progress"
        await post(bounces(stormy, range(100, 150)))
        await wait_until(
            lambda: metrics.HELD_OFF._value.get() > held_off_before, 10, "a held-off pause"
        )
        assert (await status_of(pool, stormy))["status"] == "in_progress"
        # Once the hold-off is over, the storm in the window pauses it again.
        clock.shift = guard_settings.guard_hold_off_seconds + 1
        await wait_until(stormy_paused, 10, "paused again after the hold-off")
        assert (await status_of(pool, stormy))["pause_reason"] == ("hard_bounce_rate 0.15 > 0.05")
        assert (await status_of(pool, clean))["status"] == "in_progress"


async def test_a_fresh_guard_rebuilds_its_windows_from_postgresql(
    guard_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    """What the tracker folded before the guard (re)started counts: 1,000 deliveries and 60
    hard bounces in its tables, nothing on the topics."""
    campaign_id = await new_campaign(pool, "folded before the restart")
    for n in range(2):
        await pool.execute(
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, batch_no, sent)"
            " VALUES ($1, $2, 500, $3, 500)",
            f"{campaign_id}:{n}",
            campaign_id,
            n,
        )
    await pool.executemany(
        "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id)"
        " VALUES ($1, $2, $3, 'sent', $4)",
        [(campaign_id, r, address(r), f"{campaign_id}:{r // 500}") for r in range(1000)],
    )
    await pool.executemany(
        "INSERT INTO delivery_events (event_id, campaign_id, recipient_id, email, event,"
        " provider, occurred_at, matched, detail) VALUES ($1, $2, $3, $4, 'bounce', 'sendgrid',"
        " now(), true, $5)",
        [(f"rebuild-{campaign_id}-{r}", campaign_id, r, address(r), {"type": "bounce"})
         for r in range(60)],
    )  # fmt: skip
    ctx = ServiceContext("guard", guard_settings, pool, producer, asyncio.Event())
    guard = Guard(ctx, GuardRepository(pool))
    assert await guard.rebuild() >= 62  # 2 batches and 60 events (and other tests' records)
    now = time.time()
    assert guard.windows.campaign(campaign_id, now).hard_bounces == 60
    assert guard.windows.by_group(now, campaign_id)["gmail"].sends == 250
    assert await guard.evaluate([campaign_id], now) == [campaign_id]
    found = await first_events(
        guard_settings.kafka_bootstrap_servers,
        Topic.CAMPAIGN_CONTROL,
        CampaignControl,
        lambda e: e.campaign_id == campaign_id,
    )
    assert [(e.action, e.origin, e.reason) for e in found] == [
        ("pause", "guard", "hard_bounce_rate 0.06 > 0.05")
    ]
    # Rebuilt again (a second start within the window), the same records count once.
    again = await guard.rebuild()
    assert again == 0
