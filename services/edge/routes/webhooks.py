"""Provider webhooks: SendGrid's Event Webhook, published to `delivery.event`.

No API key here (SendGrid cannot send one): a post must carry SendGrid's signature, checked
with SENDGRID_WEBHOOK_VERIFICATION_KEY (see webhook_policy for the only exception). Events
are handed to the tracker as they are; it dedupes them by `sg_event_id`, so SendGrid's
retries of a post count once, and it stores an event that matches no delivery of ours as
unmatched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from libs.common.events import Topic
from libs.common.logging import get_logger
from libs.web.problems import ProblemError, problem_responses
from services.edge.deps import Resources
from services.edge.metrics import WEBHOOK_EVENTS, WEBHOOK_POSTS_REFUSED
from services.edge.sendgrid_events import (
    MAX_EVENTS_PER_POST,
    MAX_REPORTED,
    PROVIDER,
    NotABatch,
    parse_batch,
    partition_key,
    translate,
)
from services.edge.webhook_policy import WebhookPolicy
from services.edge.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureRefused

log = get_logger(__name__)
router = APIRouter(tags=["webhooks"])

# SendGrid posts a batch when it reaches 768 KB (or every 30 s); twice that leaves room.
WEBHOOK_BODY_LIMIT = 2 * 1024 * 1024


_BODY_DOC = {
    "required": True,
    "description": "SendGrid's events, as it posts them: an array (a lone event object is "
    "tolerated). An item that is not an event is skipped and reported in the receipt.",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"type": "array", "items": {}, "maxItems": MAX_EVENTS_PER_POST},
                    {"type": "object"},
                ]
            }
        }
    },
}


class SkippedOut(BaseModel):
    index: int = Field(description="Position of the event in the posted array.")
    kind: str = Field(description="`malformed` or `unsupported` (an event type not tracked).")
    reason: str


class WebhookReceipt(BaseModel):
    received: int = Field(description="Events in the post.")
    published: int = Field(description="Events handed to the tracker.")
    skipped: int = Field(description="Events left out; the first ones are listed in `problems`.")
    problems: list[SkippedOut] = Field(default_factory=list)


@router.post(
    "/webhooks/sendgrid",
    response_model=WebhookReceipt,
    responses=problem_responses(400, 401, 413, 503),
    # Read raw (the signature covers the exact bytes), so described here rather than parsed.
    openapi_extra={"requestBody": _BODY_DOC},
)
# Where the admin API served it before the edge existed: a SendGrid setting that still
# names this path keeps working once the host points at the edge.
@router.post("/api/v1/webhooks/sendgrid", response_model=WebhookReceipt, include_in_schema=False)
async def sendgrid_events(request: Request, resources: Resources) -> WebhookReceipt:
    """SendGrid's Event Webhook: a signed JSON array of events. Odd events are skipped and
    counted; the answer is 200 once the good ones are on the broker (a 5xx makes SendGrid
    retry)."""
    body = await _read_body(request, WEBHOOK_BODY_LIMIT)
    _check_signature(resources.webhooks, request, body)
    try:
        items = parse_batch(body)
    except NotABatch as exc:
        WEBHOOK_POSTS_REFUSED.labels(PROVIDER, "not_json").inc()
        raise ProblemError(400, str(exc), kind="bad-webhook-body") from exc
    translation = translate(items)
    if translation.events:
        items_to_send = [(partition_key(e), e) for e in translation.events]
        try:
            await resources.events.send_many(Topic.DELIVERY_EVENT, items_to_send)
        except KafkaError as exc:
            raise ProblemError(503, "the broker is unavailable; retry the post") from exc
    _count(translation.received - len(translation.skipped), translation.skipped_by_kind())
    if translation.skipped:
        log.warning(
            "webhook events skipped",
            provider=PROVIDER,
            skipped=len(translation.skipped),
            first_reason=translation.skipped[0].reason,
        )
    log.info(
        "webhook post accepted",
        provider=PROVIDER,
        received=translation.received,
        published=len(translation.events),
    )
    return WebhookReceipt(
        received=translation.received,
        published=len(translation.events),
        skipped=len(translation.skipped),
        problems=[
            SkippedOut(index=s.index, kind=s.kind, reason=s.reason)
            for s in translation.skipped[:MAX_REPORTED]
        ],
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw bytes (the signature covers them exactly), refused past `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ProblemError:
    WEBHOOK_POSTS_REFUSED.labels(PROVIDER, "too_large").inc()
    return ProblemError(
        413, f"webhook body exceeds the limit of {limit} bytes", kind="body-too-large"
    )


def _check_signature(policy: WebhookPolicy, request: Request, body: bytes) -> None:
    """Return when the post may be read; else the problem that refuses it."""
    if policy.verifier is None:
        if policy.accept_unsigned:
            return
        WEBHOOK_POSTS_REFUSED.labels(PROVIDER, "unsigned").inc()
        # 503, not 401: the fault is ours, and SendGrid retries posts refused with a 5xx.
        raise ProblemError(
            503,
            "webhook posts are refused: SENDGRID_WEBHOOK_VERIFICATION_KEY is not set",
            kind="misconfigured",
        )
    try:
        policy.verifier.check(
            body,
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(TIMESTAMP_HEADER),
            now=time.time(),
        )
    except SignatureRefused as exc:
        WEBHOOK_POSTS_REFUSED.labels(PROVIDER, "signature").inc()
        log.warning("webhook post refused", provider=PROVIDER, reason=str(exc))
        raise ProblemError(401, str(exc), kind="bad-signature") from exc


def _count(published: int, skipped: Mapping[str, int]) -> None:
    if published:
        WEBHOOK_EVENTS.labels(PROVIDER, "published").inc(published)
    for kind, count in skipped.items():
        WEBHOOK_EVENTS.labels(PROVIDER, kind).inc(count)
