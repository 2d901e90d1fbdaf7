"""Throttle reservations against real PostgreSQL: exact under concurrency, partial grants,
the hour window, and the warm-up day counted from the domain's first send day."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import asyncpg
import pytest

from libs.common.clock import ManualClock
from libs.mail.throttles import GroupLimit, ThrottlePolicy, WarmupSchedule
from services.dispatcher.throttle_store import PostgresThrottles


def _provider() -> str:
    """A provider name of the test's own, so that its windows are its own in the shared db."""
    return f"t{uuid.uuid4().hex[:10]}"


def _domain() -> str:
    return f"{uuid.uuid4().hex[:10]}.example.net"


async def test_concurrent_reservations_never_pass_the_limit(pool: asyncpg.Pool) -> None:
    provider = _provider()
    policy = ThrottlePolicy({(provider, "gmail"): GroupLimit(per_minute=50)})
    # Four instances, each with its own store object (no shared memory), 40 reservations.
    stores = [PostgresThrottles(pool, policy, WarmupSchedule(), minute_s=60) for _ in range(4)]
    domain = _domain()
    grants = await asyncio.gather(
        *(stores[i % 4].reserve(provider, domain, {"gmail": 7}) for i in range(40))
    )
    total = sum(g.granted["gmail"] for g in grants)
    # Exactly the limit (unless the minute turned during the test, which gives a fresh 50).
    used = await pool.fetch(
        "SELECT used FROM throttle_windows WHERE scope = $1", f"{provider}:gmail"
    )
    assert total == sum(r["used"] for r in used)
    assert all(r["used"] == 50 for r in used) and total in (50, 100), (total, used)
    held = [g for g in grants if g.held]
    assert held and all(0 < (g.wait_s or 0) <= 60 for g in held)


async def test_a_group_without_room_holds_only_its_own_recipients(pool: asyncpg.Pool) -> None:
    provider = _provider()
    policy = ThrottlePolicy(
        {
            (provider, "gmail"): GroupLimit(per_minute=1000, per_hour=10),
            (provider, "yahoo"): GroupLimit(per_minute=3),
        }
    )
    # Ten seconds into an hour: the minute's rest (50 s) and the hour's (3,590 s) differ
    # whenever the test runs (by the wall clock, in the last minute of an hour both were
    # the same few seconds).
    clock = ManualClock(math.floor(time.time() / 3600) * 3600 + 10.0)
    store = PostgresThrottles(pool, policy, WarmupSchedule(), minute_s=60, clock=clock)
    domain = _domain()
    first = await store.reserve(provider, domain, {"gmail": 8, "yahoo": 5, "other": 100})
    assert first.granted == {"gmail": 8, "yahoo": 3, "other": 100}
    assert first.held == {"yahoo": 2}
    assert first.wait_s == pytest.approx(50)  # the minute window's rest
    second = await store.reserve(provider, domain, {"gmail": 8})
    # The hour window binds now: 2 left of 10, and the wait is the hour's rest.
    assert second.granted == {"gmail": 2} and second.held == {"gmail": 6}
    assert second.wait_s == pytest.approx(3590)


async def test_the_warmup_day_counts_every_group_from_the_first_send_day(
    pool: asyncpg.Pool,
) -> None:
    provider = _provider()
    ramp = WarmupSchedule((10, 20, 40))
    store = PostgresThrottles(pool, ThrottlePolicy({}), ramp, minute_s=60)
    assert store.applies_to(provider)
    domain = _domain()
    day0 = await store.reserve(provider, domain, {"gmail": 6, "other": 6})
    assert day0.granted == {"gmail": 6, "other": 4} and day0.held == {"other": 2}
    assert day0.wait_s is not None and day0.wait_s <= 86_400
    # Another provider shares the same domain's day.
    other = await store.reserve(_provider(), domain, {"other": 1})
    assert other.granted == {"other": 0}
    # Two days later (by the database's date) the domain may send 40 a day.
    await pool.execute(
        "UPDATE sending_domains SET first_send_day = first_send_day - 2 WHERE domain = $1",
        domain,
    )
    day2 = await store.reserve(provider, domain, {"other": 100})
    assert day2.granted == {"other": 30}  # 40 less the 10 of today's window
    await pool.execute(
        "UPDATE sending_domains SET first_send_day = first_send_day - 1 WHERE domain = $1",
        domain,
    )
    after = await store.reserve(provider, domain, {"other": 1000})
    assert after.granted == {"other": 1000} and not after.held  # the ramp is over


async def test_the_first_send_day_is_recorded_once(pool: asyncpg.Pool) -> None:
    store = PostgresThrottles(pool, ThrottlePolicy({}), WarmupSchedule(), minute_s=60)
    domain = _domain()
    assert not store.applies_to("sink")
    await store.note_domain(domain)
    await pool.execute(
        "UPDATE sending_domains SET first_send_day = first_send_day - 5 WHERE domain = $1",
        domain,
    )
    await PostgresThrottles(pool, ThrottlePolicy({}), WarmupSchedule()).note_domain(domain)
    age = await pool.fetchval(
        "SELECT (now() AT TIME ZONE 'UTC')::date - first_send_day FROM sending_domains"
        " WHERE domain = $1",
        domain,
    )
    assert age == 5


async def test_old_windows_are_pruned(pool: asyncpg.Pool) -> None:
    scope = f"{_provider()}:gmail"
    await pool.execute(
        "INSERT INTO throttle_windows (scope, window_s, window_start, used)"
        " VALUES ($1, 60, now() - interval '3 days', 5), ($1, 60, now(), 5)",
        scope,
    )
    store = PostgresThrottles(pool, ThrottlePolicy({}), WarmupSchedule())
    assert await store.prune() >= 1
    left = await pool.fetchval("SELECT count(*) FROM throttle_windows WHERE scope = $1", scope)
    assert left == 1


async def test_groups_without_a_limit_are_granted_without_counting(pool: asyncpg.Pool) -> None:
    provider = _provider()
    policy = ThrottlePolicy({(provider, "gmail"): GroupLimit(per_minute=1)})
    store = PostgresThrottles(pool, policy, WarmupSchedule())
    granted = await store.reserve(provider, _domain(), {"other": 500, "yahoo": 3})
    assert granted.granted == {"other": 500, "yahoo": 3} and not granted.held
    rows = await pool.fetchval(
        "SELECT count(*) FROM throttle_windows WHERE scope LIKE $1", f"{provider}:%"
    )
    assert rows == 0
