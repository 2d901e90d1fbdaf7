"""The `provider_status` table (owned by the dispatcher, read by the console)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from services.dispatcher.provider_status import ProviderStatus

# Rows of instances gone for this long are deleted: every restart is a new instance.
_FORGET_AFTER = timedelta(days=1)


class PostgresStatusStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def publish(self, instance: str, statuses: list[ProviderStatus]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO provider_status (instance, provider, breaker_state,"
                " breaker_reason, rate_limit_per_s, last_error, last_error_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, now())"
                " ON CONFLICT (instance, provider) DO UPDATE SET"
                " breaker_state = excluded.breaker_state,"
                " breaker_reason = excluded.breaker_reason,"
                " rate_limit_per_s = excluded.rate_limit_per_s,"
                " last_error = excluded.last_error, last_error_at = excluded.last_error_at,"
                " updated_at = now()",
                [
                    (
                        instance[:200],
                        s.provider,
                        s.breaker_state,
                        s.breaker_reason,
                        s.rate_limit_per_s,
                        s.last_error,
                        s.last_error_at,
                    )
                    for s in statuses
                ],
            )
            await conn.execute(
                "DELETE FROM provider_status WHERE updated_at < now() - $1::interval",
                _FORGET_AFTER,
            )
