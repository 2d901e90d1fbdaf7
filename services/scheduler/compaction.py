"""The batch plan of a finished campaign is dropped (issue 16 item 2).

A plan exists so that a lost broker loses nothing: the scheduler re-emits the batches the
tracker has not accounted for. Once a campaign is completed, failed or cancelled AND the
tracker has accounted for every one of its batches (`tracker_batches`), nothing needs it:
- re-emission reads only batches not accounted for, of campaigns in progress or cancelled;
- the stats and the console's progress read campaign_stats and campaign_plans (kept);
- erasure (services/api/people_repo.py) waits only on batches emitted and not accounted;
- the stall metric reads campaigns in progress.
So its rows are deleted, one campaign per transaction; `campaign_plans` (the totals) stays.
It waits KEEP_AFTER_FINISH after the campaign ended (for whoever looks at it right after).
"""

from __future__ import annotations

import asyncio

import asyncpg

from libs.common.logging import get_logger

log = get_logger(__name__)

COMPACT_INTERVAL_S = 60.0
KEEP_AFTER_FINISH_S = 3600.0
_CAMPAIGNS_PER_SWEEP = 50

_FINISHED_WITH_PLAN = """
SELECT c.id
  FROM campaigns c
 WHERE c.status IN ('completed', 'failed', 'cancelled')
   AND coalesce(c.finished_at, c.updated_at) < now() - make_interval(secs => $2)
   AND EXISTS (SELECT 1 FROM batch_plans b WHERE b.campaign_id = c.id)
   AND NOT EXISTS (SELECT 1 FROM batch_plans u
                    WHERE u.campaign_id = c.id
                      AND NOT EXISTS (SELECT 1 FROM tracker_batches t
                                       WHERE t.batch_id = u.batch_id))
 ORDER BY c.id
 LIMIT $1
"""

# Under the campaign's row lock (a cancel or a claim changes its status under it), and only
# while every batch is accounted for.
_DROP_PLAN = """
WITH c AS (
    SELECT id FROM campaigns
     WHERE id = $1 AND status IN ('completed', 'failed', 'cancelled')
       FOR SHARE
)
DELETE FROM batch_plans b
 USING c
 WHERE b.campaign_id = c.id
   AND NOT EXISTS (SELECT 1 FROM batch_plans u
                    WHERE u.campaign_id = c.id
                      AND NOT EXISTS (SELECT 1 FROM tracker_batches t
                                       WHERE t.batch_id = u.batch_id))
"""


async def compact_finished_plans(
    pool: asyncpg.Pool, keep_after_finish_s: float = KEEP_AFTER_FINISH_S
) -> int:
    """Delete the batch plans of finished, fully accounted campaigns; returns rows deleted."""
    deleted = 0
    for row in await pool.fetch(_FINISHED_WITH_PLAN, _CAMPAIGNS_PER_SWEEP, keep_after_finish_s):
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.execute(_DROP_PLAN, row["id"])
        n = int(status.split()[-1])
        if n:
            log.info("batch plan dropped", campaign_id=str(row["id"]), batches=n)
        deleted += n
    return deleted


async def compact_periodically(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await compact_finished_plans(pool)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("batch plan compaction failed; retrying later", error=repr(exc)[:300])
        try:
            await asyncio.wait_for(stop.wait(), COMPACT_INTERVAL_S)
        except TimeoutError:
            pass
