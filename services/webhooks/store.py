"""PostgreSQL access of the webhooks service: the outbox (which is the delivery log too)
and the endpoints' delivery state. Parameterised SQL only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from services.webhooks.mapping import Outgoing


@dataclass(frozen=True)
class Claimed:
    id: UUID
    endpoint_id: UUID
    event_id: UUID
    event_type: str
    order_key: str | None
    payload: bytes
    attempts: int  # including this one
    created_at: datetime
    url: str
    secret_sealed: bytes


@dataclass(frozen=True)
class EndpointState:
    failure_streak: int
    just_disabled: bool


class WebhookStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def enqueue(self, items: Sequence[Outgoing], now: datetime) -> int:
        """One outbox row per (subscribed, enabled endpoint, event); a replayed event is
        ignored (unique per endpoint and event id). Returns the rows written."""
        if not items:
            return 0
        status = await self.pool.execute(
            """
            INSERT INTO webhook_deliveries
                (endpoint_id, event_id, event_type, order_key, payload, next_attempt_at,
                 created_at)
            SELECT e.id, i.event_id, i.event_type, i.order_key, i.payload, $5, $5
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])
                 WITH ORDINALITY AS i (event_id, event_type, order_key, payload, n)
            JOIN webhook_endpoints e
              ON e.deleted_at IS NULL AND i.event_type = ANY (e.event_types)
             -- A failing endpoint the sender disabled keeps its events (for up to the retry
             -- window) until an admin re-enables it; one an admin disabled gets none.
             AND (e.enabled OR e.disabled_reason = 'failing')
            ORDER BY i.n, e.id
            ON CONFLICT (endpoint_id, event_id) DO NOTHING
            """,
            [i.event_id for i in items],
            [i.event_type for i in items],
            [i.order_key for i in items],
            [i.body for i in items],
            now,
        )
        return int(status.split()[-1])

    async def claim(self, now: datetime, lease_until: datetime, limit: int) -> list[Claimed]:
        """Due deliveries that head their (endpoint, campaign) queue, leased to this sender.

        A delivery waits while an earlier one of the same endpoint and order key is pending
        (failing, or in flight elsewhere): order per campaign. SKIP LOCKED lets several
        senders share the outbox; the lease hands an abandoned claim to another later.
        """
        rows = await self.pool.fetch(
            """
            WITH due AS (
                SELECT d.id
                FROM webhook_deliveries d
                JOIN webhook_endpoints e ON e.id = d.endpoint_id
                WHERE d.status = 'pending' AND d.next_attempt_at <= $1
                  AND (d.leased_until IS NULL OR d.leased_until <= $1)
                  AND e.enabled AND e.deleted_at IS NULL
                  AND NOT EXISTS (
                      SELECT 1 FROM webhook_deliveries p
                      WHERE p.endpoint_id = d.endpoint_id AND p.order_key = d.order_key
                        AND p.status = 'pending' AND p.seq < d.seq)
                ORDER BY d.next_attempt_at, d.seq
                LIMIT $3
                FOR UPDATE OF d SKIP LOCKED
            )
            UPDATE webhook_deliveries w
            SET leased_until = $2, attempts = w.attempts + 1, last_attempt_at = $1
            FROM due, webhook_endpoints e
            WHERE w.id = due.id AND e.id = w.endpoint_id
            RETURNING w.id, w.endpoint_id, w.event_id, w.event_type, w.order_key, w.payload,
                      w.attempts, w.created_at, e.url, e.secret_sealed
            """,
            now,
            lease_until,
            limit,
        )
        return [Claimed(**dict(r)) for r in rows]

    async def delivered(self, delivery: Claimed, now: datetime, status_code: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = $2,"
                " last_status_code = $3, last_error = NULL, leased_until = NULL"
                " WHERE id = $1 AND status = 'pending'",
                delivery.id,
                now,
                status_code,
            )
            await conn.execute(
                "UPDATE webhook_endpoints SET failure_streak = 0, last_success_at = $2"
                " WHERE id = $1",
                delivery.endpoint_id,
                now,
            )

    async def failed(
        self,
        delivery: Claimed,
        now: datetime,
        status_code: int | None,
        error: str,
        retry_at: datetime | None,
        disable_after: int,
    ) -> EndpointState:
        """Record a failed attempt: retry at `retry_at`, or give up (None). The endpoint's
        streak grows; at `disable_after` it is disabled (`just_disabled` says it was now)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE webhook_deliveries SET status = $2, next_attempt_at = COALESCE($3,"
                " next_attempt_at), last_status_code = $4, last_error = $5, leased_until = NULL"
                " WHERE id = $1 AND status = 'pending'",
                delivery.id,
                "pending" if retry_at is not None else "failed",
                retry_at,
                status_code,
                error[:1000],
            )
            row = await conn.fetchrow(
                "SELECT enabled, failure_streak FROM webhook_endpoints WHERE id = $1 FOR UPDATE",
                delivery.endpoint_id,
            )
            if row is None:  # deleted meanwhile
                return EndpointState(0, False)
            streak = row["failure_streak"] + 1
            just_disabled = row["enabled"] and streak >= disable_after
            await conn.execute(
                "UPDATE webhook_endpoints SET failure_streak = $2, last_failure_at = $3,"
                " last_error = $4, enabled = enabled AND NOT $5,"
                " disabled_reason = CASE WHEN $5 THEN 'failing' ELSE disabled_reason END,"
                " disabled_at = CASE WHEN $5 THEN $3 ELSE disabled_at END"
                " WHERE id = $1",
                delivery.endpoint_id,
                streak,
                now,
                error[:1000],
                just_disabled,
            )
        return EndpointState(streak, just_disabled)

    async def expire(self, older_than: datetime) -> int:
        """Give up pending deliveries of disabled endpoints past the retry window (the
        sender gives up those of enabled endpoints itself, at their next attempt)."""
        status = await self.pool.execute(
            "UPDATE webhook_deliveries d SET status = 'failed', leased_until = NULL,"
            " last_error = 'expired: the endpoint was disabled for the whole retry window'"
            " FROM webhook_endpoints e"
            " WHERE e.id = d.endpoint_id AND NOT e.enabled AND d.status = 'pending'"
            " AND d.created_at < $1",
            older_than,
        )
        return int(status.split()[-1])

    async def prune(self, older_than: datetime, limit: int = 10_000) -> int:
        """Delete finished entries of the delivery log older than the retention."""
        status = await self.pool.execute(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries"
            " WHERE status <> 'pending' AND created_at < $1 LIMIT $2)",
            older_than,
            limit,
        )
        return int(status.split()[-1])

    async def backlog(self) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT status, count(*) AS n FROM webhook_deliveries"
            " WHERE status = 'pending' GROUP BY status"
        )
        return {r["status"]: r["n"] for r in rows}

    async def disabled_failing(self) -> int:
        value = await self.pool.fetchval(
            "SELECT count(*) FROM webhook_endpoints"
            " WHERE NOT enabled AND disabled_reason = 'failing' AND deleted_at IS NULL"
        )
        return int(value or 0)
