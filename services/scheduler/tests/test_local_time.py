"""Local-time delivery and send windows (issue 17, items 2 and 3) against the real
PostgreSQL, driven by an injected clock: the plan per zone, and emission tick by tick."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from conftest import make_settings
from libs.common.events import BatchReady, CampaignScheduled, Topic
from libs.common.kafka import EventProducer
from libs.common.sendtime import earliest_instant, local_instant
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.scheduler.app import NO_CUTOFF, main
from services.scheduler.repository import ScheduleRepository

# New York changes to summer time that day (02:30 does not exist there).
DAY_NINE = datetime(2027, 3, 14, 9, 0)
TICK = timedelta(minutes=5)
ZONES = [
    "Pacific/Kiritimati",  # +14
    "Pacific/Auckland",  # +13 (summer)
    "Australia/Lord_Howe",  # +11 (summer; 30-minute DST)
    "Asia/Tokyo",
    "Asia/Kathmandu",  # +05:45
    "Asia/Kolkata",  # +05:30
    "Europe/Berlin",
    "UTC",
    "America/Sao_Paulo",
    "America/New_York",  # DST change day
    "America/Los_Angeles",
    "Pacific/Pago_Pago",  # -11
]
PER_ZONE = 7


async def seed(
    pool: asyncpg.Pool,
    zones: list[str | None],
    *,
    local_time: bool = True,
    wall: datetime = DAY_NINE,
    send_at: datetime | None = None,
    window: dict[str, object] | None = None,
    list_zone: str | None = None,
    campaign_zone: str = "Asia/Kolkata",
) -> uuid.UUID:
    """A scheduled campaign whose recipient i has `timezone` zones[i] (None: no field)."""
    list_id = await pool.fetchval(
        "INSERT INTO lists (name, default_timezone) VALUES ('lt', $1) RETURNING id", list_zone
    )
    tag = uuid.uuid4().hex[:8]
    await pool.copy_records_to_table(
        "recipients",
        records=[
            (list_id, f"u{i}-{tag}@example.com", {"timezone": z} if z is not None else {})
            for i, z in enumerate(zones)
        ],
        columns=["list_id", "email", "fields"],
    )
    instant = send_at or earliest_instant(wall)
    campaign_id: uuid.UUID = await pool.fetchval(
        """
        INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,
                               send_at, timezone, local_time, local_send_at, send_window)
        VALUES ('lt', 's', '<p>x</p>', 'f@example.com', $1, 'sink', 'scheduled',
                $2, $3, $4, $5, $6)
        RETURNING id
        """,
        list_id,
        instant,
        campaign_zone,
        local_time,
        wall if local_time else None,
        window,
    )
    await pool.execute(
        "INSERT INTO schedules (campaign_id, send_at, timezone, revision) VALUES ($1, $2, $3, 1)",
        campaign_id,
        instant,
        campaign_zone,
    )
    return campaign_id


@pytest.fixture
async def repo(pool: asyncpg.Pool) -> AsyncIterator[ScheduleRepository]:
    yield ScheduleRepository(pool)
    # Leave no batch waiting in the shared database for other tests' windows.
    await pool.execute(
        "UPDATE campaigns SET status = 'completed' WHERE name = 'lt' AND status <> 'completed'"
    )


async def emit_until(
    repo: ScheduleRepository,
    campaign_id: uuid.UUID,
    start: datetime,
    end: datetime,
    emitted: dict[str, datetime],
    paused: tuple[datetime, datetime] | None = None,
    tick: timedelta = TICK,
) -> None:
    """Tick the clock from `start` to `end`, as the scheduler's loop does, recording when
    each batch of the campaign is first emitted; `paused`: [from, to) the campaign is."""
    now = start
    while now <= end:
        if paused is not None:
            status = "paused" if paused[0] <= now < paused[1] else "in_progress"
            await repo.pool.execute(
                "UPDATE campaigns SET status = $2 WHERE id = $1", campaign_id, status
            )
        while True:
            async with repo.batches_to_emit(NO_CUTOFF, 50, None, now=now) as window:
                mine = [b for b in window.batches if b.campaign_id == campaign_id]
            for batch in mine:
                assert batch.batch_id not in emitted, "a batch emitted twice"
                emitted[batch.batch_id] = now
            if not window.batches:
                break
        now += tick


async def plan_rows(repo: ScheduleRepository, campaign_id: uuid.UUID) -> list[asyncpg.Record]:
    return await repo.pool.fetch(
        "SELECT batch_id, zone, due_at, recipient_ids FROM batch_plans WHERE campaign_id = $1"
        " ORDER BY batch_no",
        campaign_id,
    )


async def test_each_zone_is_planned_for_nine_local(repo: ScheduleRepository) -> None:
    zones: list[str | None] = [z for z in ZONES for _ in range(PER_ZONE)]
    # Fallbacks: no field, an unknown zone, blank; a zone in another case is known.
    zones += [None, "Mars/Olympus_Mons", "  ", "asia/KATHMANDU", "Europe/Nowhere"]
    campaign_id = await seed(repo.pool, zones, list_zone="Europe/Berlin")
    claim = earliest_instant(DAY_NINE)
    early = await repo.claim_and_plan(campaign_id, 3, now=claim - timedelta(seconds=1))
    assert early is None  # not claimable before UTC+14 reaches 09:00
    plan = await repo.claim_and_plan(campaign_id, 3, now=claim)
    assert plan is not None
    assert plan.invalid_timezones == 2  # the two unknown names; a blank field is no field
    rows = await plan_rows(repo, campaign_id)
    by_zone: dict[str, int] = {}
    for row in rows:
        tz = ZoneInfo(row["zone"])
        assert row["due_at"] == local_instant(DAY_NINE, tz)
        assert row["due_at"].astimezone(tz).strftime("%Y-%m-%d %H:%M") == "2027-03-14 09:00"
        assert len(row["recipient_ids"]) <= 3
        by_zone[row["zone"]] = by_zone.get(row["zone"], 0) + len(row["recipient_ids"])
    expected = {z: PER_ZONE for z in ZONES}
    # The list's default zone: no field, a blank one, and the two unknown names.
    expected["Europe/Berlin"] += 4
    expected["Asia/Kathmandu"] += 1  # matched whatever its case
    assert by_zone == expected
    # Batches are numbered in the order they fall due.
    assert [r["due_at"] for r in rows] == sorted(r["due_at"] for r in rows)
    kathmandu = [r["due_at"] for r in rows if r["zone"] == "Asia/Kathmandu"]
    assert kathmandu[0] == datetime(2027, 3, 14, 3, 15, tzinfo=UTC)
    new_york = [r["due_at"] for r in rows if r["zone"] == "America/New_York"]
    assert new_york[0] == datetime(2027, 3, 14, 13, 0, tzinfo=UTC)  # 09:00 EDT, the new offset


async def test_fallback_without_list_zone_is_the_campaigns(repo: ScheduleRepository) -> None:
    campaign_id = await seed(repo.pool, [None, "Nowhere/Land"], campaign_zone="Asia/Kolkata")
    plan = await repo.claim_and_plan(campaign_id, 10, now=earliest_instant(DAY_NINE))
    assert plan is not None and plan.invalid_timezones == 1
    rows = await plan_rows(repo, campaign_id)
    assert [(r["zone"], len(r["recipient_ids"])) for r in rows] == [("Asia/Kolkata", 2)]


async def test_every_batch_goes_at_nine_local_give_or_take_a_tick(
    repo: ScheduleRepository,
) -> None:
    campaign_id = await seed(repo.pool, [z for z in ZONES for _ in range(PER_ZONE)])
    claim = earliest_instant(DAY_NINE)
    assert await repo.claim_and_plan(campaign_id, 3, now=claim) is not None
    rows = await plan_rows(repo, campaign_id)
    assert len({r["zone"] for r in rows}) == 12
    emitted: dict[str, datetime] = {}
    await emit_until(repo, campaign_id, claim, claim + timedelta(hours=27), emitted)
    assert set(emitted) == {r["batch_id"] for r in rows}
    for row in rows:
        late = emitted[row["batch_id"]] - row["due_at"]
        assert timedelta(0) <= late < TICK, (row["zone"], late)
        local = emitted[row["batch_id"]].astimezone(ZoneInfo(row["zone"]))
        assert (local.hour, local.minute // 5) == (9, 0), (row["zone"], local)
    span = max(emitted.values()) - min(emitted.values())
    assert timedelta(hours=24) < span <= timedelta(hours=25)  # +14 to -11 in this set


async def test_a_campaign_paused_during_the_span_resumes(repo: ScheduleRepository) -> None:
    campaign_id = await seed(repo.pool, [z for z in ZONES for _ in range(PER_ZONE)])
    claim = earliest_instant(DAY_NINE)
    assert await repo.claim_and_plan(campaign_id, 3, now=claim) is not None
    rows = await plan_rows(repo, campaign_id)
    # Paused from 09:00 in Kolkata's hour to just after 09:00 in Berlin.
    pause = (datetime(2027, 3, 14, 3, 0, tzinfo=UTC), datetime(2027, 3, 14, 8, 2, tzinfo=UTC))
    emitted: dict[str, datetime] = {}
    await emit_until(repo, campaign_id, claim, claim + timedelta(hours=27), emitted, pause)
    assert set(emitted) == {r["batch_id"] for r in rows}  # none lost, none twice
    for row in rows:
        at = emitted[row["batch_id"]]
        assert not pause[0] <= at < pause[1], "emitted while paused"
        if pause[0] <= row["due_at"] < pause[1]:
            # Due during the pause: out on the first tick after the resume.
            assert pause[1] <= at < pause[1] + TICK, (row["zone"], at)
        else:
            assert timedelta(0) <= at - row["due_at"] < TICK, (row["zone"], at)
    held = {r["zone"] for r in rows if pause[0] <= r["due_at"] < pause[1]}
    assert held == {"Asia/Kathmandu", "Asia/Kolkata", "Europe/Berlin"}


async def test_waiting_batches_of_a_cancelled_campaign_go_at_once(
    repo: ScheduleRepository,
) -> None:
    """They are only reported `cancelled` by the dispatchers: the counts reconcile now,
    not 26 hours later."""
    campaign_id = await seed(repo.pool, ["Pacific/Pago_Pago", "Asia/Tokyo"])
    claim = earliest_instant(DAY_NINE)
    assert await repo.claim_and_plan(campaign_id, 10, now=claim) is not None
    await repo.pool.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", campaign_id)
    async with repo.batches_to_emit(NO_CUTOFF, 10_000, None, now=claim) as window:
        mine = [b for b in window.batches if b.campaign_id == campaign_id]
    assert len(mine) == 2


WEEKDAYS_8_20 = {"start": "08:00", "end": "20:00", "days": ["mon", "tue", "wed", "thu", "fri"]}


async def test_a_send_window_holds_in_each_zone(repo: ScheduleRepository) -> None:
    """Scheduled for Saturday 2027-03-13 12:00 UTC (no local time), Monday to Friday
    08:00-20:00 local: every zone's batches wait for its Monday 08:00."""
    start = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
    campaign_id = await seed(
        repo.pool,
        [z for z in ZONES for _ in range(PER_ZONE)],
        local_time=False,
        send_at=start,
        window=WEEKDAYS_8_20,
    )
    assert await repo.claim_and_plan(campaign_id, 3, now=start) is not None
    rows = await plan_rows(repo, campaign_id)
    assert all(r["due_at"] == start for r in rows)
    emitted: dict[str, datetime] = {}
    await emit_until(repo, campaign_id, start, start + timedelta(days=3), emitted)
    assert set(emitted) == {r["batch_id"] for r in rows}
    for row in rows:
        tz = ZoneInfo(row["zone"])
        opening = local_instant(datetime(2027, 3, 15, 8, 0), tz)
        at = emitted[row["batch_id"]]
        assert opening <= at < opening + TICK, (row["zone"], at.astimezone(tz))
        local = at.astimezone(tz)
        assert local.weekday() < 5 and 8 <= local.hour < 20


