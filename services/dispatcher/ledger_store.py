"""The send ledger in PostgreSQL (table send_ledger, owned by the dispatcher).

Every time that decides a lease is the database's (`now()`), never a dispatcher's clock.
Every write of a sender is fenced by the `Claim` it holds (owner and claim number) and
returns whether it landed: False means another instance took the batch over.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from libs.common.events import RecipientOutcome
from services.dispatcher.ledger import Claim, LedgerEntry


class PostgresLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, batch_id: str) -> LedgerEntry | None:
        row = await self._pool.fetchrow(
            "SELECT batch_id, state, owner, result, started_at, claim,"
            " lease_until < now() AS lease_expired FROM send_ledger WHERE batch_id = $1",
            batch_id,
        )
        if row is None:
            return None
        return LedgerEntry(
            row["batch_id"],
            row["state"],
            row["owner"],
            row["result"],
            row["started_at"],
            claim_no=row["claim"],
            lease_expired=row["lease_expired"],
        )

    async def claim(
        self, batch_id: str, campaign_id: UUID, owner: str, lease_s: float
    ) -> Claim | None:
        """Insert the `sending` row with a lease; None when another claim got there first."""
        number = await self._pool.fetchval(
            "INSERT INTO send_ledger (batch_id, campaign_id, state, owner, claim, lease_until)"
            " VALUES ($1, $2, 'sending', $3, 1, now() + make_interval(secs => $4))"
            " ON CONFLICT (batch_id) DO NOTHING RETURNING claim",
            batch_id,
            campaign_id,
            owner,
            lease_s,
        )
        return None if number is None else Claim(batch_id, owner, number)

    async def take_over(self, stale: Claim, owner: str, lease_s: float) -> Claim | None:
        """Make a `sending` row ours under a new claim number: only while it still holds the
        claim we read, and only once its lease has expired (or it is our own abandoned row)."""
        number = await self._pool.fetchval(
            "UPDATE send_ledger SET owner = $4, claim = claim + 1, started_at = now(),"
            " lease_until = now() + make_interval(secs => $5),"
            " result = result - 'released'"
            " WHERE batch_id = $1 AND owner = $2 AND claim = $3 AND state = 'sending'"
            " AND (lease_until < now() OR owner = $4)"
            " RETURNING claim",
            stale.batch_id,
            stale.owner,
            stale.number,
            owner,
            lease_s,
        )
        return None if number is None else Claim(stale.batch_id, owner, number)

    async def release(self, claim: Claim) -> bool:
        """Hand our `sending` row back after a provider outage (fenced by the claim): its
        recorded outcomes stand, its lease ends now, and whoever reads the batch next sends
        the rest. False when the claim was lost meanwhile."""
        released = await self._pool.fetchval(
            "UPDATE send_ledger SET result = jsonb_set(coalesce(result, '{}'::jsonb),"
            " '{released}', 'true'::jsonb), lease_until = now() - interval '1 second'"
            " WHERE batch_id = $1 AND owner = $2 AND claim = $3 AND state = 'sending'"
            " RETURNING 1",
            claim.batch_id,
            claim.owner,
            claim.number,
        )
        return released is not None

    async def park(self, claim: Claim, outcomes: list[RecipientOutcome]) -> bool:
        """Mark our `sending` row as waiting for a domain throttle (fenced by the claim),
        with `outcomes` (all the sender has seen) added to its progress where missing, in
        the same write: no send is in progress and what is not recorded was never handed to
        a provider, so were this instance to die now, whoever takes the row over once its
        lease expired sends the rest (`released`), in any mode. The lease stays ours."""
        parked = await self._pool.fetchval(
            "UPDATE send_ledger SET result = jsonb_set(jsonb_set(coalesce(result, '{}'::jsonb),"
            " '{partial}', coalesce(result->'partial', '[]'::jsonb) || coalesce(("
            "   SELECT jsonb_agg(o) FROM jsonb_array_elements($4::jsonb) AS o"
            "   WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements("
            "     coalesce(result->'partial', '[]'::jsonb)) AS p"
            "     WHERE p->'recipient_id' = o->'recipient_id')), '[]'::jsonb)),"
            " '{released}', 'true'::jsonb)"
            " WHERE batch_id = $1 AND owner = $2 AND claim = $3 AND state = 'sending'"
            " RETURNING 1",
            claim.batch_id,
            claim.owner,
            claim.number,
            [o.model_dump(mode="json") for o in outcomes],
        )
        return parked is not None

    async def unpark(self, claim: Claim) -> bool:
        """Before the next send of a parked batch: from now on what is not recorded may have
        gone out. False when the claim was lost (then nothing may be sent)."""
        unparked = await self._pool.fetchval(
            "UPDATE send_ledger SET result = result - 'released'"
            " WHERE batch_id = $1 AND owner = $2 AND claim = $3 AND state = 'sending'"
            " RETURNING 1",
            claim.batch_id,
            claim.owner,
            claim.number,
        )
        return unparked is not None

    async def renew(self, claim: Claim, lease_s: float) -> bool:
        """Extend the lease; False when the claim was lost (taken over or finished)."""
        renewed = await self._pool.fetchval(
            "UPDATE send_ledger SET lease_until = now() + make_interval(secs => $4)"
            " WHERE batch_id = $1 AND owner = $2 AND claim = $3 AND state = 'sending'"
            " RETURNING 1",
            claim.batch_id,
            claim.owner,
            claim.number,
            lease_s,
        )
        return renewed is not None

    async def add_progress(self, claim: Claim, outcomes: list[RecipientOutcome]) -> bool:
        added = await self._pool.fetchval(
            "UPDATE send_ledger SET result = jsonb_set(coalesce(result, '{}'::jsonb),"
            " '{partial}', coalesce(result->'partial', '[]'::jsonb) || $4::jsonb)"
            " WHERE batch_id = $1 AND owner = $2 AND claim = $3 AND state = 'sending'"
            " RETURNING 1",
            claim.batch_id,
            claim.owner,
            claim.number,
            [o.model_dump(mode="json") for o in outcomes],
        )
        return added is not None

    async def finish(self, claim: Claim, result: Any) -> bool:
        """Store the result of a claimed batch as `done`; False when the claim was lost, so
        the result of whoever holds it now stands."""
        finished = await self._pool.fetchval(
            "UPDATE send_ledger SET state = 'done', result = $4::jsonb, finished_at = now()"
            " WHERE batch_id = $1 AND owner = $2 AND claim = $3 AND state = 'sending'"
            " RETURNING 1",
            claim.batch_id,
            claim.owner,
            claim.number,
            result,
        )
        return finished is not None

    async def settle(self, batch_id: str, campaign_id: UUID, owner: str, result: Any) -> bool:
        """Store the result of a batch settled without a claim (nothing sent: its content is
        missing, its campaign cancelled, ...); False when the batch is in the ledger already."""
        inserted = await self._pool.fetchval(
            "INSERT INTO send_ledger (batch_id, campaign_id, state, owner, result, finished_at)"
            " VALUES ($1, $2, 'done', $3, $4::jsonb, now())"
            " ON CONFLICT (batch_id) DO NOTHING RETURNING 1",
            batch_id,
            campaign_id,
            owner,
            result,
        )
        return inserted is not None
