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
        (failing, or in flight elsewhere): order per campaign. The heads are found with a
        loose index scan over the pending queues (one index probe per queue, however many
        deliveries wait behind each head); deliveries without an order key are taken from
        their own due index. The lease is taken by a conditional update, so two senders
        never both take one delivery, and an abandoned lease passes to another later.
        """
        candidates = await self.pool.fetch(
            """
            WITH RECURSIVE queues AS (
                (SELECT endpoint_id, order_key FROM webhook_deliveries
                 WHERE status = 'pending' AND order_key IS NOT NULL
                 ORDER BY endpoint_id, order_key LIMIT 1)
                UNION ALL
                SELECT n.endpoint_id, n.order_key
                FROM queues q, LATERAL (
                    SELECT d.endpoint_id, d.order_key FROM webhook_deliveries d
                    WHERE d.status = 'pending' AND d.order_key IS NOT NULL
                      AND (d.endpoint_id, d.order_key) > (q.endpoint_id, q.order_key)
                    ORDER BY d.endpoint_id, d.order_key LIMIT 1
                ) n
            ),
            heads AS (
                SELECT h.id, h.next_attempt_at, h.leased_until, h.endpoint_id
                FROM queues q, LATERAL (
                    SELECT d.id, d.next_attempt_at, d.leased_until, d.endpoint_id
                    FROM webhook_deliveries d
                    WHERE d.endpoint_id = q.endpoint_id AND d.order_key = q.order_key
                      AND d.status = 'pending'
                    ORDER BY d.seq LIMIT 1
                ) h
                UNION ALL
                (SELECT id, next_attempt_at, leased_until, endpoint_id
                 FROM webhook_deliveries
                 WHERE status = 'pending' AND order_key IS NULL AND next_attempt_at <= $1
                 ORDER BY next_attempt_at LIMIT $2)
            )
            SELECT h.id FROM heads h JOIN webhook_endpoints e ON e.id = h.endpoint_id
            WHERE h.next_attempt_at <= $1 AND (h.leased_until IS NULL OR h.leased_until <= $1)
              AND e.enabled AND e.deleted_at IS NULL
            ORDER BY h.next_attempt_at
            LIMIT $2
            """,
            now,
            limit,
        )
        if not candidates:
            return []
        rows = await self.pool.fetch(
            """
            UPDATE webhook_deliveries w
            SET leased_until = $3, attempts = w.attempts + 1, last_attempt_at = $2
            FROM webhook_endpoints e
            WHERE w.id = ANY ($1::uuid[]) AND e.id = w.endpoint_id AND w.status = 'pending'
              AND (w.leased_until IS NULL OR w.leased_until <= $2)
            RETURNING w.id, w.endpoint_id, w.event_id, w.event_type, w.order_key, w.payload,
                      w.attempts, w.created_at, e.url, e.secret_sealed
            """,
            [r["id"] for r in candidates],
            now,
            lease_until,
        )
        return [Claimed(**dict(r)) for r in rows]

    async def delivered(self, done: Sequence[tuple[Claimed, int]], now: datetime) -> None:
        """Record successful attempts (delivery, HTTP status): one transaction for all."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE webhook_deliveries w SET status = 'delivered', delivered_at = $3,"
                " last_status_code = u.code, last_error = NULL, leased_until = NULL"
                " FROM unnest($1::uuid[], $2::int[]) AS u (id, code)"
                " WHERE w.id = u.id AND w.status = 'pending'",
                [delivery.id for delivery, _ in done],
                [code for _, code in done],
                now,
            )
            await conn.execute(
                "UPDATE webhook_endpoints SET failure_streak = 0, last_success_at = $2"
                " WHERE id = ANY ($1::uuid[])",
                sorted({delivery.endpoint_id for delivery, _ in done}),
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
