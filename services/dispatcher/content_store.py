"""Frozen campaign content (table content_snapshots, written by the scheduler), cached.

Snapshots never change once written, so a cache entry never goes stale.
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID

import asyncpg

from libs.mail.rendering import Content

_CACHE_SIZE = 256


class ContentRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cache: OrderedDict[UUID, Content] = OrderedDict()

    async def get(self, content_id: UUID) -> Content | None:
        cached = self._cache.get(content_id)
        if cached is not None:
            self._cache.move_to_end(content_id)
            return cached
        row = await self._pool.fetchrow(
            "SELECT id, campaign_id, subject, html, text, from_email, from_name"
            " FROM content_snapshots WHERE id = $1",
            content_id,
        )
        if row is None:
            return None
        content = Content(**dict(row))
        self._cache[content_id] = content
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return content
