"""Campaign audiences on the API's side (issue 15 item 2): validate a definition, copy its
segments' filters into the campaign, and count it before the scheduler plans it.

The definition and its SQL are libs/common/audience.py's; the scheduler plans from the
campaign's copy of the filters, so it never reads the API's `segments` table.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.common import audience as audiences
from libs.common import segments
from libs.common.logging import get_logger
from libs.web.problems import FieldError, ProblemError
from services.api import repository
from services.api.repository import Executor

log = get_logger(__name__)

# A count before planning reads the audience as the plan would: give it a bound.
COUNT_TIMEOUT_MS = 10_000


def _problem(where: str, path: str, message: str) -> ProblemError:
    field = f"{where}{path[1:]}"
    return ProblemError(
        422,
        f"{field.removeprefix('body.')}: {message}",
        kind="validation",
        errors=[FieldError(field=field, message=message)],
    )


async def resolve(
    db: Executor, raw: dict[str, Any], where: str = "body.audience"
) -> tuple[audiences.Audience, dict[str, Any]]:
    """The validated definition and the copy of its segments' filters; a 422 whose
    `errors[0].field` names the bad member (`body.audience.segments[1]`)."""
    try:
        audience = audiences.parse(raw)
    except audiences.AudienceError as exc:
        raise _problem(where, exc.path, exc.message) from exc
    found_lists = await repository.existing_lists(db, list(audience.list_ids))
    for kind in ("lists", "exclude_lists"):
        for i, list_id in enumerate(getattr(audience, kind)):
            if list_id not in found_lists:
                raise _problem(where, f"$.{kind}[{i}]", f"no list with id {list_id}")
    filters = await repository.segment_filters(db, list(audience.segment_ids))
    for kind in ("segments", "exclude_segments"):
        for i, segment_id in enumerate(getattr(audience, kind)):
            if segment_id not in filters:
                raise _problem(where, f"$.{kind}[{i}]", f"no segment with id {segment_id}")
            try:
                segments.parse(filters[segment_id])
            except segments.SegmentError as exc:
                raise _problem(
                    where, f"$.{kind}[{i}]", f"the segment's filter is not usable: {exc}"
                ) from exc
    return audience, {str(k): v for k, v in filters.items()}


def columns(audience: audiences.Audience, filters: dict[str, Any]) -> dict[str, Any]:
    """The campaign columns an audience sets."""
    return {
        "list_id": audience.primary_list,
        "audience": audience.to_json(),
        "audience_filters": filters,
    }


async def count_now(db: asyncpg.Pool, row: dict[str, Any]) -> int | None:
    """How many addresses the campaign's audience holds now, suppressed ones included (the
    plan's `total`), from its copy of the segment filters; None if it cannot be counted in
    time."""
    try:
        audience = audiences.Audience.of_campaign(row["audience"], row["list_id"])
        filters = audiences.parse_filters(
            audience, await repository.audience_filters(db, row["id"])
        )
    except audiences.AudienceError as exc:
        log.warning("campaign audience not countable", campaign_id=str(row["id"]), reason=str(exc))
        return None
    built = audiences.build_count(audience, filters, now=datetime.now(UTC))
    started = time.perf_counter()
    try:
        async with db.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}")
            value = await conn.fetchval(built.sql, *built.params)
    except asyncpg.QueryCanceledError:
        log.warning(
            "campaign audience count timed out",
            campaign_id=str(row["id"]),
            seconds=round(time.perf_counter() - started, 3),
        )
        return None
    return int(value)
