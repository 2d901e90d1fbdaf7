"""The audit log, read by admins: who did what to which target, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from libs.web.problems import problem_responses
from services.api.audit import ActorKind, page_audit
from services.api.deps import IsAdmin, Resources
from services.api.pagination import BadCursor
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor
from services.api.schemas import Page

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditEntryOut(BaseModel):
    id: UUID
    created_at: datetime
    actor_kind: ActorKind = Field(description="What `actor_id` names: an API key or a user.")
    actor_id: str
    actor_name: str = Field(description="The key's or user's name when it acted.")
    action: str = Field(examples=["suppression.remove"])
    target_kind: str = Field(examples=["suppression"])
    target_id: str
    details: dict[str, Any]
    request_id: str | None = Field(None, description="The request's X-Request-Id.")


Filter = Annotated[str | None, Query(min_length=1, max_length=400)]
# Actions are "<thing>.<verb>" and kinds one word, as `record_audit` writes them.
ActionFilter = Annotated[
    str | None, Query(max_length=100, pattern=r"^[a-z_]+\.[a-z_]+$", examples=["list.delete"])
]
KindFilter = Annotated[
    str | None, Query(max_length=100, pattern=r"^[a-z_]+$", examples=["suppression"])
]


@router.get("", response_model=Page[AuditEntryOut], responses=problem_responses(401, 403, 422))
async def list_audit(
    resources: Resources,
    _: IsAdmin,
    action: ActionFilter = None,
    target_kind: KindFilter = None,
    target_id: Filter = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> Page[AuditEntryOut]:
    """Admin actions, newest first: API keys, users, suppressions, list deletes, campaign
    schedules, pauses, resumes, cancels and test sends. Records are never changed."""
    try:
        rows, next_cursor = await page_audit(
            resources.db, cursor, limit, action, target_kind, target_id
        )
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[AuditEntryOut](items=[AuditEntryOut(**r) for r in rows], next_cursor=next_cursor)
