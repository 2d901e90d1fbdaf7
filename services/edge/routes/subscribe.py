"""The public subscribe form (`POST /s/{public_id}`) and confirmation links (`/confirm/{token}`).

A subscribe post is an HTML form post (answered with a page) or JSON (answered with JSON).
It is published as `contact.event` `subscribed`; the importer decides (single or double
opt-in, the confirmation email, at most one an hour per address). Against abuse and
enumeration:

- a honeypot field (`website`, hidden from people by the form): filled in, the post gets
  the usual answer and nothing is published;
- a token bucket per client IP (429 when empty) and one per address (the usual answer,
  nothing published);
- the answer never depends on the address: whether it is new, already subscribed,
  suppressed or limited, a valid post gets the same 202 (JSON) or 200 page (form).

A confirmation link is verified (signature, 7 days) with no database; GET shows a button
(mail scanners fetch links: a GET never confirms), POST publishes `confirmed`.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from libs.common.addresses import InvalidAddress, normalised_address
from libs.common.confirm_token import (
    BadConfirmToken,
    ConfirmTarget,
    ExpiredConfirmToken,
    read_confirm_token,
)
from libs.common.events import ContactEvent, Topic
from libs.common.logging import get_logger
from libs.web.problems import ProblemError, problem_responses
from services.edge.deps import EdgeResources, Resources
from services.edge.directory import PublicList, Unavailable
from services.edge.metrics import PREFERENCE_ACTIONS, SUBSCRIBE_POSTS
from services.edge.routes.tracking import client_address
from services.edge.subscription_pages import (
    confirm_page,
    confirmed_page,
    expired_page,
    invalid_link_page,
    subscribe_accepted_page,
    text_page,
)

log = get_logger(__name__)
router = APIRouter(tags=["subscribe"])

HONEYPOT_FIELD = "website"
MAX_BODY_BYTES = 8 * 1024
MAX_FORM_FIELDS = 30
# A value longer than an address may be is refused, never cut: a cut address could be
# someone else's.
MAX_VALUE_CHARS = 254
MAX_USER_AGENT_CHARS = 512
PUBLIC_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_NO_STORE = {"Cache-Control": "no-store"}
# The form may be posted with fetch() from the list owner's site: any origin, no
# credentials (nothing here reads a cookie), so a wildcard is safe.
_CORS = {"Access-Control-Allow-Origin": "*"}


class BadPost(Exception):
    pass


_HTML = {"text/html": {"schema": {"type": "string"}}}


def _html_or_problem(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Documented answers: a page to a form post, a problem document to JSON."""
    documented = problem_responses(*codes)
    for entry in documented.values():
        entry["content"] = entry["content"] | _HTML
    return documented


def _html(code: int, description: str) -> dict[str, Any]:
    return {"description": description, "content": _HTML}


_SUBSCRIBE_BODY = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "maxLength": 254},
        HONEYPOT_FIELD: {"type": "string", "description": "The honeypot: leave it empty."},
        "consent_text_version": {"type": "string", "description": "Shown with the form."},
    },
    "additionalProperties": {"type": "string", "description": "The list's editable fields."},
}


