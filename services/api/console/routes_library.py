"""The template library (versions and a preview) and the suppression list."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from libs.common.templating import render as render_template
from libs.stats import read_models
from libs.web.problems import ProblemError
from services.api import templates_repo
from services.api.console.auth import EditorPost, Session, Viewer
from services.api.console.forms import field_errors_from_validation
from services.api.console.web import ConsoleRoute, page_or_first, render
from services.api.routes import suppressions

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 25
Short = Annotated[str, Form(max_length=1000)]


@router.get("/templates")
async def template_index(
    request: Request,
    session: Viewer,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    db = request.app.state.resources.db
    rows, next_cursor = await page_or_first(
        lambda c: templates_repo.page_templates(db, c, PAGE_SIZE), cursor
    )
    return render(request, "templates.html", session, templates=rows, next_cursor=next_cursor)


@router.get("/templates/{template_id}")
async def template_detail(
    request: Request,
    session: Viewer,
    template_id: UUID,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    """A version's parts, rendered with empty merge fields in a sandboxed iframe."""
    db = request.app.state.resources.db
    template = await templates_repo.get_template(db, template_id, version)
    if template is None:
        raise ProblemError(404, "There is no such template or version.")
    versions, _ = await templates_repo.page_versions(db, template_id, None, 50)
    try:
        preview = {
            "subject": render_template(template["subject"], {}, html=False),
            "html": render_template(template["html"], {}, html=True),
            "text": render_template(template["text"], {}, html=False) if template["text"] else None,
            "recipient": None,
        }
        error = None
    except Exception as exc:  # user code: show the error, never fail the page
        preview, error = None, f"The template fails to render: {exc}"
    return render(
        request,
        "template.html",
        session,
        tpl=template,
        versions=versions,
        preview=preview,
        error=error,
    )


async def _suppressions_page(
    request: Request,
    session: Session,
    email: str | None,
    cursor: str | None,
    status_code: int = 200,
    **extra: object,
) -> Response:
    wanted = (email or "").strip() or None
    page = await read_models.list_suppressions(
        request.app.state.resources.db, cursor=cursor, limit=PAGE_SIZE, email=wanted
    )
    extra.setdefault("errors", {})
    extra.setdefault("values", {})
    return render(
        request,
        "suppressions.html",
        session,
        status_code,
        items=page.items,
        next_cursor=page.next_cursor,
        email=email or "",
        **extra,
    )


@router.get("/suppressions")
async def suppression_index(
    request: Request,
    session: Viewer,
    email: Annotated[str | None, Query(max_length=320)] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> Response:
    return await _suppressions_page(request, session, email, cursor)


@router.post("/suppressions")
async def add_suppression(request: Request, session: EditorPost, email: Short = "") -> Response:
    try:
        body = suppressions.SuppressionCreate(email=email.strip(), reason="manual")
    except ValidationError as exc:
        errors = field_errors_from_validation(exc)
        return await _suppressions_page(
            request, session, None, None, 422, errors=errors, values={"email": email}
        )
    await suppressions.add_suppression(
        body, Response(), request.app.state.resources, session.as_caller()
    )
    return RedirectResponse(f"/console/suppressions?email={body.email}", status_code=303)


@router.post("/suppressions/remove")
async def remove_suppression(request: Request, session: EditorPost, email: Short = "") -> Response:
    await suppressions.remove_suppression_by_query(
        email.strip(), request.app.state.resources, session.as_caller()
    )
    return RedirectResponse("/console/suppressions", status_code=303)
