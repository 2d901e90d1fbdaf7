"""Every write to the suppression list outside the tracker's folds goes through here.

The tracker adds suppressions from bounces, spam reports and unsubscribes inside its
exactly-once folds; admins add and remove them through the API with these functions.

Who may remove what: a manual suppression is anyone's with the right to edit; one that
records the recipient's own choice or the provider's verdict (an unsubscribe, a spam
report, a bounce) only a privileged caller's (the API: an admin), with a written reason.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Removing one of these could mail someone who asked not to be, or who complained.
PROTECTED_REASONS = frozenset({"unsubscribe", "bounce", "spamreport", "erased"})
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
    if reason not in ("unsubscribe", "bounce", "spamreport", "manual", "erased"):
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


# ---- erased people (issue 15 item 5) ---------------------------------------------------
#
# An erasure keeps only a keyed hash of the address in the suppression list:
# `email = 'erased:<bucket>:<hex HMAC-SHA256>'`, reason `erased`. The key is derived from
# MAILFLEET_SECRET_KEY and never stored: a copy of the database alone cannot tell whether
# a guessed address was erased. Every writer of `recipients` refuses an address whose
# token is there (the importer in bulk through `mailfleet_erased_token`, migration 0024;
# the API one address at a time), so no recipient row, and so no plan of the scheduler,
# ever holds an erased address again.

ERASED_PREFIX = "erased:"
# Tokens sort between these two strings (the column is COLLATE "C"): a range of the key.
ERASED_RANGE_SQL = "email >= 'erased:' AND email < 'erased;'"
_HMAC_BLOCK = 64


def erasure_key(secret_key: str) -> bytes:
    """The key of erased-address tokens, derived from the secret key (so that it is not the
    key that signs links, and the secret itself is never sent to the database)."""
    if not secret_key:
        raise ValueError("MAILFLEET_SECRET_KEY is not set: erased addresses cannot be hashed")
    return hmac.new(secret_key.encode(), b"mailfleet erasure v1", hashlib.sha256).digest()


@dataclass(frozen=True)
class ErasureKey:
    """What SQL needs to compute tokens: the HMAC pads and the bucket's seed."""

    ipad: bytes
    opad: bytes
    seed: int

    @classmethod
    def of(cls, key: bytes) -> ErasureKey:
        padded = key.ljust(_HMAC_BLOCK, b"\0")
        seed = hmac.new(key, b"bucket", hashlib.sha256).digest()[:8]
        return cls(
            bytes(b ^ 0x36 for b in padded),
            bytes(b ^ 0x5C for b in padded),
            int.from_bytes(seed, "big", signed=True),
        )


def hmac_part(address: str, key: bytes) -> str:
    """The HMAC hex digest that ends an address's token (the bucket is computed in SQL)."""
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


async def erased_token(
    db: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy, address: str, key: bytes
) -> str:
    """The suppression-list entry that stands for an erased (normalised) address:
    `erased:<bucket>:<hex HMAC-SHA256>` (migration 0024's `mailfleet_erased_token`)."""
    k = ErasureKey.of(key)
    token: str = await db.fetchval(
        "SELECT mailfleet_erased_token($1, $2, $3, $4)", address, k.ipad, k.opad, k.seed
    )
    return token


async def any_erased(db: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy) -> bool:
    """Whether anyone was ever erased (the bulk checks are skipped otherwise)."""
    return bool(
        await db.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM suppressions WHERE {ERASED_RANGE_SQL})"  # noqa: S608
        )
    )


async def is_erased(
    db: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy, address: str, key: bytes
) -> bool:
    token = await erased_token(db, address.strip().lower(), key)
    return bool(
        await db.fetchval("SELECT EXISTS (SELECT 1 FROM suppressions WHERE email = $1)", token)
    )
