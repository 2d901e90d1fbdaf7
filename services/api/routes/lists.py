"""Recipient lists and the file imports into them."""

from __future__ import annotations

import codecs
from typing import get_args
from uuid import UUID, uuid4

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from libs.common.blobs import UploadTooLarge, blob_ref
from libs.common.events import (
    ColumnMapping,
    ConsentBasis,
    ConsentStatement,
    ImportRequested,
    Topic,
)
from libs.common.logging import bound_contextvars, get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import deletions_repo, repository
from services.api.audit import Target, record_audit
from services.api.deletion_rules import why_list_is_kept
from services.api.deps import CanEdit, CanRead, Resources
from services.api.multipart_stream import BadMultipart, MissingFilePart, StreamingUpload
from services.api.pagination import BadCursor
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.schemas import ImportAccepted, ImportOut, ListCreate, ListOut, ListUpdate, Page

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1", tags=["lists"])

# Multipart framing around the file (boundaries, part headers, small fields).
_MULTIPART_OVERHEAD = 64 * 1024

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV (optionally gzipped) or XLSX",
                        },
                        "email_column": {
                            "type": "string",
                            "description": "Header of the address column; found if omitted.",
                        },
                        "encoding": {
                            "type": "string",
                            "description": "Text encoding of a CSV, e.g. utf-8 or cp1252;"
                            " detected if omitted.",
                        },
                        "delimiter": {
                            "type": "string",
                            "maxLength": 1,
                            "description": "CSV delimiter; detected if omitted.",
                        },
                        "sheet": {
                            "type": "string",
                            "description": "Sheet of a workbook to import; the first if omitted.",
                        },
                        "consent_basis": {
                            "type": "string",
                            "enum": list(get_args(ConsentBasis)),
                            "description": "The legal basis of the rows (recorded once).",
                        },
                        "consent_source": {
                            "type": "string",
                            "maxLength": 40,
                            "description": "Where their consent was collected.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/lists",
    status_code=201,
    response_model=ListOut,
    responses=problem_responses(401, 403, 413, 422),
)
async def create_list(body: ListCreate, resources: Resources, _: CanEdit) -> ListOut:
    settings = body.model_dump(include=set(repository.LIST_SETTINGS), exclude_none=True)
    _check_double_opt_in(settings.get("opt_in"), settings.get("confirmation_from_email"))
    row = await repository.insert_list(resources.db, body.name, body.default_timezone, settings)
    log.info("list created", list_id=str(row["id"]))
    return ListOut(**row, recipient_count=0)


