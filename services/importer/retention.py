"""How long the importer keeps personal data: rejected rows for a set number of days,
uploaded files not at all once their import finished, abandoned uploads for a day.

The sweep runs in every importer (deleting is idempotent, so instances may overlap) and
deletes in bounded batches, so that it never holds long locks on a busy table.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from libs.common.logging import get_logger

log = get_logger(__name__)

SWEEP_INTERVAL_S = 3600.0
# An upload still incomplete after this long was cut off by a dying API process.
ABANDONED_UPLOAD_AGE = timedelta(days=1)
_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class SweepResult:
    rejections_deleted: int
    uploads_deleted: int


async def sweep(pool: asyncpg.Pool, rejections_retention: timedelta, now: datetime) -> SweepResult:
    """Delete what is kept longer than allowed as of `now` (the caller's clock)."""
    rejections = await _delete_in_batches(
        pool,
        "DELETE FROM import_rejections WHERE ctid IN ("
        " SELECT r.ctid FROM import_rejections r JOIN import_jobs j ON j.id = r.import_id"
        " WHERE j.finished_at < $1 LIMIT $2)",
        now - rejections_retention,
    )
    finished = await _delete_in_batches(
        pool,
        "DELETE FROM blobs WHERE id IN ("
        " SELECT r.blob_id FROM import_requests r JOIN import_jobs j ON j.id = r.id"
        " WHERE r.blob_id IS NOT NULL AND j.finished_at IS NOT NULL AND j.finished_at < $1"
        " LIMIT $2)",
        now,
    )
    abandoned = await _delete_in_batches(
        pool,
        "DELETE FROM blobs WHERE id IN ("
        " SELECT id FROM blobs WHERE NOT complete AND created_at < $1 LIMIT $2)",
        now - ABANDONED_UPLOAD_AGE,
    )
    return SweepResult(rejections, finished + abandoned)


async def _delete_in_batches(pool: asyncpg.Pool, sql: str, before: datetime) -> int:
    total = 0
    while True:
        status = await pool.execute(sql, before, _BATCH_ROWS)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < _BATCH_ROWS:
            return total


async def sweep_periodically(
    pool: asyncpg.Pool, rejections_retention: timedelta, stop: asyncio.Event
) -> None:
    """Sweep at start and then every SWEEP_INTERVAL_S until `stop`."""
    while not stop.is_set():
        try:
            result = await sweep(pool, rejections_retention, await _db_now(pool))
            if result.rejections_deleted or result.uploads_deleted:
                log.info(
                    "retention sweep",
                    rejections_deleted=result.rejections_deleted,
                    uploads_deleted=result.uploads_deleted,
                )
        except (OSError, asyncpg.PostgresError):
            log.warning("retention sweep failed; retrying later", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), SWEEP_INTERVAL_S)
        except TimeoutError:
            pass


async def _db_now(pool: asyncpg.Pool) -> datetime:
    # The database's clock: finished_at and created_at were written with it.
    now: datetime = await pool.fetchval("SELECT now()")
    return now
