"""Recipients of a list, one at a time: add, read, edit, remove, and a paginated listing.

Files of recipients go through imports (`/lists/{id}/imports`); these endpoints are for the
single changes an admin or an integration makes. Addresses are judged exactly as the
importer judges them, and suppressed addresses are refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Path, Query, Response

from libs.common import suppressions
from libs.common.addresses import InvalidAddress, normalised_address
from libs.common.events import ContactEvent, Topic
from libs.common.logging import get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import recipients_repo, repository
from services.api.deps import ApiResources, CanEdit, CanRead, Resources
from services.api.pagination import BadCursor
from services.api.recipient_schemas import RecipientCreate, RecipientOut, RecipientUpdate
from services.api.recipients_repo import AddressTaken
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.schemas import Page

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/lists/{list_id}/recipients", tags=["recipients"])

RecipientId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The recipient's id.")]
EmailQuery = Annotated[str, Query(min_length=1, max_length=320, description="An address.")]


def _address(raw: str, field: str) -> str:
    try:
        return normalised_address(raw)
    except InvalidAddress as exc:
        raise ProblemError(
            422,
            f"{field.split('.')[-1]}: {exc}: {raw[:100]!r}",
            kind="validation",
            errors=[FieldError(field=field, message=str(exc))],
        ) from exc


async def _refuse_suppressed(resources: ApiResources, email: str) -> None:
    reason = await recipients_repo.suppression_reason(resources.db, email)
    secret = resources.settings.secret_key
    if (
        reason is None
        and secret
        and await suppressions.is_erased(resources.db, email, suppressions.erasure_key(secret))
    ):
        reason = "erased"  # the person asked for their data to be erased: never again
    if reason is not None:
        raise ProblemError(
            409,
            f"{email} is suppressed ({reason}) and is never mailed, so it cannot be added; "
            "remove the suppression first if the person asked to be mailed again",
            kind="suppressed",
        )


async def _require_list(resources: ApiResources, list_id: UUID) -> None:
    if not await repository.list_exists(resources.db, list_id):
        raise not_found("list", list_id)


def _taken(email: str, list_id: UUID, existing_id: int | None) -> ProblemError:
    where = f" (recipient {existing_id})" if existing_id is not None else ""
    return ProblemError(
        409,
        f"{email} is already on list {list_id}{where}; change it with PATCH instead",
        kind="duplicate-recipient",
    )


@router.get("", response_model=Page[RecipientOut], responses=problem_responses(401, 404, 422))
async def list_recipients(
    list_id: UUID,
    resources: Resources,
    _: CanRead,
    email: Annotated[
        str | None, Query(min_length=1, max_length=320, description="Only this address.")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> Page[RecipientOut]:
    """The list's recipients in the order they were added."""
    await _require_list(resources, list_id)
    wanted = _address(email, "query.email") if email is not None else None
    try:
        rows, next_cursor = await recipients_repo.page_recipients(
            resources.db, list_id, wanted, cursor, limit
        )
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[RecipientOut](items=[RecipientOut(**r) for r in rows], next_cursor=next_cursor)


@router.post(
    "",
    status_code=201,
    response_model=RecipientOut,
    responses=problem_responses(401, 403, 404, 409, 413, 422),
)
async def add_recipient(
    list_id: UUID, body: RecipientCreate, resources: Resources, _: CanEdit
) -> RecipientOut:
    """Add one address. 409 when it is on the list already or suppressed."""
    email = _address(body.email, "body.email")
    await _require_list(resources, list_id)
    await _refuse_suppressed(resources, email)
    async with resources.db.acquire() as conn, conn.transaction():
        try:
            row = await recipients_repo.insert_recipient(conn, list_id, email, body.fields)
        except recipients_repo.ListGone as exc:  # the list was deleted meanwhile
            raise not_found("list", list_id) from exc
        if row is not None and body.consent is not None:
            await recipients_repo.record_consent(
                conn, list_id, email, body.consent.basis, body.consent.source or "api"
            )
    if row is None:
        existing = await recipients_repo.find_by_email(resources.db, list_id, email)
        raise _taken(email, list_id, existing["id"] if existing else None)
    log.info("recipient added", list_id=str(list_id), recipient_id=row["id"])
    await _publish_joined(resources, list_id, row["id"], email)
    return RecipientOut(**row)


