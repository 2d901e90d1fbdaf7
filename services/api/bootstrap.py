"""Make sure an admin can get in: the configured bootstrap key, or a generated one."""

from __future__ import annotations

import asyncpg

from libs.common.logging import get_logger
from services.api import repository
from services.api.keys import Role, display_prefix, generate_key, hash_key

log = get_logger(__name__)

# Two API instances starting together must not both generate a key.
_BOOTSTRAP_LOCK = 0x6D666B79  # "mfky"


async def ensure_admin_key(pool: asyncpg.Pool, bootstrap_key: str) -> str | None:
    """Returns a newly generated admin key (to show once), or None when none was generated.

    With `bootstrap_key` set, that key is stored (hashed, admin) if it is not already;
    a key an admin revoked stays revoked. Without it, a key is generated only when no
    active admin key exists.
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
        key = generate_key()
        await repository.insert_key(
            conn, "generated admin", Role.ADMIN.value, display_prefix(key), hash_key(key)
        )
        return key
