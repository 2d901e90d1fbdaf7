"""The status of the campaigns this dispatcher is sending, read from PostgreSQL.

`campaigns.status` is where the API's pause / resume / cancel land first (the API writes it
before it publishes `campaign.control`), so it is the truth every dispatcher agrees on,
whatever it has read of the control topic. Statuses are cached and refreshed every
`refresh_s`, and at once when a `campaign.control` event names a campaign (`poke`). The
campaign's rate cap (`max_per_hour`, issue 17 item 4) is read and refreshed with it, so a
cap changed while the campaign sends applies within a refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from uuid import UUID

import asyncpg

from libs.common import db
from libs.common.logging import get_logger

log = get_logger(__name__)

_NO_ROW = None


class CampaignStatuses:
    def __init__(
        self, pool: asyncpg.Pool, *, refresh_s: float = 0.5, forget_after_s: float = 120.0
    ) -> None:
        self._pool = pool
        self.refresh_s = refresh_s
        self._forget_after_s = forget_after_s
        self._status: dict[UUID, str | None] = {}
        self._cap: dict[UUID, int | None] = {}
        self._last_seen: dict[UUID, float] = {}
        self._refreshed_at = 0.0
        self._poked = asyncio.Event()

    def latest(self, campaign_id: UUID) -> str | None:
        """The cached status (no I/O): what waiting batches check between refreshes."""
        self._last_seen[campaign_id] = time.monotonic()
        return self._status.get(campaign_id)

    async def current(self, campaign_id: UUID) -> str | None:
        """The status, from the cache when it is fresh, else from the database."""
        self._last_seen[campaign_id] = time.monotonic()
        fresh = time.monotonic() - self._refreshed_at < 2 * self.refresh_s
        if fresh and campaign_id in self._status:
            return self._status[campaign_id]
        return await self.confirmed(campaign_id)

    async def confirmed(self, campaign_id: UUID) -> str | None:
        """The status as the database says it now."""
        self._last_seen[campaign_id] = time.monotonic()
        await self._load([campaign_id])
        return self._status.get(campaign_id)

    def cap(self, campaign_id: UUID) -> int | None:
        """The campaign's `max_per_hour` as last read (None: no cap, or not read yet)."""
        return self._cap.get(campaign_id)

    def poke(self, campaign_id: UUID) -> None:
        """A control event named this campaign: refresh now if we are sending it."""
        if campaign_id in self._status:
            self._poked.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.refresh_s)
            self._poked.clear()
            try:
                self._forget_idle()
                await self._load(list(self._status))
            except Exception as exc:
                if not db.is_unavailable(exc) and not isinstance(exc, asyncpg.PostgresError):
                    raise
                log.warning("campaign status refresh failed; retrying", error=repr(exc))

    def _forget_idle(self) -> None:
        cutoff = time.monotonic() - self._forget_after_s
        for campaign_id in [c for c, seen in self._last_seen.items() if seen < cutoff]:
            self._last_seen.pop(campaign_id, None)
            self._status.pop(campaign_id, None)
            self._cap.pop(campaign_id, None)

    async def _load(self, campaign_ids: Iterable[UUID]) -> None:
        wanted = list(campaign_ids)
        started = time.monotonic()
        rows = await self._pool.fetch(
            "SELECT id, status, max_per_hour FROM campaigns WHERE id = ANY($1::uuid[])", wanted
        )
        found = {r["id"]: r["status"] for r in rows}
        caps = {r["id"]: r["max_per_hour"] for r in rows}
        for campaign_id in wanted:
            self._status[campaign_id] = found.get(campaign_id, _NO_ROW)
            self._cap[campaign_id] = caps.get(campaign_id)
        if len(wanted) == len(self._status):
            self._refreshed_at = started
