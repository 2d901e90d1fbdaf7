"""Read the `provider_status` table for the Settings page.

The dispatchers own and write it (each instance, every few seconds); the console only
shows it. A row not updated for over a minute belongs to an instance that stopped or is
stuck: it is shown, marked stale, so an operator sees that its state may be out of date.
"""

from __future__ import annotations

from services.api.repository import Executor, Row

STALE_AFTER_S = 60
_MAX_ROWS = 200


async def provider_statuses(db: Executor) -> list[Row]:
    """Per provider, its instances: fresh ones first, then the newest stale ones."""
    records = await db.fetch(
        "SELECT instance, provider, breaker_state, breaker_reason, rate_limit_per_s,"
        " last_error, last_error_at, updated_at,"
        " updated_at < now() - make_interval(secs => $1) AS stale"
        " FROM provider_status ORDER BY provider, stale, updated_at DESC, instance LIMIT $2",
        STALE_AFTER_S,
        _MAX_ROWS,
    )
    return [dict(r) for r in records]