async def test_local_nine_on_a_weekend_waits_for_the_window(repo: ScheduleRepository) -> None:
    """09:00 local on Saturday, with a Monday-Friday window: each zone at its Monday 08:00;
    a zone whose window is open at its instant goes then."""
    saturday = datetime(2027, 3, 13, 9, 0)
    window = {"start": "08:00", "end": "20:00", "days": ["mon", "sat"]}
    campaign_id = await seed(
        repo.pool, ["Asia/Kolkata", "America/New_York"], wall=saturday, window=window
    )
    claim = earliest_instant(saturday)
    assert await repo.claim_and_plan(campaign_id, 10, now=claim) is not None
    rows = await plan_rows(repo, campaign_id)
    emitted: dict[str, datetime] = {}
    # Quarter-hour ticks over three days: every instant here falls on one.
    quarter = timedelta(minutes=15)
    await emit_until(repo, campaign_id, claim, claim + timedelta(days=3), emitted, tick=quarter)
    for row in rows:
        local = emitted[row["batch_id"]].astimezone(ZoneInfo(row["zone"]))
        assert local.strftime("%a %H:%M") == "Sat 09:00", row["zone"]
    # Now Monday-Friday: Saturday's instant is outside, Monday 08:00 is the next opening.
    campaign_id = await seed(
        repo.pool, ["Asia/Kolkata", "America/New_York"], wall=saturday, window=WEEKDAYS_8_20
    )
    assert await repo.claim_and_plan(campaign_id, 10, now=claim) is not None
    rows = await plan_rows(repo, campaign_id)
    emitted = {}
    await emit_until(repo, campaign_id, claim, claim + timedelta(days=3), emitted, tick=quarter)
    for row in rows:
        local = emitted[row["batch_id"]].astimezone(ZoneInfo(row["zone"]))
        assert local.strftime("%a %H:%M") == "Mon 08:00", row["zone"]
    waiting = await repo.pool.fetchval(
        "SELECT count(*) FROM batch_plans WHERE campaign_id = $1 AND emitted = 0", campaign_id
    )
    assert waiting == 0


