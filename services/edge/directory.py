"""The edge's read-only look at two views (migration 0027): `edge_lists` and
`edge_recipients`. Display and routing only.

The subscribe form names a list by its public id, and the preference centre shows the
person's list and fields: both need a read. Every decision (who is on which list, whether a
confirmation is sent) is the importer's, on the events the edge publishes. When the
database cannot be reached, `Unavailable` is raised: the subscribe form answers 503, the
preference centre falls back to the plain unsubscribe page (one-click unsubscribes never
read anything).

Lists are cached for `LIST_CACHE_S` (a list's opt-in changes rarely; the importer reads the
current one when it decides).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.db import create_pool
from libs.common.logging import get_logger

log = get_logger(__name__)

LIST_CACHE_S = 30.0
MAX_CACHED_LISTS = 10_000
QUERY_TIMEOUT_S = 3.0


class Unavailable(Exception):
    """The database could not be read."""


@dataclass(frozen=True)
class PublicList:
    id: UUID
    name: str
    opt_in: str
    editable_fields: tuple[str, ...]


@dataclass(frozen=True)
class Member:
    recipient_id: int
    list_id: UUID
    email: str
    status: str
    fields: dict[str, Any]
    list_name: str
    opt_in: str
    editable_fields: tuple[str, ...]
    # Unsubscribed from everything (or otherwise suppressed): no list mails them.
    suppressed: bool = False


class Directory:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._lists: dict[str, tuple[float, PublicList | None]] = {}

    async def _get_pool(self) -> asyncpg.Pool:
        if not self.dsn:
            raise Unavailable("DATABASE_URL is not set")
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncio.wait_for(
                        create_pool(self.dsn, min_size=0, max_size=4), QUERY_TIMEOUT_S
                    )
                except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                    raise Unavailable(str(exc)) from exc
            return self._pool

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        pool = await self._get_pool()
        try:
            # The bound covers connecting too (the pool connects lazily).
            return await asyncio.wait_for(pool.fetchrow(query, *args), QUERY_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("edge directory read failed", error=str(exc)[:200])
            raise Unavailable(str(exc)) from exc

    async def list_by_public_id(self, public_id: str) -> PublicList | None:
        cached = self._lists.get(public_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        row = await self._fetchrow(
            "SELECT id, name, opt_in, editable_fields FROM edge_lists WHERE public_id = $1",
            public_id,
        )
        found = (
            PublicList(row["id"], row["name"], row["opt_in"], tuple(row["editable_fields"]))
            if row is not None
            else None
        )
        if len(self._lists) >= MAX_CACHED_LISTS:
            self._lists.clear()
        self._lists[public_id] = (time.monotonic() + LIST_CACHE_S, found)
        return found

    async def member(self, recipient_id: int) -> Member | None:
        row = await self._fetchrow(
            "SELECT id, list_id, email, status, fields, list_name, opt_in, editable_fields,"
            " suppressed FROM edge_recipients WHERE id = $1",
            recipient_id,
        )
        if row is None:
            return None
        return Member(
            row["id"],
            row["list_id"],
            row["email"],
            row["status"],
            dict(row["fields"] or {}),
            row["list_name"],
            row["opt_in"],
            tuple(row["editable_fields"]),
            bool(row["suppressed"]),
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