async def _publish_joined(
    resources: ApiResources, list_id: UUID, recipient_id: int, email: str
) -> None:
    """`contact.event` `joined` (source `api`): what starts the list's automations. The
    recipient is added whatever the broker does: a failed publish is logged (and counted by
    the producer's metrics), not turned into an error for a change already committed."""
    event = ContactEvent(
        event_id=f"api-joined:{list_id}:{recipient_id}", action="joined", email=email,
        list_id=list_id, source="api", occurred_at=datetime.now(UTC),
    )  # fmt: skip
    try:
        await resources.events.send(Topic.CONTACT_EVENT, event.key, event)
    except (KafkaError, ProblemError) as exc:
        log.warning(
            "joined event not published; the list's automations will not start for them",
            list_id=str(list_id), recipient_id=recipient_id, error=repr(exc),
        )  # fmt: skip


@router.delete(
    "",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422),
)
async def remove_recipient_by_email(
    list_id: UUID, email: EmailQuery, resources: Resources, _: CanEdit
) -> Response:
    """Remove the recipient with this address (`?email=`) from the list."""
    address = _address(email, "query.email")
    await _require_list(resources, list_id)
    if not await recipients_repo.delete_by_email(resources.db, list_id, address):
        raise ProblemError(404, f"{address} is not on list {list_id}", kind="not-found")
    log.info("recipient removed", list_id=str(list_id))
    return Response(status_code=204)


@router.get(
    "/{recipient_id}", response_model=RecipientOut, responses=problem_responses(401, 404, 422)
)
async def get_recipient(
    list_id: UUID, recipient_id: RecipientId, resources: Resources, _: CanRead
) -> RecipientOut:
    row = await recipients_repo.get_recipient(resources.db, list_id, recipient_id)
    if row is None:
        raise _no_recipient(list_id, recipient_id)
    return RecipientOut(**row)


@router.patch(
    "/{recipient_id}",
    response_model=RecipientOut,
    responses=problem_responses(401, 403, 404, 409, 413, 422),
)
async def update_recipient(
    list_id: UUID,
    recipient_id: RecipientId,
    body: RecipientUpdate,
    resources: Resources,
    _: CanEdit,
) -> RecipientOut:
    """Change the address and/or merge fields (a field set to null is removed)."""
    changes = body.model_dump(exclude_unset=True)
    if "email" in changes and changes["email"] is None:
        raise ProblemError(
            422,
            "email cannot be null",
            kind="validation",
            errors=[FieldError(field="body.email", message="cannot be null")],
        )
    email = _address(body.email, "body.email") if body.email is not None else None
    if email is not None:
        current = await recipients_repo.get_recipient(resources.db, list_id, recipient_id)
        if current is not None and current["email"] != email:
            await _refuse_suppressed(resources, email)
    fields = body.fields or {}
    set_fields = {k: v for k, v in fields.items() if v is not None}
    drop_fields = [k for k, v in fields.items() if v is None]
    try:
        row = await recipients_repo.update_recipient(
            resources.db, list_id, recipient_id, email, set_fields, drop_fields
        )
    except AddressTaken as exc:
        existing = await recipients_repo.find_by_email(resources.db, list_id, str(email))
        raise _taken(str(email), list_id, existing["id"] if existing else None) from exc
    if row is None:
        raise _no_recipient(list_id, recipient_id)
    log.info("recipient edited", list_id=str(list_id), recipient_id=recipient_id)
    return RecipientOut(**row)


@router.delete(
    "/{recipient_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422),
)
async def remove_recipient(
    list_id: UUID, recipient_id: RecipientId, resources: Resources, _: CanEdit
) -> Response:
    if not await recipients_repo.delete_recipient(resources.db, list_id, recipient_id):
        raise _no_recipient(list_id, recipient_id)
    log.info("recipient removed", list_id=str(list_id), recipient_id=recipient_id)
    return Response(status_code=204)


def _no_recipient(list_id: UUID, recipient_id: int) -> ProblemError:
    return ProblemError(404, f"no recipient {recipient_id} on list {list_id}", kind="not-found")
