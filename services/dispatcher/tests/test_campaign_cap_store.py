"""A campaign's rate cap in the throttle store (issue 17 item 4), against real PostgreSQL
and an injected clock: the minute's share and the hour, shared by every group and both
instances, on top of a group's own limit, and a changed cap applied at the next
reservation."""

from __future__ import annotations

import asyncio
import math
import uuid

import asyncpg

from libs.common.clock import ManualClock
from libs.mail.throttles import GroupLimit, ThrottlePolicy, WarmupSchedule
from services.dispatcher.tests.test_control import new_campaign
from services.dispatcher.throttle_store import PostgresThrottles

HOUR = 3600.0


def _start() -> float:
    """An hour boundary of the clock, well away from the real one."""
    return math.floor(1_900_000_000 / HOUR) * HOUR


async def test_the_cap_spreads_the_hour_and_holds_it_across_instances(pool: asyncpg.Pool) -> None:
    campaign = await new_campaign(pool)
    await pool.execute("UPDATE campaigns SET max_per_hour = 600 WHERE id = $1", campaign)
    clock = ManualClock(_start() + 5)
    stores = [
        PostgresThrottles(pool, ThrottlePolicy({}), WarmupSchedule(), clock=clock) for _ in range(2)
    ]
    domain = f"{uuid.uuid4().hex[:8]}.example.net"
    sent_per_minute = []
    for _minute in range(70):
        grants = await asyncio.gather(
            *(
                stores[i % 2].reserve("sink", domain, {"gmail": 3, "other": 4}, campaign)
                for i in range(6)
            )
        )
        sent_per_minute.append(sum(sum(g.granted.values()) for g in grants))
        held = [g for g in grants if g.held]
        assert held and all(0 < (g.wait_s or 0) <= HOUR and g.capped for g in held)
        clock.advance(60)
    # 10 a minute (ceil(600 / 60)) over both instances and all groups; the hour holds 600
    # exactly, then the next hour starts again.
    assert sent_per_minute[:60] == [10] * 60 and sum(sent_per_minute[:60]) == 600
    assert sent_per_minute[60:] == [10] * 10


async def test_a_changed_cap_applies_at_the_next_reservation_and_the_hour_counts(
    pool: asyncpg.Pool,
) -> None:
    campaign = await new_campaign(pool)
    await pool.execute("UPDATE campaigns SET max_per_hour = 6000 WHERE id = $1", campaign)
    clock = ManualClock(_start() + 7200 + 5)
    store = PostgresThrottles(pool, ThrottlePolicy({}), WarmupSchedule(), clock=clock)
    domain = f"{uuid.uuid4().hex[:8]}.example.net"
    first = await store.reserve("sink", domain, {"other": 500}, campaign)
    assert first.granted == {"other": 100} and first.wait_s == 55  # the minute's rest
    # Lowered below what the hour already used: nothing more this hour.
    await pool.execute("UPDATE campaigns SET max_per_hour = 90 WHERE id = $1", campaign)
    clock.advance(60)
    second = await store.reserve("sink", domain, {"other": 500}, campaign)
    assert second.granted == {"other": 0}
    assert second.wait_s is not None and second.wait_s > 3000  # until the hour ends
    # A campaign without a cap (and no other limit) goes at once.
    await pool.execute("UPDATE campaigns SET max_per_hour = NULL WHERE id = $1", campaign)
    assert (await store.reserve("sink", domain, {"other": 500}, campaign)).granted == {"other": 500}


async def test_a_group_limit_and_the_cap_both_hold(pool: asyncpg.Pool) -> None:
    campaign = await new_campaign(pool)
    await pool.execute("UPDATE campaigns SET max_per_hour = 1200 WHERE id = $1", campaign)
    provider = f"t{uuid.uuid4().hex[:10]}"
    policy = ThrottlePolicy({(provider, "gmail"): GroupLimit(per_minute=5)})
    clock = ManualClock(_start() + 3 * HOUR)
    store = PostgresThrottles(pool, policy, WarmupSchedule(), clock=clock)
    got = await store.reserve(provider, "x.example.net", {"gmail": 50, "other": 50}, campaign)
    # gmail's own 5, then the cap's 20 a minute shared: 15 left for the others.
    assert got.granted == {"gmail": 5, "other": 15} and got.held == {"gmail": 45, "other": 35}
    assert got.capped
    # Held by gmail's own limit only: not the cap's doing.
    roomy = await new_campaign(pool)
    await pool.execute("UPDATE campaigns SET max_per_hour = 100000 WHERE id = $1", roomy)
    only_gmail = await store.reserve(provider, "x.example.net", {"gmail": 10}, roomy)
    assert only_gmail.granted == {"gmail": 0} and not only_gmail.capped
