"""Lists: create, browse recipients, import a CSV or XLSX with live progress."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from libs.web.problems import ProblemError
from services.api import recipients_repo, repository
from services.api.console.auth import EditorPost, EditorUpload, Viewer
from services.api.console.forms import field_errors_from_problem, field_errors_from_validation
from services.api.console.web import ConsoleRoute, page_or_first, render
from services.api.recipient_schemas import RecipientUpdate
from services.api.routes import import_rejections, lists, recipients
from services.api.schemas import ListCreate

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 25
IMPORT_DONE = ("completed", "failed")


async def _lists_page(
    request: Request, session: Viewer, cursor: str | None, **extra: Any
) -> Response:
    db = request.app.state.resources.db
    rows, next_cursor = await page_or_first(
        lambda c: repository.page_lists(db, c, PAGE_SIZE), cursor
    )
    extra.setdefault("values", {})
    extra.setdefault("errors", {})
    return render(request, "lists.html", session, lists=rows, next_cursor=next_cursor, **extra)


@router.get("/lists")
async def list_index(
    request: Request,
    session: Viewer,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    return await _lists_page(request, session, cursor)


@router.post("/lists")
async def create_list(
    request: Request, session: EditorPost, name: Annotated[str, Form(max_length=1000)] = ""
) -> Response:
    try:
        body = ListCreate(name=name.strip())
    except ValidationError as exc:
        return await _lists_page(
            request,
            session,
            None,
            status_code=422,
            values={"name": name},
            errors=field_errors_from_validation(exc),
        )
    created = await lists.create_list(body, request.app.state.resources, session.as_caller())
    return RedirectResponse(f"/console/lists/{created.id}", status_code=303)


@router.get("/lists/{list_id}")
async def list_detail(
    request: Request,
    session: Viewer,
    list_id: UUID,
    email: Annotated[str | None, Query(max_length=320)] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    db = request.app.state.resources.db
    row = await repository.get_list(db, list_id)
    if row is None:
        raise ProblemError(404, "There is no such list.")
    wanted = (email or "").strip().lower() or None
    recipients, next_cursor = await page_or_first(
        lambda c: recipients_repo.page_recipients(db, list_id, wanted, c, PAGE_SIZE), cursor
    )
    imports, _ = await repository.page_imports(db, list_id, None, 10)
    return render(
        request,
        "list.html",
        session,
        list=row,
        recipients=recipients,
        next_cursor=next_cursor,
        email=email or "",
        imports=imports,
        subscribe_url=f"{request.app.state.resources.settings.public_base_url()}/s/"
        f"{row['public_id']}",
    )


@router.post("/lists/{list_id}/imports")
async def upload(request: Request, session: EditorUpload, list_id: UUID) -> Response:
    """The file streams into the blob store as the REST upload does (same function)."""
    resources = request.app.state.resources
    try:
        accepted = await lists.import_file(list_id, request, resources, session.as_caller())
    except ProblemError as exc:
        return render(request, "_import_error.html", session, 200, message=exc.detail)
    return await _import_fragment(request, session, accepted.id)


async def _import_fragment(request: Request, session: Viewer, import_id: UUID) -> Response:
    row = await repository.get_import(request.app.state.resources.db, import_id)
    if row is None:
        raise ProblemError(404, "There is no such import.")
    done = row["status"] in IMPORT_DONE
    return render(request, "_import.html", session, job=row, done=done)


@router.get("/imports/{import_id}")
async def import_progress(request: Request, session: Viewer, import_id: UUID) -> Response:
    return await _import_fragment(request, session, import_id)


@router.get("/imports/{import_id}/rejected")
async def rejected_rows(request: Request, session: Viewer, import_id: UUID) -> Response:
    return await import_rejections.rejected_rows(
        import_id, request.app.state.resources, session.as_caller()
    )


FIELD_PREFIX = "field:"
MAX_FIELDS = 100


async def _recipient_page(
    request: Request,
    session: Viewer,
    list_id: UUID,
    recipient_id: int,
    status_code: int = 200,
    **extra: Any,
) -> Response:
    db = request.app.state.resources.db
    row = await recipients_repo.get_recipient(db, list_id, recipient_id)
    if row is None:
        raise ProblemError(404, "There is no such recipient on this list.")
    extra.setdefault("errors", {})
    return render(
        request, "recipient.html", session, status_code, list_id=list_id, recipient=row, **extra
    )


@router.get("/lists/{list_id}/recipients/{recipient_id}")
async def recipient_form(
    request: Request, session: Viewer, list_id: UUID, recipient_id: int
) -> Response:
    return await _recipient_page(request, session, list_id, recipient_id)


@router.post("/lists/{list_id}/recipients/{recipient_id}")
async def edit_recipient(
    request: Request, session: EditorPost, list_id: UUID, recipient_id: int
) -> Response:
    """Address and merge fields; an emptied field is removed, a new name/value is added."""
    form = await request.form()
    fields: dict[str, str | None] = {
        key.removeprefix(FIELD_PREFIX): (str(value).strip() or None)
        for key, value in list(form.items())[:MAX_FIELDS]
        if key.startswith(FIELD_PREFIX)
    }
    new_name = str(form.get("new_field_name", "")).strip()
    if new_name:
        fields[new_name] = str(form.get("new_field_value", "")).strip() or None
    try:
        body = RecipientUpdate(email=str(form.get("email", "")).strip(), fields=fields)
        await recipients.update_recipient(
            list_id, recipient_id, body, request.app.state.resources, session.as_caller()
        )
    except ValidationError as exc:
        errors = field_errors_from_validation(exc)
    except ProblemError as exc:
        if exc.status not in (409, 422):
            raise
        errors = field_errors_from_problem(exc)
    else:
        return RedirectResponse(f"/console/lists/{list_id}/recipients/{recipient_id}", 303)
    return await _recipient_page(request, session, list_id, recipient_id, 422, errors=errors)


@router.post("/lists/{list_id}/recipients/{recipient_id}/delete")
async def delete_recipient(
    request: Request, session: EditorPost, list_id: UUID, recipient_id: int
) -> Response:
    await recipients.remove_recipient(
        list_id, recipient_id, request.app.state.resources, session.as_caller()
    )
    return RedirectResponse(f"/console/lists/{list_id}", status_code=303)
