"""Make sure an admin can get in: the configured bootstrap key, or a generated one."""

from __future__ import annotations

import sys
from typing import TextIO

import asyncpg

from libs.common.logging import get_logger
from services.api import repository
from services.api.keys import Role, display_prefix, generate_key, hash_key

log = get_logger(__name__)

# Two API instances starting together must not both generate a key.
_BOOTSTRAP_LOCK = 0x6D666B79  # "mfky"


def operator_terminal() -> TextIO | None:
    """Where a generated key may be shown: stderr when it is a terminal, else nowhere.

    Without a terminal, stdout and stderr are the log stream (containers, supervisors),
    and a key written there would be readable by whoever reads the logs.
    """
    return sys.stderr if sys.stderr.isatty() else None


def show_generated_key(key: str, terminal: TextIO) -> None:
    """The one place a generated key is written: the operator's terminal, never a log."""
    terminal.write(f"\nmailfleet admin API key (shown once, store it now): {key}\n\n")
    terminal.flush()


async def ensure_admin_key(
    pool: asyncpg.Pool, bootstrap_key: str, *, may_generate: bool = True
) -> str | None:
    """Returns a newly generated admin key (to show once), or None when none was generated.

    With `bootstrap_key` set, that key is stored (hashed, admin) if it is not already;
    a key an admin revoked stays revoked. Without it, a key is generated only when no
    active admin key exists and `may_generate` (there is a terminal to show it on).
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK)
        if bootstrap_key:
            row = await repository.insert_key(
                conn,
                "bootstrap",
                Role.ADMIN.value,
                display_prefix(bootstrap_key),
                hash_key(bootstrap_key),
            )
            if row is not None:
                log.info("bootstrap admin key stored", key_prefix=row["key_prefix"])
            return None
        if await repository.has_active_admin(conn):
            return None
        if not may_generate:
            log.error(
                "no admin API key exists and there is no terminal to show a generated one on; "
                "set MAILFLEET_BOOTSTRAP_API_KEY"
            )
            return None
        key = generate_key()
        await repository.insert_key(
            conn, "generated admin", Role.ADMIN.value, display_prefix(key), hash_key(key)
        )
        return key
