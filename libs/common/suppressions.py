"""Every write to the suppression list outside the tracker's folds goes through here.

The tracker adds suppressions from bounces, spam reports and unsubscribes inside its
exactly-once folds; admins add and remove them through the API with these functions.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def add_suppression(
    pool: asyncpg.Pool, email: str, reason: str = "manual", source: str | None = None
) -> bool:
    """Suppress an address; False when it already was (its first reason is kept)."""
    if reason not in ("unsubscribe", "bounce", "spamreport", "manual"):
        raise ValueError(f"unknown suppression reason {reason!r}")
    inserted: datetime | None = await pool.fetchval(
        "INSERT INTO suppressions (email, reason, source) VALUES ($1, $2, $3)"
        " ON CONFLICT (email) DO NOTHING RETURNING created_at",
        email.strip().lower(),
        reason,
        source,
    )
    return inserted is not None


async def remove_suppression(pool: asyncpg.Pool, email: str) -> bool:
    """Mail this address again; False when it was not suppressed."""
    removed = await pool.fetchval(
        "DELETE FROM suppressions WHERE email = $1 RETURNING email", email.strip().lower()
    )
    return removed is not None


async def suppressed_among(pool: asyncpg.Pool, emails: list[str]) -> set[str]:
    """Which of these addresses (lower-cased) are suppressed now: one query for a batch."""
    if not emails:
        return set()
    rows = await pool.fetch(
        "SELECT email FROM suppressions WHERE email = ANY($1::text[])",
        sorted({e.strip().lower() for e in emails}),
    )
    return {r["email"] for r in rows}
