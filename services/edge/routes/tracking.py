"""Own open and click tracking: `/o/{token}` (a 1x1 GIF) and `/c/{link}/{who}` (a 302).

The edge verifies the signed token (`libs.mail.tracking`), flags machine hits, hands a
`delivery.event` (provider `mailfleet`) to the producer in the background and answers at
once: no database, no admin API, no wait for the broker. A bad or forged token gets a 404
page and no redirect, so the redirect is never open.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from libs.common.events import DeliveryEvent
from libs.common.logging import get_logger
from libs.common.settings import IpNetwork
from libs.mail.tracking import (
    BadTrackingToken,
    Hit,
    machine_reason,
    read_click_token,
    read_open_token,
)
from libs.web.problems import ProblemError, problem_responses
from services.edge.deps import EdgeResources
from services.edge.metrics import TRACKING_REFUSED
from services.edge.unsubscribe_page import message_page

log = get_logger(__name__)
router = APIRouter(tags=["tracking"])

# The smallest transparent GIF: 1x1, one colour.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# Every hit must reach us: no cache anywhere may answer for us.
_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache"}
MAX_USER_AGENT_CHARS = 300


def _resources(request: Request) -> EdgeResources:
    resources: EdgeResources = request.app.state.resources
    return resources


_PIXEL_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/gif": {}}, "description": "A transparent 1x1 GIF."},
    **problem_responses(404),
}
_CLICK_DOC: dict[int | str, dict[str, Any]] = {
    302: {"description": "To the URL the link was made for."},
    404: {"content": {"text/html": {}}, "description": "A page: the link is not valid."},
}


@router.get("/o/{token}", response_class=Response, responses=_PIXEL_DOC)
async def open_pixel(token: str, request: Request) -> Response:
    """The open pixel: always a GIF for a valid token, whatever happens to the hit."""
    resources = _resources(request)
    try:
        hit = read_open_token(resources.settings.secret_key, token)
    except (BadTrackingToken, ValueError):
        TRACKING_REFUSED.labels("open").inc()
        raise ProblemError(404, "this tracking link is not valid", kind="bad-token") from None
    _publish(resources, request, hit)
    return Response(PIXEL, media_type="image/gif", headers=_NO_STORE)


@router.get(
    "/c/{link}/{who}", response_class=RedirectResponse, status_code=302, responses=_CLICK_DOC
)
async def click(link: str, who: str, request: Request) -> Response:
    """A tracked link: 302 to the URL it was made for, which its signature covers."""
    resources = _resources(request)
    try:
        hit = read_click_token(resources.settings.secret_key, link, who)
    except (BadTrackingToken, ValueError):
        TRACKING_REFUSED.labels("click").inc()
        page = message_page(
            "Link not valid",
            "This link is broken or was altered, so it leads nowhere. "
            "Please use the link in the original email.",
        )
        return HTMLResponse(page, status_code=404, headers=_NO_STORE)
    _publish(resources, request, hit)
    assert hit.url is not None
    return RedirectResponse(hit.url, status_code=302, headers=_NO_STORE)


def _publish(resources: EdgeResources, request: Request, hit: Hit) -> None:
    settings = resources.settings
    user_agent = request.headers.get("user-agent", "")[:MAX_USER_AGENT_CHARS]
    peer = request.client.host if request.client else ""
    client = client_address(peer, request.headers.get("x-forwarded-for"), resources.trusted_proxies)
    now = time.time()
    reason = machine_reason(hit, user_agent, client, now, settings.tracking_scanner_seconds)
    detail: dict[str, Any] = {"machine": reason is not None, "sent_at": hit.sent_at}
    if reason is not None:
        detail["machine_reason"] = reason
    if hit.kind == "click":
        detail |= {"link": hit.link_index, "url": hit.url}
    if user_agent:
        detail["useragent"] = user_agent
    event = DeliveryEvent(
        # A new id per hit: every hit counts in the totals, a replayed record only once.
        event_id=f"mf-{hit.kind}-{uuid.uuid4().hex}",
        campaign_id=hit.campaign_id,
        recipient_id=hit.recipient_id,
        email="",  # the edge knows no address; the tracker fills in the one mailed
        event=hit.kind,
        provider="mailfleet",
        occurred_at=datetime.fromtimestamp(now, UTC),
        detail=detail,
    )
    resources.hits.publish(event)


def client_address(peer: str, forwarded_for: str | None, proxies: tuple[IpNetwork, ...]) -> str:
    """The reader's address: the peer's, unless the peer is a trusted proxy; then the
    right-most X-Forwarded-For hop that is not one (what our proxies appended)."""
    if not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:64]
    return hops[0][:64] if hops else peer


def _trusted(address: str, proxies: tuple[IpNetwork, ...]) -> bool:
    if not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)
