"""Every write to the suppression list outside the tracker's folds goes through here.

The tracker adds suppressions from bounces, spam reports and unsubscribes inside its
exactly-once folds; admins add and remove them through the API with these functions.

Who may remove what: a manual suppression is anyone's with the right to edit; one that
records the recipient's own choice or the provider's verdict (an unsubscribe, a spam
report, a bounce) only a privileged caller's (the API: an admin), with a written reason.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Removing one of these could mail someone who asked not to be, or who complained.
PROTECTED_REASONS = frozenset({"unsubscribe", "bounce", "spamreport"})
MAX_JUSTIFICATION = 500


class RemovalRefused(Exception):
    """The caller may not remove this suppression (or must say why)."""

    def __init__(self, message: str, *, needs_privilege: bool) -> None:
        super().__init__(message)
        self.needs_privilege = needs_privilege


def check_removal(reason: str, *, privileged: bool, justification: str | None) -> None:
    """Raises RemovalRefused unless a caller so privileged may remove a `reason` suppression."""
    if reason not in PROTECTED_REASONS:
        return
    if not privileged:
        raise RemovalRefused(
            f"this address is suppressed because of a {reason}: only an admin may remove it,"
            " with a reason",
            needs_privilege=True,
        )
    if not (justification or "").strip():
        raise RemovalRefused(
            f"this address is suppressed because of a {reason}: say why it may be mailed again"
            " (removal_reason)",
            needs_privilege=False,
        )


async def add_suppression(
    pool: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy,
    email: str,
    reason: str = "manual",
    source: str | None = None,
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


async def remove_suppression(
    conn: asyncpg.Connection | PoolConnectionProxy,
    email: str,
    *,
    privileged: bool,
    justification: str | None = None,
) -> str | None:
    """Mail this address again. Returns the removed suppression's reason, None when it was
    not suppressed; RemovalRefused when `check_removal` says no.

    Call inside a transaction: the row is locked between the check and the delete, so a
    concurrent unsubscribe cannot slip in as the manual suppression being removed.
    """
    address = email.strip().lower()
    reason: str | None = await conn.fetchval(
        "SELECT reason FROM suppressions WHERE email = $1 FOR UPDATE", address
    )
    if reason is None:
        return None
    check_removal(reason, privileged=privileged, justification=justification)
    await conn.execute("DELETE FROM suppressions WHERE email = $1", address)
    return reason


async def suppressed_among(pool: asyncpg.Pool, emails: list[str]) -> set[str]:
    """Which of these addresses (lower-cased) are suppressed now: one query for a batch."""
    if not emails:
        return set()
    rows = await pool.fetch(
        "SELECT email FROM suppressions WHERE email = ANY($1::text[])",
        sorted({e.strip().lower() for e in emails}),
    )
    return {r["email"] for r in rows}