def parse_post(body: bytes, content_type: str) -> tuple[dict[str, Any], bool]:
    """The posted fields (strings, bounded) and whether the caller speaks JSON."""
    if len(body) > MAX_BODY_BYTES:
        raise BadPost(f"the body is larger than {MAX_BODY_BYTES} bytes")
    as_json = content_type.split(";")[0].strip().lower() == "application/json"
    try:
        if as_json:
            raw = json.loads(body or b"{}")
            if not isinstance(raw, dict):
                raise BadPost("the body must be a JSON object")
            items = list(raw.items())
        else:
            items = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadPost("the body could not be read") from exc
    if len(items) > MAX_FORM_FIELDS:
        raise BadPost(f"more than {MAX_FORM_FIELDS} fields")
    fields: dict[str, Any] = {}
    for name, value in items:
        if not isinstance(name, str) or len(name) > 64:
            raise BadPost("a field name is too long")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        text = str(value)
        if len(text) > MAX_VALUE_CHARS:
            raise BadPost(f"the field {name[:64]!r} is longer than {MAX_VALUE_CHARS} characters")
        fields[name] = text
    return fields, as_json


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadPost(f"the body is larger than {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadPost(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return body


def client_of(request: Request, resources: EdgeResources) -> str:
    peer = request.client.host if request.client else ""
    return client_address(peer, request.headers.get("x-forwarded-for"), resources.trusted_proxies)


def _accepted(lst: PublicList, as_json: bool) -> Response:
    """The one answer to every valid post, whatever becomes of it."""
    if as_json:
        return JSONResponse({"status": "accepted"}, status_code=202, headers=_NO_STORE | _CORS)
    return HTMLResponse(subscribe_accepted_page(lst.opt_in), headers=_NO_STORE)


def _refused(status: int, message: str, as_json: bool) -> Response:
    if as_json:
        raise ProblemError(status, message, headers=_CORS)
    return HTMLResponse(text_page("Not subscribed", message), status_code=status)


@router.options("/s/{public_id}", include_in_schema=False)
async def subscribe_preflight() -> Response:
    """CORS preflight of a JSON post from a browser on another origin."""
    headers = _CORS | {
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "86400",
    }
    return Response(status_code=204, headers=headers)


@router.post(
    "/s/{public_id}",
    response_class=HTMLResponse,
    responses={
        **_html_or_problem(404, 413, 422, 429, 503),
        200: _html(200, "A form post is accepted (the same page for every valid post)."),
        202: {
            "description": "A JSON post is accepted (the same answer for every valid post).",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": _SUBSCRIBE_BODY},
                "application/json": {"schema": _SUBSCRIBE_BODY},
            },
        }
    },
)
async def subscribe(public_id: str, request: Request, resources: Resources) -> Response:
    """Subscribe an address to a list (form post: `email`, the list's editable fields, and
    the honeypot `website` left empty; or the same as a JSON object)."""
    as_json = request.headers.get("content-type", "").startswith("application/json")
    client = client_of(request, resources)
    if not resources.per_ip.take(client):
        SUBSCRIBE_POSTS.labels("ip_limited").inc()
        if as_json:
            raise ProblemError(
                429,
                "too many requests from this address; try again later",
                headers=_CORS | {"Retry-After": "60"},
            )
        return HTMLResponse(
            text_page("Please wait", "Too many requests; try again in a minute."),
            status_code=429,
            headers={"Retry-After": "60"},
        )
    try:
        fields, as_json = parse_post(
            await read_body(request), request.headers.get("content-type", "")
        )
    except BadPost as exc:
        SUBSCRIBE_POSTS.labels("invalid").inc()
        return _refused(413 if "larger" in str(exc) else 422, str(exc), as_json)
    lst = await _public_list(resources, public_id)
    if lst is None:
        SUBSCRIBE_POSTS.labels("unknown_list").inc()
        return _refused(404, "there is no such list", as_json)
    if fields.get(HONEYPOT_FIELD):
        SUBSCRIBE_POSTS.labels("honeypot").inc()
        log.info("subscribe honeypot filled", list_id=str(lst.id))
        return _accepted(lst, as_json)
    try:
        email = normalised_address(str(fields.get("email", "")))
    except InvalidAddress:
        SUBSCRIBE_POSTS.labels("invalid").inc()
        return _refused(422, "please give a valid email address", as_json)
    if not resources.per_address.take(email):
        SUBSCRIBE_POSTS.labels("address_limited").inc()
        return _accepted(lst, as_json)
    data: dict[str, Any] = {
        "ip": client,
        "user_agent": request.headers.get("user-agent", "")[:MAX_USER_AGENT_CHARS],
        "fields": {k: fields[k] for k in lst.editable_fields if k in fields},
    }
    version = fields.get("consent_text_version", "")
    if version.isdigit() and len(version) < 10:
        data["consent_text_version"] = int(version)
    event = ContactEvent(
        event_id=f"subscribe:{uuid.uuid4()}",
        action="subscribed",
        email=email,
        list_id=lst.id,
        data=data,
        occurred_at=datetime.now(UTC),
        source="form",
    )
    await publish_contact(resources, event)
    SUBSCRIBE_POSTS.labels("published").inc()
    log.info("subscription published", list_id=str(lst.id), event_id=event.event_id)
    return _accepted(lst, as_json)


