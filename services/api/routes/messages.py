"""Transactional messages: `POST /api/v1/messages` publishes `message.requested`; `GET`
shows a message's status and provider events as the tracker recorded them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Header, Response

from libs.common.events import MAX_MERGE_DATA_BYTES, InlineContent, MessageRequested, Topic
from libs.common.idempotency import accept, body_hash
from libs.common.logging import bound_contextvars, get_logger
from libs.mail.messages import is_valid_address
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api.deps import ApiResources, CanEdit, CanRead, Resources
from services.api.message_schemas import (
    MAX_IDEMPOTENCY_KEY,
    MessageEventOut,
    MessageIn,
    MessageOut,
)
from services.api.routes.campaigns import check_templates
from services.api.routes.common import not_found

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/messages", tags=["messages"])

_DELIVERY_EVENTS = ("delivered", "deferred", "bounce", "dropped", "spamreport")
MAX_EVENTS_SHOWN = 200


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        422,
        f"{field}: {message}",
        kind="validation",
        errors=[FieldError(field=field, message=message)],
    )


async def _check(body: MessageIn, resources: ApiResources) -> None:
    if not is_valid_address(body.to):
        raise _invalid("body.to", "not a valid email address")
    if (body.template_id is None) == (body.content is None):
        raise _invalid("body.content", "give exactly one of template_id and content")
    if len(json.dumps(body.data, default=str)) > MAX_MERGE_DATA_BYTES:
        raise _invalid("body.data", f"larger than {MAX_MERGE_DATA_BYTES} bytes")
    if body.content is not None:
        if not is_valid_address(body.content.from_email):
            raise _invalid("body.content.from_email", "not a valid email address")
        # Parsed here (a 422 naming the part and line); not test-rendered as a campaign's
        # is: one message's render is bounded by the dispatcher's sandbox and fails alone.
        check_templates(body.content.model_dump())
        return
    if body.template_version is not None and body.template_id is None:
        raise _invalid("body.template_version", "needs template_id")
    if body.from_email is None or not is_valid_address(body.from_email):
        raise _invalid("body.from_email", "a valid sender address is required with template_id")
    found = await resources.db.fetchval(
        "SELECT 1 FROM templates t JOIN template_versions v ON v.template_id = t.id"
        " AND v.version = coalesce($2, t.latest_version) WHERE t.id = $1",
        body.template_id,
        body.template_version,
    )
    if found is None:
        field = "body.template_version" if body.template_version else "body.template_id"
        raise _invalid(field, "no such template (version)")


@router.post(
    "",
    status_code=202,
    response_model=MessageOut,
    responses=problem_responses(401, 403, 409, 413, 422, 503),
)
async def send_message(
    body: MessageIn,
    resources: Resources,
    _: CanEdit,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY,
            description="The same key within 24 h sends once; with another body: 409.",
        ),
    ] = None,  # fmt: skip
) -> MessageOut:
    """Send one message now, on its own lane (never behind campaign batches). 202: queued;
    200: this idempotency key's earlier message, unchanged."""
    await _check(body, resources)
    values = body.model_dump(mode="json")
    event = MessageRequested(
        message_id=uuid.uuid4(),
        to=body.to,
        template_id=body.template_id,
        template_version=body.template_version,
        content=InlineContent(**body.content.model_dump()) if body.content else None,
        from_email=body.from_email,
        from_name=body.from_name,
        data=body.data,
        category=body.category,
        track=body.track,
        provider=body.provider,
    )
    assert event.message_id is not None
    async with resources.db.acquire() as conn, conn.transaction():
        accepted = await accept(
            conn, message_id=event.message_id, key=idempotency_key, digest=body_hash(values),
            recipient=body.to, category=body.category, source="api",
        )  # fmt: skip
    if accepted.outcome == "conflict":
        raise ProblemError(
            409,
            "this Idempotency-Key was used within 24 h for a different message"
            f" ({accepted.message_id}); use a new key",
            kind="idempotency-conflict",
        )
    # Published after the commit, holding no connection while the broker answers. A repeat
    # is published again (same message id): if an earlier publish was lost (a 503) the
    # message still goes out, and if not the send ledger sends nothing twice. Without a key,
    # a lost publish sent nothing, so the caller's retry cannot make a duplicate.
    event = event.model_copy(update={"message_id": accepted.message_id})
    with bound_contextvars(message_id=str(accepted.message_id)):
        try:
            await resources.events.send(Topic.MESSAGE_REQUESTED, body.to.lower(), event)
        except KafkaError as exc:
            raise ProblemError(503, "the broker is unavailable; nothing sent, retry") from exc
        log.info("message requested", repeat=accepted.outcome == "repeat",
                 category=body.category)  # fmt: skip
    if accepted.outcome == "repeat":
        response.status_code = 200
        shown = await _message(resources, accepted.message_id)
        assert shown is not None
        return shown
    # New: nothing more to read (one request costs what it must at 100 messages/s).
    essential = body.category in resources.settings.essential() if body.category else False
    return MessageOut(
        id=accepted.message_id, to=body.to, category=body.category, status="queued",
        essential=essential, requested_at=datetime.now(UTC),
    )  # fmt: skip


@router.get("/{message_id}", response_model=MessageOut, responses=problem_responses(401, 404, 422))
async def get_message(message_id: UUID, resources: Resources, _: CanRead) -> MessageOut:
    """A message's status (`queued` until the tracker has its result) and provider events."""
    shown = await _message(resources, message_id)
    if shown is None:
        raise not_found("message", message_id)
    return shown


async def _message(resources: ApiResources, message_id: UUID) -> MessageOut | None:
    db = resources.db
    asked = await db.fetchrow(
        "SELECT recipient, category, created_at FROM message_requests WHERE message_id = $1",
        message_id,
    )
    done = await db.fetchrow("SELECT * FROM messages WHERE message_id = $1", message_id)
    if asked is None and done is None:
        return None
    rows = await db.fetch(
        "SELECT event, provider, occurred_at, detail FROM delivery_events"
        " WHERE campaign_id = $1 ORDER BY occurred_at, event_id LIMIT $2",
        message_id,
        MAX_EVENTS_SHOWN,
    )
    events = [
        MessageEventOut(
            event=r["event"], provider=r["provider"], occurred_at=r["occurred_at"],
            detail=r["detail"] if isinstance(r["detail"], dict) else orjson.loads(r["detail"]),
        )
        for r in rows
    ]  # fmt: skip
    delivery = next((e.event for e in reversed(events) if e.event in _DELIVERY_EVENTS), None)
    category = (done or asked)["category"]  # type: ignore[index]
    return MessageOut(
        id=message_id,
        to=(done["recipient"] if done else asked["recipient"]),  # type: ignore[index]
        category=category,
        status=done["status"] if done else "queued",
        essential=category in resources.settings.essential() if category else False,
        provider=done["provider"] if done else None,
        provider_message_id=done["provider_message_id"] if done else None,
        error=done["error"] if done else None,
        requested_at=asked["created_at"] if asked else None,
        sent_at=done["sent_at"] if done else None,
        delivery=delivery,
        events=events,
    )
