"""Growth of the delivery log by design (issue 16 item 2): month partitions made ahead,
and months older than the retention dropped whole.

`deliveries` and `delivery_events` are partitioned by the month their campaign was first
seen (migration 0031). A month is dropped when it ended more than `retention` ago and no
campaign pinned to it had a result within `retention` (a campaign still sending keeps its
month). Dropping is a DETACH + DROP of two tables, not a DELETE of millions of rows; the
campaign aggregates (campaign_stats) are counters kept apart and do not move. A campaign
whose month was dropped and that comes back (a late event) is pinned to the current month:
its event matches no delivery and moves no counter; a replayed batch is refused by the
batch gate (tracker_batches, kept).

Pure month arithmetic here; the SQL is in the few functions below that take a connection.
The job runs in every tracker (each step is idempotent and takes its locks with a short
lock_timeout, so instances may overlap and a busy table is retried at the next sweep).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from libs.common.logging import get_logger

log = get_logger(__name__)

TABLES = ("deliveries", "delivery_events")
MONTHS_AHEAD = 3
SWEEP_INTERVAL_S = 3600.0
_LOCK_TIMEOUT = "2s"
_BATCH_ROWS = 10_000
_UPPER = re.compile(r"TO \('(\d{4}-\d{2}-\d{2})'\)")
_LOWER = re.compile(r"FROM \('(\d{4}-\d{2}-\d{2})'\)")
Conn = asyncpg.Connection | PoolConnectionProxy


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_y{month.year:04d}m{month.month:02d}"


def upper_bound(bound_expr: str) -> date | None:
    """The exclusive upper bound of a range partition (`pg_get_expr(relpartbound)`); None
    for the default partition."""
    found = _UPPER.search(bound_expr)
    return date.fromisoformat(found.group(1)) if found else None


def lower_bound(bound_expr: str) -> date:
    """The inclusive lower bound of a range partition (MINVALUE: the first day there is)."""
    found = _LOWER.search(bound_expr)
    return date.fromisoformat(found.group(1)) if found else date.min


def expired(upper: date, now: datetime, retention: timedelta) -> bool:
    """A month is past the retention once every day of it is (its end is before the cutoff)."""
    return upper <= (now - retention).date()


@dataclass
class SweepResult:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    default_rows_deleted: int = 0


async def ensure_partitions(conn: Conn, now: datetime) -> list[str]:
    """This month's partitions and the next MONTHS_AHEAD', where missing."""
    created = []
    first = month_start(now.date())
    for table in TABLES:
        existing = {r["name"] for r in await _partitions(conn, table)}
        for i in range(MONTHS_AHEAD + 1):
            month = add_months(first, i)
            name = partition_name(table, month)
            if name in existing:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table}"
                        f" FOR VALUES FROM ('{month.isoformat()}')"
                        f" TO ('{add_months(month, 1).isoformat()}')"
                    )
                created.append(name)
            except asyncpg.PostgresError as exc:
                # The default partition holds rows of that month (the tracker was down over
                # a month's start) or the table is busy: the rows stay where they are, the
                # next sweep tries again.
                log.error("partition not created", partition=name, error=repr(exc)[:300])
    return created


async def drop_expired(conn: Conn, now: datetime, retention: timedelta) -> list[str]:
    """Drop the months (of both tables at once) past the retention whose campaigns are done."""
    dropped: list[str] = []
    cutoff = now - retention
    by_upper: dict[tuple[date, date], list[tuple[str, str]]] = {}
    for table in TABLES:
        for part in await _partitions(conn, table):
            upper = upper_bound(part["bound"])
            if upper is not None and expired(upper, now, retention):
                key = (lower_bound(part["bound"]), upper)
                by_upper.setdefault(key, []).append((table, part["name"]))
    for (lower, upper), parts in sorted(by_upper.items()):
        busy = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM delivery_log_months m"
            " JOIN campaign_stats s ON s.campaign_id = m.campaign_id"
            " WHERE m.log_month >= $1 AND m.log_month < $2 AND s.last_result_at > $3)",
            lower,
            upper,
            cutoff,
        )
        if busy:
            continue  # a campaign of that month still sends: keep it whole
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
                for table, name in parts:
                    await conn.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
                    await conn.execute(f"DROP TABLE {name}")
                # Its campaigns come back (if ever) in the current month.
                await conn.execute(
                    "DELETE FROM delivery_log_months WHERE log_month >= $1 AND log_month < $2",
                    lower,
                    upper,
                )
            dropped += [name for _, name in parts]
        except asyncpg.PostgresError as exc:
            log.warning("partition not dropped yet", upper=str(upper), error=repr(exc)[:300])
    return dropped


async def delete_expired_default_rows(conn: Conn, now: datetime, retention: timedelta) -> int:
    """The default partitions catch rows of a month that had no partition: trimmed by the
    same rule, in bounded batches."""
    month = month_start((now - retention).date())
    total = 0
    for table in TABLES:
        while True:
            status = await conn.execute(
                f"DELETE FROM {table}_default WHERE ctid IN ("  # noqa: S608 - constant names
                f" SELECT ctid FROM {table}_default WHERE log_month < $1 LIMIT $2)",
                month,
                _BATCH_ROWS,
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < _BATCH_ROWS:
                break
    return total


async def sweep(pool: asyncpg.Pool, now: datetime, retention: timedelta) -> SweepResult:
    result = SweepResult()
    async with pool.acquire() as conn:
        result.created = await ensure_partitions(conn, now)
        result.dropped = await drop_expired(conn, now, retention)
        result.default_rows_deleted = await delete_expired_default_rows(conn, now, retention)
    return result


async def sweep_periodically(pool: asyncpg.Pool, retention: timedelta, stop: asyncio.Event) -> None:
    """Sweep at start and then every SWEEP_INTERVAL_S until `stop` (by the database's clock)."""
    while not stop.is_set():
        try:
            now = await pool.fetchval("SELECT now()")
            result = await sweep(pool, now, retention)
            if result.created or result.dropped or result.default_rows_deleted:
                log.info(
                    "delivery log retention",
                    created=result.created,
                    dropped=result.dropped,
                    default_rows_deleted=result.default_rows_deleted,
                )
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("delivery log retention failed; retrying later", error=repr(exc)[:300])
        try:
            await asyncio.wait_for(stop.wait(), SWEEP_INTERVAL_S)
        except TimeoutError:
            pass


async def _partitions(conn: Conn, table: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass ORDER BY c.relname",
        table,
    )
