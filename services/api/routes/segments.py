"""Segments: saved filters over recipients (issue 15 item 1), and how many people each holds.

A filter is JSON (`and`, `or`, `not` over merge fields, list membership, suppression and
engagement; see `libs/common/segments.py`). It is validated when saved, naming the bad
node by its JSON path, and compiled to parameterised SQL each time it is counted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from libs.common import segments
from libs.common.logging import get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import segments_repo
from services.api.audit import Target, record_audit
from services.api.deps import CanEdit, CanRead, Resources
from services.api.pagination import BadCursor
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.schemas import Page, Strict, Text

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/segments", tags=["segments"])

MAX_FILTER_BYTES = 64 * 1024
_FILTER_DOC = (
    'The filter, e.g. `{"and": [{"field": "city", "op": "eq", "value": "Pune"},'
    ' {"engaged": "opened", "within_days": 30}]}`. See the README\'s Segments section.'
)
_EXAMPLE = {
    "and": [
        {"field": "city", "op": "eq", "value": "Pune"},
        {"engaged": "opened", "within_days": 30},
    ]
}


class SegmentCreate(Strict):
    name: Text = Field(min_length=1, max_length=200, examples=["Pune, opened lately"])
    description: Text | None = Field(None, max_length=2000)
    filter: dict[str, Any] = Field(description=_FILTER_DOC, examples=[_EXAMPLE])


class SegmentUpdate(Strict):
    """Only the members given change."""

    name: Text | None = Field(None, min_length=1, max_length=200)
    description: Text | None = Field(None, max_length=2000)
    filter: dict[str, Any] | None = Field(None, description=_FILTER_DOC)


class SegmentOut(BaseModel):
    id: UUID
    name: str
    description: str | None
    filter: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class SegmentCount(BaseModel):
    segment_id: UUID
    count: int = Field(description="Distinct addresses of the recipients the filter matches.")
    as_of: datetime = Field(description='The moment "within N days" was counted back from.')
    elapsed_ms: float = Field(description="Time the database took to count.")


def checked_filter(raw: dict[str, Any]) -> segments.Node:
    """The parsed filter, or a 422 naming the bad node (`$.and[1].op`)."""
    try:
        size = len(orjson.dumps(raw))
    except orjson.JSONEncodeError as exc:  # lone surrogates, or nested past orjson's limit
        raise _bad_filter("$", f"not storable as JSON: {exc}") from exc
    if size > MAX_FILTER_BYTES:
        raise _bad_filter("$", f"a filter is at most {MAX_FILTER_BYTES} bytes of JSON")
    try:
        return segments.parse(raw)
    except segments.SegmentError as exc:
        raise _bad_filter(exc.path, exc.message) from exc


def _bad_filter(path: str, message: str) -> ProblemError:
    return ProblemError(
        422,
        f"filter: {path}: {message}",
        kind="invalid-segment",
        errors=[FieldError(field=f"body.filter{path[1:]}", message=f"{path}: {message}")],
    )


@router.post(
    "", status_code=201, response_model=SegmentOut, responses=problem_responses(401, 403, 413, 422)
)
async def create_segment(body: SegmentCreate, resources: Resources, caller: CanEdit) -> SegmentOut:
    """Save a filter. A bad one is a 422 whose `errors[0].field` points at the bad node."""
    checked_filter(body.filter)
    async with resources.db.acquire() as conn, conn.transaction():
        row = await segments_repo.insert_segment(conn, body.name, body.description, body.filter)
        await record_audit(conn, caller.actor, "segment.create", Target("segment", str(row["id"])))
    log.info("segment created", segment_id=str(row["id"]))
    return SegmentOut(**row)


@router.get("", response_model=Page[SegmentOut], responses=problem_responses(401, 422))
async def list_segments(
    resources: Resources, _: CanRead, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
) -> Page[SegmentOut]:
    """Newest first."""
    try:
        rows, next_cursor = await segments_repo.page_segments(resources.db, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[SegmentOut](items=[SegmentOut(**r) for r in rows], next_cursor=next_cursor)


@router.get("/{segment_id}", response_model=SegmentOut, responses=problem_responses(401, 404, 422))
async def get_segment(segment_id: UUID, resources: Resources, _: CanRead) -> SegmentOut:
    row = await segments_repo.get_segment(resources.db, segment_id)
    if row is None:
        raise not_found("segment", segment_id)
    return SegmentOut(**row)


@router.patch(
    "/{segment_id}",
    response_model=SegmentOut,
    responses=problem_responses(401, 403, 404, 413, 422),
)
async def update_segment(
    segment_id: UUID, body: SegmentUpdate, resources: Resources, caller: CanEdit
) -> SegmentOut:
    """Rename, describe, or replace the filter (a new filter is validated as at creation)."""
    changes = body.model_dump(exclude_unset=True)
    for member in ("name", "filter"):
        if member in changes and changes[member] is None:
            raise ProblemError(
                422,
                f"{member} cannot be null",
                kind="validation",
                errors=[FieldError(field=f"body.{member}", message="cannot be null")],
            )
    if body.filter is not None:
        checked_filter(body.filter)
    async with resources.db.acquire() as conn, conn.transaction():
        row = await segments_repo.update_segment(conn, segment_id, changes)
        if row is None:
            raise not_found("segment", segment_id)
        await record_audit(
            conn,
            caller.actor,
            "segment.update",
            Target("segment", str(segment_id)),
            {"changed": sorted(changes)},
        )
    return SegmentOut(**row)


@router.delete(
    "/{segment_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def delete_segment(segment_id: UUID, resources: Resources, caller: CanEdit) -> Response:
    """A segment that a draft or scheduled campaign's audience names is kept (409): the
    campaign copies its filter when it is scheduled."""
    async with resources.db.acquire() as conn, conn.transaction():
        using = await segments_repo.campaigns_to_plan_with(conn, segment_id)
        if using:
            raise ProblemError(
                409,
                f"cannot delete: {using} draft or scheduled campaign(s) name this segment in"
                " their audience; change their audience first",
                kind="segment-in-use",
            )
        if not await segments_repo.delete_segment(conn, segment_id):
            raise not_found("segment", segment_id)
        await record_audit(conn, caller.actor, "segment.delete", Target("segment", str(segment_id)))
    log.info("segment deleted", segment_id=str(segment_id))
    return Response(status_code=204)


@router.get(
    "/{segment_id}/count",
    response_model=SegmentCount,
    responses=problem_responses(401, 404, 422, 503),
)
async def count_segment(segment_id: UUID, resources: Resources, _: CanRead) -> SegmentCount:
    """How many people (distinct addresses) the segment holds now."""
    row = await segments_repo.get_segment(resources.db, segment_id)
    if row is None:
        raise not_found("segment", segment_id)
    node = checked_filter(row["filter"])
    try:
        value, as_of, seconds = await segments_repo.count(resources.db, node)
    except asyncpg.QueryCanceledError as exc:
        raise ProblemError(
            503,
            f"counting took longer than {segments_repo.COUNT_TIMEOUT_MS // 1000} s; try a"
            " narrower filter",
            kind="count-timeout",
        ) from exc
    log.info("segment counted", segment_id=str(segment_id), count=value, seconds=round(seconds, 3))
    return SegmentCount(segment_id=segment_id, count=value, as_of=as_of, elapsed_ms=seconds * 1000)
