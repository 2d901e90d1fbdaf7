"""Outbound webhooks (admin only): endpoints, their signing secrets, their delivery log.

services/webhooks delivers; the API only configures endpoints and shows what happened.
The secret is generated here and shown once; it is stored sealed (libs/webhooks)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query

from libs.common.logging import get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from libs.webhooks.secret_box import seal
from libs.webhooks.signing import generate_secret
from libs.webhooks.targets import TargetRefused
from services.api import webhooks_repo
from services.api.audit import Target, record_audit
from services.api.deps import IsAdmin, Resources
from services.api.pagination import BadCursor
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.schemas import Page
from services.api.webhook_schemas import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryOut,
    WebhookOut,
    WebhookUpdate,
)

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


def _check_url(resources: Resources, url: str) -> None:
    try:
        resources.settings.webhook_target_policy().check_url(url)
    except TargetRefused as exc:
        raise ProblemError(
            422,
            f"url: {exc}",
            kind="validation",
            errors=[FieldError(field="body.url", message=str(exc))],
        ) from exc


def _types(event_types: list[str]) -> list[str]:
    return sorted(set(event_types))


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses=problem_responses(401, 403, 413, 422),
)
async def create_webhook(
    body: WebhookCreate, resources: Resources, caller: IsAdmin
) -> WebhookCreated:
    """Register an endpoint. The answer holds its signing secret, shown only this once."""
    _check_url(resources, body.url)
    secret = generate_secret()
    event_types = _types(list(body.event_types))
    async with resources.db.acquire() as conn, conn.transaction():
        row = await webhooks_repo.insert_endpoint(
            conn,
            body.url,
            event_types,
            body.description,
            seal(resources.settings.secret_key, secret),
        )
        await record_audit(
            conn,
            caller.actor,
            "webhook.create",
            Target("webhook", str(row["id"])),
            {"url": body.url, "event_types": event_types},
        )
    log.info("webhook endpoint created", webhook_endpoint_id=str(row["id"]))
    return WebhookCreated(**row, secret=secret)


@router.get("", response_model=Page[WebhookOut], responses=problem_responses(401, 403, 422))
async def list_webhooks(
    resources: Resources, _: IsAdmin, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
) -> Page[WebhookOut]:
    try:
        rows, next_cursor = await webhooks_repo.page_endpoints(resources.db, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[WebhookOut](items=[WebhookOut(**r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{webhook_id}", response_model=WebhookOut, responses=problem_responses(401, 403, 404, 422)
)
async def get_webhook(webhook_id: UUID, resources: Resources, _: IsAdmin) -> WebhookOut:
    row = await webhooks_repo.get_endpoint(resources.db, webhook_id)
    if row is None:
        raise not_found("webhook", webhook_id)
    return WebhookOut(**row)


@router.patch(
    "/{webhook_id}", response_model=WebhookOut, responses=problem_responses(401, 403, 404, 422)
)
async def update_webhook(
    webhook_id: UUID, body: WebhookUpdate, resources: Resources, caller: IsAdmin
) -> WebhookOut:
    """Change the URL, the event types or the description; `enabled: true` re-enables an
    endpoint (also one the sender disabled for failing)."""
    changes = body.model_dump(exclude_none=True)
    if "url" in changes:
        _check_url(resources, changes["url"])
    if "event_types" in changes:
        changes["event_types"] = _types(changes["event_types"])
    async with resources.db.acquire() as conn, conn.transaction():
        row = await webhooks_repo.update_endpoint(conn, webhook_id, changes)
        if row is None:
            raise not_found("webhook", webhook_id)
        await record_audit(
            conn, caller.actor, "webhook.update", Target("webhook", str(webhook_id)), changes
        )
    log.info("webhook endpoint updated", webhook_endpoint_id=str(webhook_id), **changes)
    return WebhookOut(**row)


@router.delete(
    "/{webhook_id}", response_model=WebhookOut, responses=problem_responses(401, 403, 404, 422)
)
async def delete_webhook(webhook_id: UUID, resources: Resources, caller: IsAdmin) -> WebhookOut:
    """Stop sending to an endpoint for good; its pending deliveries are dropped."""
    async with resources.db.acquire() as conn, conn.transaction():
        row = await webhooks_repo.delete_endpoint(conn, webhook_id)
        if row is None:
            raise not_found("webhook", webhook_id)
        await record_audit(
            conn,
            caller.actor,
            "webhook.delete",
            Target("webhook", str(webhook_id)),
            {"url": row["url"]},
        )
    log.info("webhook endpoint deleted", webhook_endpoint_id=str(webhook_id))
    return WebhookOut(**row)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[WebhookDeliveryOut],
    responses=problem_responses(401, 403, 404, 422),
)
async def list_deliveries(
    webhook_id: UUID,
    resources: Resources,
    _: IsAdmin,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
    status: Annotated[
        Literal["pending", "delivered", "failed"] | None, Query(description="Only these.")
    ] = None,
) -> Page[WebhookDeliveryOut]:
    """The delivery log, newest first: one item per event, with its attempts so far."""
    if await webhooks_repo.get_endpoint(resources.db, webhook_id) is None:
        raise not_found("webhook", webhook_id)
    try:
        rows, next_cursor = await webhooks_repo.page_deliveries(
            resources.db, webhook_id, cursor, limit, status
        )
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[WebhookDeliveryOut](
        items=[WebhookDeliveryOut(**r) for r in rows], next_cursor=next_cursor
    )
