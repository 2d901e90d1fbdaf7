"""Templates: stored, versioned subject/HTML/text that campaigns copy their content from."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from libs.common.logging import get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import templates_repo
from services.api.deps import ApiResources, CanEdit, CanRead, Resources
from services.api.pagination import BadCursor
from services.api.routes.campaigns import check_templates, refuse_costly_templates
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.schemas import Page
from services.api.template_schemas import (
    MAX_VERSION,
    TemplateCreate,
    TemplateOut,
    TemplateSummary,
    TemplateUpdate,
    TemplateVersionOut,
)

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/templates", tags=["templates"])

VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="A template version.")]
_NOT_NULL = ("name", "subject", "html")


@router.post(
    "",
    status_code=201,
    response_model=TemplateOut,
    responses=problem_responses(401, 403, 413, 422),
)
async def create_template(body: TemplateCreate, resources: Resources, _: CanEdit) -> TemplateOut:
    """Store a template as its version 1. Every part must parse (errors name part and line)."""
    values = body.model_dump()
    check_templates(values)
    await refuse_costly_templates(resources, values)
    row = await templates_repo.insert_template(resources.db, body.name, body.description, values)
    log.info("template created", template_id=str(row["id"]))
    return TemplateOut(**row)


@router.get("", response_model=Page[TemplateSummary], responses=problem_responses(401, 422))
async def list_templates(
    resources: Resources, _: CanRead, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
) -> Page[TemplateSummary]:
    """Templates newest first, without their content (read one to get it)."""
    try:
        rows, next_cursor = await templates_repo.page_templates(resources.db, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[TemplateSummary](
        items=[TemplateSummary(**r) for r in rows], next_cursor=next_cursor
    )


@router.get(
    "/{template_id}", response_model=TemplateOut, responses=problem_responses(401, 404, 422)
)
async def get_template(
    template_id: UUID,
    resources: Resources,
    _: CanRead,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="Default: the latest.")
    ] = None,
) -> TemplateOut:
    row = await templates_repo.get_template(resources.db, template_id, version)
    if row is None:
        raise await _missing(resources, template_id, version)
    return TemplateOut(**row)


@router.patch(
    "/{template_id}",
    response_model=TemplateOut,
    responses=problem_responses(401, 403, 404, 413, 422),
)
async def update_template(
    template_id: UUID, body: TemplateUpdate, resources: Resources, _: CanEdit
) -> TemplateOut:
    """Rename, or change content: a content change adds a version. Campaigns made from an
    earlier version keep their copy."""
    changes = body.model_dump(exclude_unset=True)
    for required in _NOT_NULL:
        if required in changes and changes[required] is None:
            raise ProblemError(
                422,
                f"{required} cannot be null",
                kind="validation",
                errors=[FieldError(field=f"body.{required}", message="cannot be null")],
            )
    check_templates(changes)
    await refuse_costly_templates(resources, changes)
    async with resources.db.acquire() as conn, conn.transaction():
        row = await templates_repo.update_template(conn, template_id, changes)
    if row is None:
        raise not_found("template", template_id)
    log.info("template edited", template_id=str(template_id), version=row["latest_version"])
    return TemplateOut(**row)


@router.delete(
    "/{template_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422),
)
async def delete_template(template_id: UUID, resources: Resources, _: CanEdit) -> Response:
    """Delete a template and its versions. Campaigns made from it keep their content."""
    if not await templates_repo.delete_template(resources.db, template_id):
        raise not_found("template", template_id)
    log.info("template deleted", template_id=str(template_id))
    return Response(status_code=204)


@router.get(
    "/{template_id}/versions",
    response_model=Page[TemplateVersionOut],
    responses=problem_responses(401, 404, 422),
)
async def list_versions(
    template_id: UUID,
    resources: Resources,
    _: CanRead,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> Page[TemplateVersionOut]:
    """Every version, newest first."""
    if not await templates_repo.template_exists(resources.db, template_id):
        raise not_found("template", template_id)
    try:
        rows, next_cursor = await templates_repo.page_versions(
            resources.db, template_id, cursor, limit
        )
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[TemplateVersionOut](
        items=[TemplateVersionOut(**r) for r in rows], next_cursor=next_cursor
    )


@router.get(
    "/{template_id}/versions/{version}",
    response_model=TemplateVersionOut,
    responses=problem_responses(401, 404, 422),
)
async def get_version(
    template_id: UUID, version: VersionNumber, resources: Resources, _: CanRead
) -> TemplateVersionOut:
    row = await templates_repo.get_version(resources.db, template_id, version)
    if row is None:
        raise await _missing(resources, template_id, version)
    return TemplateVersionOut(**row)


async def _missing(
    resources: ApiResources,
    template_id: UUID,
    version: int | None,
) -> ProblemError:
    """404 that says whether the template or only the version is missing."""
    if version is not None and await templates_repo.template_exists(resources.db, template_id):
        return ProblemError(
            404, f"template {template_id} has no version {version}", kind="not-found"
        )
    return not_found("template", template_id)
