"""Saved segments (migration 0024) and their counts.

The filter is compiled by `libs/common/segments.py`; this module only adds the fixed SQL
around it. Values, field names included, travel as parameters.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from libs.common import segments
from services.api.repository import Executor, Row, _page

_COLUMNS = "id, name, description, filter, created_at, updated_at"
# A count reads the whole recipients table (and the delivery log for engagement): give it
# memory for its hash joins, and a bound.
COUNT_WORK_MEM = "64MB"
COUNT_TIMEOUT_MS = 30_000


async def insert_segment(
    db: Executor, name: str, description: str | None, filter_: dict[str, Any]
) -> Row:
    record = await db.fetchrow(
        f"INSERT INTO segments (name, description, filter) VALUES ($1, $2, $3)"  # noqa: S608
        f" RETURNING {_COLUMNS}",
        name,
        description,
        filter_,
    )
    assert record is not None
    return dict(record)


async def get_segment(db: Executor, segment_id: UUID) -> Row | None:
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM segments WHERE id = $1",  # noqa: S608
        segment_id,
    )
    return dict(record) if record is not None else None


async def page_segments(
    db: Executor, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    return await _page(db, f"SELECT {_COLUMNS} FROM segments", [], [], cursor, limit)  # noqa: S608


async def update_segment(db: Executor, segment_id: UUID, changes: dict[str, Any]) -> Row | None:
    """`changes` holds only the columns to set (name, description, filter)."""
    sets: list[str] = []
    args: list[Any] = [segment_id]
    for column in ("name", "description", "filter"):
        if column in changes:
            args.append(changes[column])
            sets.append(f"{column} = ${len(args)}")
    sets.append("updated_at = now()")
    record = await db.fetchrow(
        f"UPDATE segments SET {', '.join(sets)} WHERE id = $1 RETURNING {_COLUMNS}",  # noqa: S608
        *args,
    )
    return dict(record) if record is not None else None


async def campaigns_to_plan_with(db: Executor, segment_id: UUID) -> int:
    """Draft and scheduled campaigns whose audience names the segment: they copy its filter
    when they are scheduled (a started campaign planned with its own copy)."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM campaigns WHERE status IN ('draft', 'scheduled')"
            " AND (audience -> 'segments' ? $1::text OR audience -> 'exclude_segments' ? $1::text)",
            str(segment_id),
        )
    )


async def delete_segment(db: Executor, segment_id: UUID) -> bool:
    return (
        await db.fetchval("DELETE FROM segments WHERE id = $1 RETURNING id", segment_id) is not None
    )


async def count(db: asyncpg.Pool, node: segments.Node) -> tuple[int, datetime, float]:
    """(distinct addresses, the moment "within N days" counted from, seconds taken)."""
    now = datetime.now(UTC)
    compiled = segments.compile_filter(node, now=now)
    started = time.perf_counter()
    async with db.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL work_mem = '{COUNT_WORK_MEM}'")
        await conn.execute(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}")
        value = await conn.fetchval(compiled.count_sql(), *compiled.params)
    return int(value), now, time.perf_counter() - started
