"""The send ledger in PostgreSQL (table send_ledger, owned by the dispatcher)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from libs.common.events import RecipientOutcome
from services.dispatcher.ledger import LedgerEntry


class PostgresLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, batch_id: str) -> LedgerEntry | None:
        row = await self._pool.fetchrow(
            "SELECT batch_id, state, owner, result, started_at FROM send_ledger"
            " WHERE batch_id = $1",
            batch_id,
        )
        if row is None:
            return None
        return LedgerEntry(
            row["batch_id"], row["state"], row["owner"], row["result"], row["started_at"]
        )

    async def claim(self, batch_id: str, campaign_id: UUID, owner: str) -> bool:
        """Insert the `sending` row; False when another claim got there first."""
        inserted = await self._pool.fetchval(
            "INSERT INTO send_ledger (batch_id, campaign_id, state, owner)"
            " VALUES ($1, $2, 'sending', $3) ON CONFLICT (batch_id) DO NOTHING RETURNING 1",
            batch_id,
            campaign_id,
            owner,
        )
        return inserted is not None

    async def take_over(self, batch_id: str, previous_owner: str, owner: str) -> bool:
        """Make a stale `sending` row ours (compare-and-set on its owner)."""
        updated = await self._pool.fetchval(
            "UPDATE send_ledger SET owner = $3, started_at = now(), result = result - 'released'"
            " WHERE batch_id = $1 AND state = 'sending' AND owner = $2 RETURNING 1",
            batch_id,
            previous_owner,
            owner,
        )
        return updated is not None

    async def release(self, batch_id: str, owner: str) -> None:
        """Hand our `sending` row back after a provider outage: its recorded outcomes stand,
        the rest may be sent by whoever reads the batch next."""
        await self._pool.execute(
            "UPDATE send_ledger SET result = jsonb_set(coalesce(result, '{}'::jsonb),"
            " '{released}', 'true'::jsonb) WHERE batch_id = $1 AND owner = $2"
            " AND state = 'sending'",
            batch_id,
            owner,
        )

    async def add_progress(self, batch_id: str, outcomes: list[RecipientOutcome]) -> None:
        await self._pool.execute(
            "UPDATE send_ledger SET result = jsonb_set(coalesce(result, '{}'::jsonb),"
            " '{partial}', coalesce(result->'partial', '[]'::jsonb) || $2::jsonb)"
            " WHERE batch_id = $1 AND state = 'sending'",
            batch_id,
            [o.model_dump(mode="json") for o in outcomes],
        )

    async def finish(self, batch_id: str, campaign_id: UUID, owner: str, result: Any) -> None:
        """Store the batch's result as `done` (upsert: a batch settled without sending, e.g.
        for missing content, never had a `sending` row)."""
        await self._pool.execute(
            "INSERT INTO send_ledger (batch_id, campaign_id, state, owner, result, finished_at)"
            " VALUES ($1, $2, 'done', $3, $4::jsonb, now())"
            " ON CONFLICT (batch_id) DO UPDATE SET state = 'done', result = EXCLUDED.result,"
            " finished_at = now()",
            batch_id,
            campaign_id,
            owner,
            result,
        )
