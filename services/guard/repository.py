"""What the guard reads in PostgreSQL. It writes nothing: its windows live in memory.

Read-only looks across ownership (docs/design.md, "Reputation guard"):
- `campaigns` (the API's): status, the campaign's own thresholds (`guard`), and when an
  admin last resumed a guard pause (`guard_resumed_at`), read before each pause it asks for;
- `tracker_batches`, `deliveries` and `delivery_events` (the tracker's), read once at start
  to rebuild the windows of the last minutes, which the broker may not hold any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from services.guard.rules import CampaignState

# Campaigns whose windows matter: a paused one may be resumed within the window.
_WATCHED = "('in_progress', 'paused')"

_RECENT_OUTCOMES = f"""
SELECT b.batch_id, b.campaign_id, extract(epoch FROM b.folded_at)::float8 AS at,
       d.email, d.status, d.error
  FROM tracker_batches b
  JOIN campaigns c ON c.id = b.campaign_id AND c.status IN {_WATCHED}
  JOIN deliveries d ON d.campaign_id = b.campaign_id AND d.batch_id = b.batch_id
 WHERE b.folded_at >= to_timestamp($1)
"""  # noqa: S608 - a constant

_RECENT_EVENTS = f"""
SELECT e.event_id, e.campaign_id, extract(epoch FROM e.received_at)::float8 AS at,
       e.email, e.event, e.detail
  FROM delivery_events e
  JOIN campaigns c ON c.id = e.campaign_id AND c.status IN {_WATCHED}
 WHERE e.received_at >= to_timestamp($1) AND e.matched
   AND e.event IN ('bounce', 'spamreport', 'deferred')
"""  # noqa: S608 - a constant


@dataclass(frozen=True)
class PastOutcome:
    batch_id: str
    campaign_id: UUID
    at: float
    email: str
    status: str
    error: str | None


@dataclass(frozen=True)
class PastEvent:
    event_id: str
    campaign_id: UUID
    at: float
    email: str
    event: str
    detail: dict[str, Any]


class GuardRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def campaign_state(self, campaign_id: UUID) -> CampaignState | None:
        row = await self.pool.fetchrow(
            "SELECT status, guard, extract(epoch FROM guard_resumed_at)::float8 AS resumed_at"
            " FROM campaigns WHERE id = $1",
            campaign_id,
        )
        if row is None:
            return None
        return CampaignState(row["status"], row["guard"], row["resumed_at"])

    async def recent_outcomes(self, since: float) -> Sequence[PastOutcome]:
        """Outcomes of the batches the tracker folded since `since` (epoch seconds)."""
        rows = await self.pool.fetch(_RECENT_OUTCOMES, since)
        return [PastOutcome(**dict(r)) for r in rows]

    async def recent_events(self, since: float) -> Sequence[PastEvent]:
        """Bounces, complaints and deferrals the tracker received since `since`."""
        rows = await self.pool.fetch(_RECENT_EVENTS, since)
        return [PastEvent(**dict(r)) for r in rows]