async def _public_list(resources: EdgeResources, public_id: str) -> PublicList | None:
    if not PUBLIC_ID.match(public_id):
        return None
    try:
        return await resources.directory.list_by_public_id(public_id)
    except Unavailable as exc:
        raise ProblemError(503, "subscriptions are unavailable; please try again later") from exc


async def publish_contact(resources: EdgeResources, event: ContactEvent) -> None:
    """Publish on `contact.event` by the event's key; a broker that fails is a 503."""
    try:
        await resources.events.send(Topic.CONTACT_EVENT, event.key, event)
    except KafkaError as exc:
        raise ProblemError(503, "could not record the request; please try again") from exc


# ----- confirmation links -----


def _confirm_target(resources: EdgeResources, token: str) -> ConfirmTarget | HTMLResponse:
    secret = resources.settings.secret_key
    if not secret:
        raise ProblemError(503, "confirmation links are disabled: MAILFLEET_SECRET_KEY is not set")
    try:
        return read_confirm_token(secret, token)
    except ExpiredConfirmToken:
        return HTMLResponse(expired_page(), status_code=410, headers=_NO_STORE)
    except BadConfirmToken:
        return HTMLResponse(invalid_link_page(), status_code=404, headers=_NO_STORE)


_CONFIRM_RESPONSES = {
    **problem_responses(503),
    404: _html(404, "Not a link we signed."),
    410: _html(410, "The link has expired (7 days)."),
    429: _html(429, "Too many requests from this client (POST)."),
}


@router.get("/confirm/{token}", response_class=HTMLResponse, responses=_CONFIRM_RESPONSES)
async def confirm_form(token: str, request: Request, resources: Resources) -> HTMLResponse:
    """The page a confirmation link opens: one button that confirms (410 when expired,
    404 when not a link we signed)."""
    target = _confirm_target(resources, token)
    if isinstance(target, HTMLResponse):
        return target
    return HTMLResponse(confirm_page(request.url.path), headers=_NO_STORE)


@router.post("/confirm/{token}", response_class=HTMLResponse, responses=_CONFIRM_RESPONSES)
async def confirm(token: str, request: Request, resources: Resources) -> HTMLResponse:
    """Confirm the subscription. Repeating it changes nothing."""
    target = _confirm_target(resources, token)
    if isinstance(target, HTMLResponse):
        return target
    if not resources.per_ip.take(client_of(request, resources)):
        page = text_page("Please wait", "Too many requests; try again in a minute.")
        return HTMLResponse(page, status_code=429, headers={"Retry-After": "60"})
    event = ContactEvent(
        # Stable for the link: repeated clicks fold once.
        event_id=f"confirmed:{target.list_id}:{int(target.issued_at.timestamp())}:{target.email}"[
            :255
        ],
        action="confirmed",
        email=target.email,
        list_id=target.list_id,
        occurred_at=datetime.now(UTC),
        source="confirmation",
    )
    await publish_contact(resources, event)
    PREFERENCE_ACTIONS.labels("confirmed").inc()
    log.info("confirmation published", list_id=str(target.list_id))
    return HTMLResponse(confirmed_page(), headers=_NO_STORE)
