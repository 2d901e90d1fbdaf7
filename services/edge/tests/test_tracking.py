"""Own open and click tracking on the edge, over real HTTP: the pixel, the redirect, the
events they publish to `delivery.event` (with machine flags), and forged links refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.common.settings import Settings
from libs.mail.tracking import LinkTracker, link_part, open_token, who_part
from services.api.tests.support import find_event
from services.edge.app import create_app
from services.edge.routes.tracking import PIXEL
from services.edge.tests.http_server import serving

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131"


@pytest.fixture(scope="module")
async def edge_url(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings)) as url:
        yield url


async def _event(settings: Settings, campaign: uuid.UUID, kind: str) -> tuple[bytes, Any]:
    key, event = await find_event(
        settings,
        "delivery.event",
        lambda e: e.get("campaign_id") == str(campaign) and e.get("event") == kind,
    )
    assert key is not None
    return key, event


async def test_pixel_answers_a_gif_and_publishes_an_open(settings: Settings, edge_url: str) -> None:
    campaign = uuid.uuid4()
    token = open_token(settings.secret_key, campaign, 31, int(time.time()) - 3600)
    async with httpx.AsyncClient(base_url=edge_url) as client:
        answer = await client.get(f"/o/{token}", headers={"user-agent": BROWSER})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/gif" and answer.content == PIXEL
    assert "no-store" in answer.headers["cache-control"]
    key, event = await _event(settings, campaign, "open")
    assert key == str(campaign).encode()
    assert event["provider"] == "mailfleet" and event["recipient_id"] == 31
    assert event["detail"]["machine"] is False and event["event_id"].startswith("mf-open-")


async def test_apple_privacy_proxy_opens_are_flagged(settings: Settings, edge_url: str) -> None:
    campaign = uuid.uuid4()
    token = open_token(settings.secret_key, campaign, 32, int(time.time()) - 3600)
    async with httpx.AsyncClient(base_url=edge_url) as client:
        answer = await client.get(f"/o/{token}", headers={"user-agent": "Mozilla/5.0"})
    assert answer.status_code == 200
    _, event = await _event(settings, campaign, "open")
    assert event["detail"]["machine"] is True
    assert event["detail"]["machine_reason"] == "apple_mpp"


async def test_x_forwarded_for_counts_only_from_trusted_proxies(settings: Settings) -> None:
    apple = {"user-agent": BROWSER, "x-forwarded-for": "17.58.101.4"}
    trusted = create_app(settings.model_copy(update={"trusted_proxies": "127.0.0.1"}))
    seen = {}
    for name, app in (("untrusted", create_app(settings)), ("trusted", trusted)):
        campaign = uuid.uuid4()
        token = open_token(settings.secret_key, campaign, 33, int(time.time()) - 3600)
        async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
            assert (await client.get(f"/o/{token}", headers=apple)).status_code == 200
            _, event = await _event(settings, campaign, "open")
        seen[name] = event["detail"]["machine"]
    assert seen == {"untrusted": False, "trusted": True}


async def test_click_redirects_to_its_url_and_publishes(settings: Settings, edge_url: str) -> None:
    campaign = uuid.uuid4()
    tracker = LinkTracker(edge_url, settings.secret_key, campaign, int(time.time()) - 3600)
    url = "https://shop.example.org/sale?a=1&b=%C3%A9#top"
    async with httpx.AsyncClient() as client:
        answer = await client.get(tracker.click_url(4, url, 77), headers={"user-agent": BROWSER})
    assert answer.status_code == 302 and answer.headers["location"] == url
    _, event = await _event(settings, campaign, "click")
    assert event["recipient_id"] == 77
    assert event["detail"]["link"] == 4 and event["detail"]["url"] == url
    assert event["detail"]["machine"] is False


async def test_a_click_seconds_after_the_send_is_a_scanner(
    settings: Settings, edge_url: str
) -> None:
    campaign = uuid.uuid4()
    tracker = LinkTracker(edge_url, settings.secret_key, campaign, int(time.time()))
    async with httpx.AsyncClient() as client:
        answer = await client.get(tracker.click_url(0, "https://a.example.org/", 5))
    assert answer.status_code == 302
    _, event = await _event(settings, campaign, "click")
    assert event["detail"]["machine"] is True
    assert event["detail"]["machine_reason"] == "scanner"


async def test_forged_links_get_a_page_and_no_redirect(settings: Settings, edge_url: str) -> None:
    campaign = uuid.uuid4()
    secret = settings.secret_key
    good = link_part(campaign, 0, "https://shop.example.org/")
    who = who_part(secret, good, 9, int(time.time()) - 3600)
    evil = link_part(campaign, 0, "https://evil.example.net/")
    async with httpx.AsyncClient(base_url=edge_url) as client:
        for path in (
            f"/c/{evil}/{who}",  # another URL under a real signature
            f"/c/{good}/{who_part('not-our-secret', good, 9, 0)}",
            f"/c/{good}/{who[:-4]}",
            f"/c/{'A' * 20000}/{who}",
            "/c/x/y",
        ):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert "location" not in answer.headers
            assert answer.headers["content-type"].startswith("text/html")
            assert "Link not valid" in answer.text
        forged_open = open_token("not-our-secret", campaign, 9, 0)
        answer = await client.get(f"/o/{forged_open}")
        assert answer.status_code == 404 and answer.content != PIXEL
        assert answer.headers["content-type"] == "application/problem+json"
    # The genuine link still works: the refusals were about the forgeries only.
    async with httpx.AsyncClient(base_url=edge_url) as client:
        answer = await client.get(f"/c/{good}/{who}")
    assert answer.status_code == 302 and answer.headers["location"] == "https://shop.example.org/"
