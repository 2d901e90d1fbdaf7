"""One-click unsubscribe links (`/u/{token}`, RFC 8058): a confirmation page and the POST.

`/unsubscribe/{token}` is the same, for links written before `/u/`. The edge verifies the
token's signature and publishes a `contact.event`; the tracker resolves the address that
was mailed from its delivery log and suppresses it, exactly once. Nothing here needs the
database or the admin API, so unsubscribing works while either is down.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from libs.common.events import ContactEvent, Topic
from libs.common.logging import get_logger
from libs.common.unsubscribe import BadToken, UnsubscribeTarget, read_token
from libs.web.problems import ProblemError, problem_responses
from services.edge.deps import EdgeResources, Resources
from services.edge.metrics import UNSUBSCRIBES
from services.edge.unsubscribe_page import confirm_page, done_page

log = get_logger(__name__)
router = APIRouter(tags=["unsubscribe"])

# RFC 8058: a mail client's one-click POST carries exactly this form body.
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
MAX_TOKEN_CHARS = 200


def _target(resources: EdgeResources, token: str) -> UnsubscribeTarget:
    secret = resources.settings.secret_key
    if not secret:
        raise ProblemError(503, "unsubscribe links are disabled: MAILFLEET_SECRET_KEY is not set")
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise BadToken("malformed unsubscribe link")
        return read_token(secret, token)
    except BadToken as exc:
        raise ProblemError(404, f"{exc}; ask the sender to remove you", kind="bad-token") from exc


@router.get("/u/{token}", response_class=HTMLResponse, responses=problem_responses(404, 503))
@router.get("/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
async def confirm(token: str, request: Request, resources: Resources) -> HTMLResponse:
    """The page a reader sees when following the link: a button that confirms."""
    _target(resources, token)
    return HTMLResponse(confirm_page(request.url.path))


@router.post("/u/{token}", response_class=HTMLResponse, responses=problem_responses(404, 503))
@router.post("/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
async def unsubscribe(token: str, request: Request, resources: Resources) -> HTMLResponse:
    """Unsubscribe (also the RFC 8058 one-click POST). Repeating it changes nothing."""
    target = _target(resources, token)
    source = "one-click" if ONE_CLICK_BODY in await request.body() else "page"
    event = ContactEvent(
        # Stable for the link: the tracker folds repeated clicks (and both sources) once.
        event_id=f"unsubscribe:{target.campaign_id}:{target.recipient_id}",
        action="unsubscribe",
        campaign_id=target.campaign_id,
        recipient_id=target.recipient_id,
        occurred_at=datetime.now(UTC),
        source=source,
    )
    try:
        await resources.events.send(Topic.CONTACT_EVENT, contact_key(event), event)
    except KafkaError as exc:
        raise ProblemError(503, "could not record the request; please try again") from exc
    UNSUBSCRIBES.labels(source).inc()
    log.info("unsubscribe published", campaign_id=str(target.campaign_id), source=source)
    return HTMLResponse(done_page())


def contact_key(event: ContactEvent) -> str:
    """The delivery the link was in: one person's actions on one message stay ordered."""
    return f"{event.campaign_id}:{event.recipient_id}"
