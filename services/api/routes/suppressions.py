"""The suppression list: addresses no campaign mails (read by viewers, edited by editors).

The tracker adds to it from bounces, spam reports and unsubscribes; the API writes it only
through `libs/common/suppressions.py` (which says who may remove what), and records each
add and removal in the audit log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field, field_validator

from libs.common import suppressions
from libs.common.logging import get_logger
from libs.stats import read_models
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api.audit import Target, record_audit
from services.api.deps import ApiResources, Caller, CanEdit, CanRead, Resources
from services.api.keys import Role, role_allows
from services.api.routes.common import DEFAULT_PAGE, Limit
from services.api.schemas import Page, Strict, Text, _check_email

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/suppressions", tags=["suppressions"])

SuppressionReason = Literal["manual", "unsubscribe", "bounce", "spamreport"]
EmailQuery = Annotated[str, Query(min_length=3, max_length=320)]
EmailPath = Annotated[str, Path(min_length=3, max_length=320)]


class SuppressionCreate(Strict):
    email: Text = Field(max_length=320, examples=["someone@example.com"])
    reason: SuppressionReason = "manual"

    _email = field_validator("email")(_check_email)


class SuppressionOut(BaseModel):
    email: str = Field(
        description="Lower-cased; for an erased person `erased:<keyed hash>` (reason `erased`)."
    )
    reason: SuppressionReason | Literal["erased"]
    source: str | None = Field(
        None, description="What added it, e.g. 'sendgrid:bounce' or 'api:<key name>'."
    )
    created_at: datetime


@router.get("", response_model=Page[SuppressionOut], responses=problem_responses(401, 422))
async def list_suppressions(
    resources: Resources,
    _: CanRead,
    email: Annotated[
        str | None, Query(max_length=320, description="Look up one address (any case).")
    ] = None,
    cursor: Annotated[
        str | None,
        Query(max_length=400, description="`next_cursor` of the previous page; omit at first."),
    ] = None,
    limit: Limit = DEFAULT_PAGE,
) -> Page[SuppressionOut]:
    """In address order; `?email=` answers one item or none."""
    page = await read_models.list_suppressions(
        resources.db, cursor=cursor, limit=limit, email=email
    )
    return Page[SuppressionOut](
        items=[SuppressionOut(**row) for row in page.items], next_cursor=page.next_cursor
    )


@router.post(
    "",
    status_code=201,
    response_model=SuppressionOut,
    responses={
        200: {"description": "Already suppressed: its first reason is kept."},
        **problem_responses(401, 403, 422),
    },
)
async def add_suppression(
    body: SuppressionCreate, response: Response, resources: Resources, caller: CanEdit
) -> SuppressionOut:
    """Never mail this address again. Repeating it changes nothing (answers 200)."""
    async with resources.db.acquire() as conn, conn.transaction():
        added = await suppressions.add_suppression(
            conn, body.email, body.reason, source=f"api:{caller.name}"[:200]
        )
        if added:
            await record_audit(
                conn,
                caller.actor,
                "suppression.add",
                Target("suppression", body.email.strip().lower()),
                {"reason": body.reason},
            )
    if not added:
        response.status_code = 200
    page = await read_models.list_suppressions(resources.db, email=body.email)
    if not page.items:  # removed by someone else in between; say so rather than guess
        raise ProblemError(409, "the address was removed meanwhile; retry", kind="conflict")
    log.info("suppression added", reason=body.reason, new=added, api_key=caller.name)
    return SuppressionOut(**page.items[0])


RemovalReason = Annotated[
    str | None,
    Query(
        max_length=suppressions.MAX_JUSTIFICATION,
        description="Why the address may be mailed again. Required (and an admin key) to"
        " remove an `unsubscribe`, `spamreport` or `bounce` suppression.",
    ),
]
_REMOVE_RESPONSES = problem_responses(401, 403, 404, 422)


@router.delete("/{email}", status_code=204, responses=_REMOVE_RESPONSES)
async def remove_suppression(
    email: EmailPath, resources: Resources, caller: CanEdit, removal_reason: RemovalReason = None
) -> Response:
    """Mail this address again (any case). 404 when it is not suppressed. Editors may remove
    manual suppressions; an unsubscribe, spam report or bounce needs an admin and a
    `removal_reason`. Recorded in the audit log."""
    return await _remove(resources, email, caller, removal_reason)


@router.delete("", status_code=204, responses=_REMOVE_RESPONSES)
async def remove_suppression_by_query(
    email: EmailQuery, resources: Resources, caller: CanEdit, removal_reason: RemovalReason = None
) -> Response:
    """The same as `DELETE /api/v1/suppressions/{email}`, for clients that prefer a query."""
    return await _remove(resources, email, caller, removal_reason)


async def _remove(
    resources: ApiResources, email: str, caller: Caller, justification: str | None
) -> Response:
    async with resources.db.acquire() as conn, conn.transaction():
        try:
            reason = await suppressions.remove_suppression(
                conn,
                email,
                privileged=role_allows(caller.role, Role.ADMIN),
                justification=justification,
            )
        except suppressions.RemovalRefused as exc:
            if exc.needs_privilege:
                raise ProblemError(403, str(exc), kind="forbidden") from exc
            raise ProblemError(
                422,
                str(exc),
                kind="validation",
                errors=[FieldError(field="query.removal_reason", message=str(exc))],
            ) from exc
        if reason is None:
            raise ProblemError(404, "this address is not suppressed", kind="not-found")
        details = {"reason": reason, "removal_reason": (justification or "").strip() or None}
        await record_audit(
            conn,
            caller.actor,
            "suppression.remove",
            Target("suppression", email.strip().lower()),
            details,
        )
    # The address itself stays out of the log: it is personal data.
    log.warning("suppression removed", api_key=caller.name, reason=reason)
    return Response(status_code=204)
