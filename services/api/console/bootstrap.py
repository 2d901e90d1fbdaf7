"""The first console admin, from MAILFLEET_ADMIN_EMAIL and MAILFLEET_ADMIN_PASSWORD."""

from __future__ import annotations

import asyncio

import asyncpg

from libs.common.logging import get_logger
from services.api.console import passwords, users_repo
from services.api.keys import Role

log = get_logger(__name__)

# Two API instances starting together must not both create the admin.
_BOOTSTRAP_LOCK = 0x6D66636F  # "mfco"


async def ensure_first_admin(pool: asyncpg.Pool, email: str, password: str) -> bool:
    """Creates the admin when both are set and no active admin exists; True if it did.

    Never logs the password. A configured admin whose email exists already is left as it
    is (a changed password in the environment does not reset a password set in the console).
    """
    email = email.strip().lower()
    if not email or not password:
        return False
    password_hash = await asyncio.to_thread(passwords.hash_password, password)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK)
        if await users_repo.has_active_admin(conn):
            return False
        row = await users_repo.insert_user(conn, email, password_hash, Role.ADMIN.value)
    if row is not None:
        log.info("first console admin created", user_id=str(row["id"]))
    return row is not None
