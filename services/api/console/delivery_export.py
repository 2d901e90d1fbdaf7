"""A campaign's delivery log as CSV, streamed from a server-side cursor (10M rows must not
sit in memory), with spreadsheet formulas neutralised like the rejected-rows download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg

from libs.stats import read_models
from services.api.routes.import_rejections import csv_rows

COLUMNS = ("recipient_id", "email", "status", "message_id", "error", "sent_at", "last_event")
_CHUNK_ROWS = 2000


def _cell(value: object) -> str:
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


async def delivery_csv(
    pool: asyncpg.Pool, campaign_id: UUID, status: str | None
) -> AsyncIterator[str]:
    # The condition comes from read_models' fixed table, never from the request.
    condition = read_models.DELIVERY_FILTERS[status] if status else "true"
    yield "\ufeff" + csv_rows([list(COLUMNS)])
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        chunk: list[list[str]] = []
        cursor = conn.cursor(
            f"SELECT {', '.join(COLUMNS)} FROM deliveries"  # noqa: S608 - fixed fragments
            f" WHERE campaign_id = $1 AND {condition} ORDER BY recipient_id",
            campaign_id,
            prefetch=_CHUNK_ROWS,
        )
        async for record in cursor:
            chunk.append([_cell(record[c]) for c in COLUMNS])
            if len(chunk) >= _CHUNK_ROWS:
                yield csv_rows(chunk)
                chunk = []
        if chunk:
            yield csv_rows(chunk)
