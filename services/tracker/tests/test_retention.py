"""Retention of the delivery log (issue 16 item 2): months past the retention are dropped
whole, and the campaign aggregates do not move; a campaign still sending keeps its month.

Its own database: dropping months must not take the partitions of the other tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from libs.common import db
from libs.common.embedded import create_database
from services.tracker import retention
from services.tracker.store import TrackerStore
from services.tracker.tests.support import make_results, new_campaign, stats_of
from services.tracker.tests.test_delivery_events import provider_event

OLD_MONTH = date(2025, 1, 1)


@pytest.fixture
async def own_pool(postgres_admin_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    name = f"mailfleet_test_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(postgres_admin_dsn, name)
    await db.migrate(dsn)
    pool = await db.create_pool(dsn, max_size=3)
    yield pool
    await pool.close()
    await drop_database(postgres_admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def partitions(pool: asyncpg.Pool, table: str) -> set[str]:
    return {
        r["relname"]
        for r in await pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = $1::regclass",
            table,
        )
    }


def test_month_arithmetic() -> None:
    assert retention.add_months(date(2026, 11, 1), 3) == date(2027, 2, 1)
    assert retention.partition_name("deliveries", date(2027, 2, 1)) == "deliveries_y2027m02"
    bound = "FOR VALUES FROM ('2025-01-01') TO ('2025-02-01')"
    assert retention.upper_bound(bound) == date(2025, 2, 1)
    assert retention.lower_bound(bound) == date(2025, 1, 1)
    assert retention.upper_bound("DEFAULT") is None
    now = datetime(2025, 3, 3, tzinfo=UTC)
    assert retention.expired(date(2025, 2, 1), now, timedelta(days=30))
    assert not retention.expired(date(2025, 3, 1), now, timedelta(days=30))


async def test_old_months_are_dropped_and_campaign_stats_stay_exact(
    own_pool: asyncpg.Pool,
) -> None:
    pool = own_pool
    store = TrackerStore(pool)
    now = await pool.fetchval("SELECT now()")
    # The months of January 2025 (and after), as if the tracker had run then.
    async with pool.acquire() as conn:
        await retention.ensure_partitions(conn, datetime(2025, 1, 15, tzinfo=UTC))
    old, new = await new_campaign(pool, "completed"), await new_campaign(pool)
    await pool.execute("INSERT INTO delivery_log_months VALUES ($1, $2)", old, OLD_MONTH)
    old_results, new_results = make_results(old, 2, 3), make_results(new, 1, 3)
    await store.fold_results(old_results + new_results, failure_threshold=0.5)
    opened = provider_event("sg-open-1", "open", old, 1)
    await store.fold_events([opened, provider_event("sg-open-2", "open", new, 1)])
    assert (
        await pool.fetchval("SELECT count(*) FROM deliveries_y2025m01 WHERE campaign_id = $1", old)
        == 6
    )
    assert await pool.fetchval("SELECT count(*) FROM delivery_events_y2025m01") == 1
    before = {c: await stats_of(pool, c) for c in (old, new)}
    assert before[old] is not None and before[old]["unique_opens"] == 1

    # A campaign of that month with a result within the retention keeps the month.
    result = await retention.sweep(pool, now, timedelta(days=30))
    assert "deliveries_y2025m01" not in result.dropped
    assert "deliveries_y2025m01" in await partitions(pool, "deliveries")

    await pool.execute(
        "UPDATE campaign_stats SET last_result_at = '2025-01-20' WHERE campaign_id = $1", old
    )
    before = {c: await stats_of(pool, c) for c in (old, new)}
    result = await retention.sweep(pool, now, timedelta(days=30))
    assert {"deliveries_y2025m01", "delivery_events_y2025m01"} <= set(result.dropped)
    assert "deliveries_y2025m01" not in await partitions(pool, "deliveries")
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", old) == 0
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", new) == 3
    # The aggregates are counters kept apart: equal before and after the drop.
    assert {c: await stats_of(pool, c) for c in (old, new)} == before

    # A replayed batch and a redelivered event of the dropped month move nothing.
    replay = await store.fold_results(old_results, failure_threshold=0.5)
    assert replay.duplicates == 2 and not replay.folded
    late = await store.fold_events([opened])
    assert late.unmatched == 1
    assert {c: await stats_of(pool, c) for c in (old, new)} == before
    # The months ahead are there (made by the sweep), so a new campaign never waits.
    ahead = retention.partition_name(
        "deliveries", retention.add_months(now.date().replace(day=1), 3)
    )
    assert ahead in await partitions(pool, "deliveries")
