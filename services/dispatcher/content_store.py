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
            # The list only names the List-Id and Feedback-ID headers: a campaign that started
            # is never deleted, and a missing one just gives the per-domain List-Id.
            "SELECT s.id, s.campaign_id, s.subject, s.html, s.text, s.from_email, s.from_name,"
            # Tracking is set while the campaign is editable, so it is fixed once it sends.
            " c.list_id, coalesce(c.tracking, false) AS tracking"
            " FROM content_snapshots s LEFT JOIN campaigns c ON c.id = s.campaign_id"
            " WHERE s.id = $1",
            content_id,
        )
        if row is None:
            return None
        content = Content(**dict(row))
        self._cache[content_id] = content
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return content
