"""PostgreSQL: the connection pool and the schema migrations every service applies at start."""

from __future__ import annotations

from importlib import resources
from typing import Any

import asyncpg
import orjson

from libs.common.logging import get_logger

log = get_logger(__name__)

# Any constant works; it only has to be the same in every service.
_MIGRATION_LOCK = 0x6D61696C  # "mail"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary format (version byte 1 + JSON text): works with binary COPY, and orjson is fast.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=120
    )
    assert pool is not None
    return pool


def _migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("libs.common") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet applied, under an advisory lock so services may race."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
            log.info("migration applied", migration=name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied


async def ping(pool: asyncpg.Pool) -> bool:
    try:
        return bool(await pool.fetchval("SELECT 1", timeout=2))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False


def record_to_dict(record: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(record) if record is not None else None
