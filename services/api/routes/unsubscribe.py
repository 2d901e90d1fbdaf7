"""One-click unsubscribe links (`/u/{token}`, RFC 8058): a confirmation page and the POST.

`/unsubscribe/{token}` is the same, for the links the dispatcher writes today.
The API does not write suppressions (the tracker owns them): it publishes an
`unsubscribe` delivery event, which the tracker folds like a provider's.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from libs.common.events import DeliveryEvent, Topic
from libs.common.logging import get_logger
from libs.common.unsubscribe import BadToken, UnsubscribeTarget, read_token
from services.api import repository
from services.api.deps import ApiResources, Resources
from services.api.problems import ProblemError, problem_responses

log = get_logger(__name__)
router = APIRouter(tags=["unsubscribe"])

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32rem; margin: 4rem auto;">
<h1>{title}</h1>{body}</body></html>"""


def _target(resources: ApiResources, token: str) -> UnsubscribeTarget:
    secret = resources.settings.secret_key
    if not secret:
        raise ProblemError(503, "unsubscribe links are disabled: MAILFLEET_SECRET_KEY is not set")
    try:
        return read_token(secret, token)
    except BadToken as exc:
        raise ProblemError(404, f"{exc}; ask the sender to remove you", kind="bad-token") from exc


async def _email_of(resources: ApiResources, target: UnsubscribeTarget) -> str:
    email = await repository.recipient_email(resources.db, target.recipient_id)
    if email is None:
        raise ProblemError(404, "this address is no longer on the list", kind="not-found")
    return email


def _masked(email: str) -> str:
    """Enough for the reader to recognise their address; not the address itself."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


@router.get("/u/{token}", response_class=HTMLResponse, responses=problem_responses(404, 503))
@router.get(
    "/unsubscribe/{token}",
    response_class=HTMLResponse,
    responses=problem_responses(404, 503),
    include_in_schema=False,
)
async def confirm_page(token: str, request: Request, resources: Resources) -> HTMLResponse:
    target = _target(resources, token)
    email = await _email_of(resources, target)
    body = (
        f"<p>Stop sending mail to {html.escape(_masked(email))}?</p>"
        f'<form method="post" action="{html.escape(request.url.path)}">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return HTMLResponse(_PAGE.format(title="Unsubscribe", body=body))


@router.post("/u/{token}", response_class=HTMLResponse, responses=problem_responses(404, 503))
@router.post(
    "/unsubscribe/{token}",
    response_class=HTMLResponse,
    responses=problem_responses(404, 503),
    include_in_schema=False,
)
async def unsubscribe(token: str, resources: Resources) -> HTMLResponse:
    """Unsubscribe (also the RFC 8058 one-click POST). Repeating it changes nothing."""
    target = _target(resources, token)
    email = await _email_of(resources, target)
    event = DeliveryEvent(
        # Stable id: the tracker dedupes repeated clicks on the same link.
        event_id=f"unsubscribe:{target.campaign_id}:{target.recipient_id}",
        campaign_id=target.campaign_id,
        recipient_id=target.recipient_id,
        email=email,
        event="unsubscribe",
        provider="mailfleet",
        occurred_at=datetime.now(UTC),
        detail={"source": "unsubscribe-link"},
    )
    try:
        await resources.events.send(Topic.DELIVERY_EVENT, str(target.campaign_id), event)
    except KafkaError as exc:
        raise ProblemError(503, "could not record the request; please try again") from exc
    log.info("unsubscribed by link", campaign_id=str(target.campaign_id))
    body = f"<p>{html.escape(_masked(email))} will get no more mail from us.</p>"
    return HTMLResponse(_PAGE.format(title="Unsubscribed", body=body))