@router.get("/lists", response_model=Page[ListOut], responses=problem_responses(401, 422))
async def list_lists(
    resources: Resources, _: CanRead, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
) -> Page[ListOut]:
    try:
        rows, next_cursor = await repository.page_lists(resources.db, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[ListOut](items=[ListOut(**r) for r in rows], next_cursor=next_cursor)


@router.get("/lists/{list_id}", response_model=ListOut, responses=problem_responses(401, 404, 422))
async def get_list(list_id: UUID, resources: Resources, _: CanRead) -> ListOut:
    row = await repository.get_list(resources.db, list_id)
    if row is None:
        raise not_found("list", list_id)
    count = await repository.recipient_count(resources.db, list_id)
    return ListOut(**row, recipient_count=count)


@router.patch(
    "/lists/{list_id}", response_model=ListOut, responses=problem_responses(401, 403, 404, 422)
)
async def update_list(
    list_id: UUID, body: ListUpdate, resources: Resources, caller: CanEdit
) -> ListOut:
    """Rename a list, set its `default_timezone` (null clears it) or its subscription
    settings (opt-in, confirmation sender, editable fields, consent text). A campaign
    already planned keeps the zones it was planned with."""
    changes = body.model_dump(exclude_unset=True)
    for name in ("name", "opt_in", "editable_fields", "consent_text"):
        if name in changes and changes[name] is None:
            raise ProblemError(
                422,
                f"{name} cannot be null",
                kind="validation",
                errors=[FieldError(field=f"body.{name}", message="cannot be null")],
            )
    async with resources.db.acquire() as conn, conn.transaction():
        row = await repository.update_list(conn, list_id, changes)
        if row is None:
            raise not_found("list", list_id)
        _check_double_opt_in(row["opt_in"], row["confirmation_from_email"])
        await record_audit(conn, caller.actor, "list.update", Target("list", str(list_id)), changes)
    log.info("list updated", list_id=str(list_id), fields=sorted(changes))
    count = await repository.recipient_count(resources.db, list_id)
    return ListOut(**row, recipient_count=count)


def _check_double_opt_in(opt_in: str | None, sender: str | None) -> None:
    if opt_in == "double" and not sender:
        raise ProblemError(
            422,
            "a double opt-in list needs confirmation_from_email: the sender of its"
            " confirmation emails",
            kind="validation",
            errors=[FieldError(field="body.confirmation_from_email", message="required")],
        )


@router.delete(
    "/lists/{list_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def delete_list(list_id: UUID, resources: Resources, caller: CanEdit) -> Response:
    """Delete a list with its recipients and uploads. 409 while a campaign of the list is
    scheduled or sending, an import is running, or any campaign still uses the list."""
    async with resources.db.acquire() as conn, conn.transaction():
        try:
            if not await deletions_repo.lock_list(conn, list_id):
                raise not_found("list", list_id)
        except deletions_repo.ListBusy as exc:
            raise ProblemError(
                409,
                "the list cannot be deleted now: it is being changed (an import is loading"
                " into it); try again shortly",
                kind="list-in-use",
            ) from exc
        reason = why_list_is_kept(
            await deletions_repo.campaigns_by_status(conn, list_id),
            await deletions_repo.pending_imports(conn, list_id),
        )
        if reason is not None:
            raise ProblemError(409, f"the list cannot be deleted now: {reason}", kind="list-in-use")
        await deletions_repo.delete_list(conn, list_id)
        await record_audit(conn, caller.actor, "list.delete", Target("list", str(list_id)))
    log.info("list deleted", list_id=str(list_id))
    return Response(status_code=204)


@router.post(
    "/lists/{list_id}/imports",
    status_code=202,
    response_model=ImportAccepted,
    responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
    openapi_extra=_UPLOAD_BODY,
)
async def import_file(
    list_id: UUID, request: Request, resources: Resources, _: CanEdit
) -> ImportAccepted:
    """Upload a CSV or XLSX (multipart field `file`; optional fields `email_column`,
    `encoding`, `delimiter`, `sheet`, `consent_basis` and `consent_source`); the importer
    loads it in the background."""
    limit = resources.settings.max_upload_bytes
    _refuse_declared_oversize(request, limit)
    if not await repository.list_exists(resources.db, list_id):
        raise not_found("list", list_id)
    import_id = uuid4()
    with bound_contextvars(import_id=str(import_id), list_id=str(list_id)):
        upload = await _open_upload(request)
        try:
            blob_id = await resources.blobs.write(
                upload.filename or "upload",
                upload.file_content_type,
                upload.file_chunks(),
                limit,
            )
        except UploadTooLarge as exc:
            raise _too_large(limit) from exc
        except BadMultipart as exc:
            raise ProblemError(400, str(exc), kind="bad-multipart") from exc
        filename = upload.filename or "upload"
        try:
            encoding, delimiter, sheet = _import_options(upload.fields)
        except ProblemError:
            await resources.blobs.delete(blob_id)
            raise
        try:
            consent = _consent_of(upload.fields)
        except ProblemError:
            await resources.blobs.delete(blob_id)
            raise
        await repository.insert_import_request(resources.db, import_id, list_id, blob_id, filename)
        event = ImportRequested(
            import_id=import_id,
            list_id=list_id,
            file_ref=blob_ref(blob_id),
            filename=filename,
            mapping=ColumnMapping(email=upload.fields.get("email_column") or None),
            encoding=encoding,
            delimiter=delimiter,
            sheet=sheet,
            consent=consent,
        )
        try:
            await resources.events.send(Topic.IMPORT_REQUESTED, str(list_id), event)
        except KafkaError as exc:
            # Nobody would ever pick the import up: take it back rather than show it queued.
            await repository.delete_import_request(resources.db, import_id)
            await resources.blobs.delete(blob_id)
            raise ProblemError(503, "the broker is unavailable; retry the upload") from exc
        log.info("import requested", blob_id=str(blob_id), filename=filename)
    return ImportAccepted(id=import_id, list_id=list_id)


@router.get(
    "/lists/{list_id}/imports",
    response_model=Page[ImportOut],
    responses=problem_responses(401, 404, 422),
)
async def list_imports(
    list_id: UUID,
    resources: Resources,
    _: CanRead,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> Page[ImportOut]:
    if not await repository.list_exists(resources.db, list_id):
        raise not_found("list", list_id)
    try:
        rows, next_cursor = await repository.page_imports(resources.db, list_id, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[ImportOut](items=[ImportOut(**r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/imports/{import_id}",
    response_model=ImportOut,
    responses=problem_responses(401, 404, 422),
    tags=["imports"],
)
async def get_import(import_id: UUID, resources: Resources, _: CanRead) -> ImportOut:
    row = await repository.get_import(resources.db, import_id)
    if row is None:
        raise not_found("import", import_id)
    return ImportOut(**row)


def _import_options(fields: dict[str, str]) -> tuple[str | None, str | None, str | None]:
    """Encoding, delimiter and sheet chosen for an upload; 422 for a choice that cannot work."""
    encoding = fields.get("encoding", "").strip() or None
    delimiter = fields.get("delimiter") or None
    sheet = fields.get("sheet", "").strip() or None
    errors = []
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            errors.append(FieldError(field="body.encoding", message="unknown encoding"))
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        errors.append(
            FieldError(field="body.delimiter", message="one character, e.g. ',' ';' '|' or tab")
        )
    if errors:
        raise ProblemError(422, "invalid import options", kind="validation", errors=errors)
    return encoding, delimiter, sheet


def _consent_of(fields: dict[str, str]) -> ConsentStatement | None:
    """The consent basis an upload states for its rows (`consent_basis`, `consent_source`)."""
    basis = fields.get("consent_basis", "").strip()
    if not basis:
        return None
    try:
        return ConsentStatement.model_validate(
            {"basis": basis, "source": fields.get("consent_source", "").strip() or None}
        )
    except ValidationError as exc:
        raise ProblemError(
            422,
            "invalid consent basis: one of " + ", ".join(get_args(ConsentBasis)),
            kind="validation",
            errors=[FieldError(field="body.consent_basis", message="unknown basis or source")],
        ) from exc


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"the file is larger than the upload limit of {limit} bytes"
        " (MAILFLEET_MAX_UPLOAD_BYTES); split it or raise the limit",
        kind="upload-too-large",
    )


def _refuse_declared_oversize(request: Request, limit: int) -> None:
    """Refuse before reading a byte when the declared length is already too large."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _MULTIPART_OVERHEAD:
        raise _too_large(limit)


async def _open_upload(request: Request) -> StreamingUpload:
    try:
        upload = StreamingUpload(request.headers.get("content-type", ""), request.stream())
        await upload.open()
    except BadMultipart as exc:
        raise ProblemError(400, str(exc), kind="bad-multipart") from exc
    except MissingFilePart as exc:
        raise ProblemError(
            422,
            f"{exc}: send the CSV as multipart/form-data field 'file'",
            kind="validation",
            errors=[FieldError(field="body.file", message="field required")],
        ) from exc
    return upload