async def test_plain_campaigns_keep_the_zoneless_plan(repo: ScheduleRepository) -> None:
    campaign_id = await seed(repo.pool, ["Asia/Tokyo", None], local_time=False)
    plan = await repo.claim_and_plan(campaign_id, 10, now=earliest_instant(DAY_NINE))
    assert plan is not None
    rows = await plan_rows(repo, campaign_id)
    assert [(r["zone"], r["due_at"]) for r in rows] == [(None, None)]


async def test_the_running_scheduler_follows_its_clock(
    pool: asyncpg.Pool, settings: Settings, repo: ScheduleRepository
) -> None:
    """Through the broker: a local-time `campaign.scheduled` from an internal service, and
    `batch.ready` for each zone only once the injected clock reaches its 09:00."""
    campaign_id = await seed(pool, ["Asia/Kolkata", "America/New_York"])
    await pool.execute(
        "UPDATE campaigns SET status = 'draft', send_at = NULL, local_time = false,"
        " local_send_at = NULL WHERE id = $1",
        campaign_id,
    )
    await pool.execute("DELETE FROM schedules WHERE campaign_id = $1", campaign_id)
    s = make_settings(
        settings.database_url, settings.kafka_bootstrap_servers, scheduler_tick_seconds=0.05
    )
    now = [earliest_instant(DAY_NINE)]
    producer = EventProducer(s)
    await producer.start()
    ctx = ServiceContext("scheduler", s, pool, producer, asyncio.Event())
    task = asyncio.create_task(main(ctx, clock=lambda: now[0]))
    try:
        event = CampaignScheduled(
            campaign_id=campaign_id,
            send_at=earliest_instant(DAY_NINE),
            timezone="UTC",
            local_time=True,
            local_send_at=DAY_NINE,
        )
        await producer.send(Topic.CAMPAIGN_SCHEDULED, str(campaign_id), event)
        consumer = AIOKafkaConsumer(
            Topic.BATCH_READY.value,
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=None,  # no group: nothing to join (Tansu holds a join for seconds)
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        found: list[BatchReady] = []

        async def until(count: int) -> None:
            async with asyncio.timeout(30):
                while len(found) < count:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        events = [BatchReady.model_validate_json(r.value) for r in records]
                        found.extend(e for e in events if e.campaign_id == campaign_id)

        try:
            now[0] = datetime(2027, 3, 14, 3, 30, tzinfo=UTC)  # 09:00 in Kolkata
            await until(1)
            assert [r.fields["timezone"] for r in found[0].recipients] == ["Asia/Kolkata"]
            # The event goes out before its emit transaction commits: the row lock waits
            # for that commit. Then New York's batch, not due, is still waiting.
            emitted = await pool.fetch(
                "SELECT zone, emitted FROM batch_plans WHERE campaign_id = $1"
                " ORDER BY due_at FOR UPDATE",
                campaign_id,
            )
            assert [tuple(e) for e in emitted] == [("Asia/Kolkata", 1), ("America/New_York", 0)]
            now[0] = datetime(2027, 3, 14, 13, 0, tzinfo=UTC)  # 09:00 EDT in New York
            await until(2)
            assert found[1].recipients[0].fields["timezone"] == "America/New_York"
            assert [b.emitted for b in found] == [1, 1]
        finally:
            await consumer.stop()
    finally:
        ctx.stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()
