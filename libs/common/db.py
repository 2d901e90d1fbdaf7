"""PostgreSQL: the connection pool and the schema migrations every service applies at start."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import orjson

from libs.common.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")

# Any constant works; it only has to be the same in every service.
_MIGRATION_LOCK = 0x6D61696C  # "mail"
# Waiting for the database at start: first retry after this, doubling up to the cap.
_START_RETRY_S = 0.5
_START_RETRY_MAX_S = 5.0

# What a database that is down, restarting or recovering raises: a connection refused or
# reset, a server shutting down or not yet accepting connections. Such an error is the
# database's, not the data's, so work waits for it to come back instead of failing.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    asyncpg.PostgresConnectionError,  # class 08: the connection broke
    asyncpg.CannotConnectNowError,  # recovering after a crash, starting up
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,  # every client reconnects at once after a restart
)

_DROPPED: tuple[type[BaseException], ...] = (*_UNAVAILABLE, asyncpg.InterfaceError)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached now (not that a query is wrong)."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    # asyncpg reports a connection that died under it as an InterfaceError.
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary format (version byte 1 + JSON text): works with binary COPY, and orjson is fast.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, less asyncpg's default reset query.

    asyncpg sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` on
    every release: a round trip that doubled the cost of each pooled query (measured: 165 us
    of client and server CPU per query). No pooled connection holds session state to undo:
    settings are `SET LOCAL`, advisory locks transaction-scoped, no LISTEN, no held cursors
    (`tests/test_no_session_state.py` keeps it so). What a reset must still do, asyncpg does
    before calling this: roll back an open transaction, drop listeners.
    """


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=120,
        reset=_no_session_reset,
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
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        except _DROPPED:
            conn.terminate()  # the database dropped the connection, and the lock with it
        else:
            await conn.close()
    return applied


async def migrate_when_ready(dsn: str, stop: asyncio.Event | None = None) -> list[str]:
    """`migrate`, retried with backoff while the database is unavailable (or until `stop`):
    a service started during a database restart waits for it instead of exiting."""
    return await _when_ready(lambda: migrate(dsn), "migrations", stop)


async def create_pool_when_ready(
    dsn: str, stop: asyncio.Event | None = None, *, max_size: int = 10
) -> asyncpg.Pool:
    """`create_pool`, retried while the database is unavailable (it opens a connection)."""
    return await _when_ready(lambda: create_pool(dsn, max_size=max_size), "pool", stop)


async def _when_ready(
    attempt: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event | None
) -> T:
    delay = _START_RETRY_S
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_unavailable(exc) or (stop is not None and stop.is_set()):
                raise
            log.warning("database unavailable; waiting", waiting=what, error=repr(exc))
        await asyncio.sleep(delay)
        delay = min(delay * 2, _START_RETRY_MAX_S)


async def ping(pool: asyncpg.Pool) -> bool:
    try:
        return bool(await pool.fetchval("SELECT 1", timeout=2))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False


def record_to_dict(record: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(record) if record is not None else None
