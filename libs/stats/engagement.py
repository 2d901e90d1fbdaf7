"""The per-address engagement summary (migration 0032): who keeps it, and how to read it.

`engagement_summary` holds, per address, the last time it was sent anything, opened,
clicked and soft-bounced. Segment filters on engagement over all campaigns ("opened
within 30 days", "never clicked") read it: one row per person instead of the delivery log
(millions of rows per campaign).

- Opens, clicks, soft bounces, and sends that turn `sent` late, reach it by trigger as
  the tracker writes the delivery log.
- Sends (millions per campaign, too many for a trigger) are added per campaign by the
  tracker's job (`summarise_next_campaign`), once the campaign is over and every batch is
  accounted for; `engagement_summarised` records which. A filter reads the sends of the
  campaigns not summarised yet from the delivery log itself, so it is exact at any time.
- An erased address loses its row (services/api/people_repo.py).
- Retention of the delivery log does not touch it: a person's engagement history outlives
  the rows it came from.
- A soft bounce stays in the summary after its delivery's bounce is re-typed (a later
  hard bounce): "soft-bounced" over all campaigns means "soft-bounced at least once".
"""

from __future__ import annotations

from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn = asyncpg.Connection | PoolConnectionProxy

FINAL_STATUSES = ("completed", "cancelled", "failed")

# A campaign is summarised once it is over and its tracker has accounted for every batch
# of its plan: no `sent` delivery can be inserted after that (a late change of status is
# an UPDATE, which the trigger follows).
_NEXT_CAMPAIGN = """
SELECT c.id FROM campaigns c
  JOIN campaign_stats st ON st.campaign_id = c.id
 WHERE c.status = ANY($1::text[]) AND c.finished_at IS NOT NULL
   AND st.batches_done >= st.batches_total
   AND NOT EXISTS (SELECT 1 FROM engagement_summarised s WHERE s.campaign_id = c.id)
 ORDER BY c.finished_at
 LIMIT 1
"""

_ADD_SENDS = """
INSERT INTO engagement_summary AS e (email, last_sent_at)
SELECT d.email, max(d.sent_at) FROM deliveries d
 WHERE d.campaign_id = $1 AND d.status = 'sent' AND d.sent_at IS NOT NULL
 GROUP BY d.email
ON CONFLICT (email) DO UPDATE
   SET last_sent_at = greatest(e.last_sent_at, EXCLUDED.last_sent_at)
 WHERE e.last_sent_at IS NULL OR e.last_sent_at < EXCLUDED.last_sent_at
"""


async def summarise_next_campaign(conn: Conn) -> UUID | None:
    """Add the sends of one finished campaign not yet summarised; returns it, or None when
    none is waiting. Call inside a transaction. Safe with several trackers: the marker's
    primary key lets one in (the other waits for its commit, then passes)."""
    campaign_id: UUID | None = await conn.fetchval(_NEXT_CAMPAIGN, list(FINAL_STATUSES))
    if campaign_id is None:
        return None
    claimed = await conn.fetchval(
        "INSERT INTO engagement_summarised (campaign_id) VALUES ($1)"
        " ON CONFLICT DO NOTHING RETURNING true",
        campaign_id,
    )
    if claimed:
        await conn.execute(_ADD_SENDS, campaign_id)
    return campaign_id


async def summarise_finished_campaigns(pool: asyncpg.Pool, limit: int = 1000) -> int:
    """Summarise every waiting campaign (at most `limit`), one transaction each; returns
    how many."""
    done = 0
    while done < limit:
        async with pool.acquire() as conn, conn.transaction():
            if await summarise_next_campaign(conn) is None:
                return done
        done += 1
    return done
