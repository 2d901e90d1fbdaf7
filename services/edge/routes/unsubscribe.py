"""Unsubscribe links (`/u/{token}`): the preference centre, and the one-click POST (RFC 8058).

`/unsubscribe/{token}` is the same, for links written before `/u/`. The edge verifies the
token's signature. The POST to the link itself (one-click, or "unsubscribe from all lists"
on the page) publishes a `contact.event` `unsubscribe`; the tracker resolves the address
that was mailed from its delivery log and suppresses it, exactly once. It needs neither
the database nor the admin API, so unsubscribing works while either is down.

The GET page is the preference centre: it reads the recipient the link names (the
`edge_recipients` view; display only) to offer leaving this list, joining it again, and
editing the list's editable fields; those post to `/u/{token}/leave|join|preferences` and
publish `left`, `subscribed` (source `preferences`) and `preferences`, which the importer
folds. Without the database the page falls back to the plain unsubscribe button.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from libs.common.events import ContactAction, ContactEvent
from libs.common.logging import get_logger
from libs.common.unsubscribe import BadToken, UnsubscribeTarget, read_token
from libs.web.problems import ProblemError, problem_responses
from services.edge.deps import EdgeResources, Resources
from services.edge.directory import Member, Unavailable
from services.edge.metrics import PREFERENCE_ACTIONS, UNSUBSCRIBES
from services.edge.routes.subscribe import (
    BadPost,
    client_of,
    parse_post,
    publish_contact,
    read_body,
)
from services.edge.subscription_pages import preference_page, subscribe_accepted_page, text_page
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
    """The preference centre (the page a reader sees when following the link); without
    the database, a button that unsubscribes from everything."""
    target = _target(resources, token)
    member = await _member(resources, target)
    if member is None:
        return HTMLResponse(confirm_page(request.url.path), headers=_NO_STORE)
    page = _preferences(f"/u/{token}", member, unsubscribe_path=request.url.path)
    return HTMLResponse(page, headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-store"}
MAX_PREFERENCES_BODY = 8 * 1024


def _preferences(
    base_path: str, member: Member, notice: str | None = None, unsubscribe_path: str | None = None
) -> str:
    return preference_page(
        base_path,
        email=member.email,
        list_name=member.list_name,
        status=member.status,
        opt_in=member.opt_in,
        editable_fields=member.editable_fields,
        fields=member.fields,
        notice=notice,
        unsubscribe_path=unsubscribe_path,
        suppressed=member.suppressed,
    )


async def _member(resources: EdgeResources, target: UnsubscribeTarget) -> Member | None:
    if target.recipient_id <= 0:
        return None  # a transactional message's link: no list
    try:
        return await resources.directory.member(target.recipient_id)
    except Unavailable:
        return None


async def _member_or_page(
    resources: EdgeResources, token: str, request: Request
) -> tuple[Member, str] | HTMLResponse:
    target = _target(resources, token)
    if not resources.per_ip.take(client_of(request, resources)):
        page = text_page("Please wait", "Too many requests; try again in a minute.")
        return HTMLResponse(page, status_code=429, headers={"Retry-After": "60"})
    member = await _member(resources, target)
    if member is None:
        page = text_page(
            "Not available now",
            "Your preferences cannot be changed right now; please try again later, or use"
            " the unsubscribe button of the link's page.",
        )
        return HTMLResponse(page, status_code=503, headers=_NO_STORE)
    return member, f"/u/{token}"


async def _publish_contact(
    resources: EdgeResources,
    member: Member,
    action: ContactAction,
    prefix: str,
    data: dict[str, Any] | None = None,
) -> None:
    """Publish one preference-centre action of `member` on its list."""
    event = ContactEvent(
        event_id=f"{prefix}:{uuid.uuid4()}",
        action=action,
        email=member.email,
        list_id=member.list_id,
        data=data or {},
        occurred_at=datetime.now(UTC),
        source="preferences",
    )
    await publish_contact(resources, event)
    PREFERENCE_ACTIONS.labels(action).inc()


@router.post("/u/{token}/leave", response_class=HTMLResponse, include_in_schema=False)
async def leave(token: str, request: Request, resources: Resources) -> HTMLResponse:
    """Leave the list the message was sent for (other lists and mail stay)."""
    found = await _member_or_page(resources, token, request)
    if isinstance(found, HTMLResponse):
        return found
    member, base = found
    await _publish_contact(resources, member, "left", "left")
    log.info("left a list", list_id=str(member.list_id))
    shown = replace(member, status="unsubscribed")
    return HTMLResponse(
        _preferences(base, shown, f"You left {member.list_name}."), headers=_NO_STORE
    )


@router.post("/u/{token}/join", response_class=HTMLResponse, include_in_schema=False)
async def join(token: str, request: Request, resources: Resources) -> HTMLResponse:
    """Join the list again (a fresh confirmation on a double opt-in list)."""
    found = await _member_or_page(resources, token, request)
    if isinstance(found, HTMLResponse):
        return found
    member, _ = found
    if resources.per_address.take(member.email):
        consent = {
            "ip": client_of(request, resources),
            "user_agent": request.headers.get("user-agent", "")[:512],
        }
        await _publish_contact(resources, member, "subscribed", "subscribe", consent)
    return HTMLResponse(subscribe_accepted_page(member.opt_in), headers=_NO_STORE)


@router.post("/u/{token}/preferences", response_class=HTMLResponse, include_in_schema=False)
async def preferences(token: str, request: Request, resources: Resources) -> HTMLResponse:
    """Save the list's editable fields."""
    found = await _member_or_page(resources, token, request)
    if isinstance(found, HTMLResponse):
        return found
    member, base = found
    try:
        posted, _ = parse_post(await read_body(request), "application/x-www-form-urlencoded")
    except BadPost as exc:
        return HTMLResponse(text_page("Not saved", str(exc)), status_code=422)
    changed = {k: posted[k].strip() for k in member.editable_fields if k in posted}
    if changed:
        await _publish_contact(resources, member, "preferences", "preferences", {"fields": changed})
    shown = replace(member, fields=member.fields | changed)
    return HTMLResponse(_preferences(base, shown, "Your details are saved."), headers=_NO_STORE)


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
    await publish_contact(resources, event)
    UNSUBSCRIBES.labels(source).inc()
    log.info("unsubscribe published", campaign_id=str(target.campaign_id), source=source)
    return HTMLResponse(done_page())
