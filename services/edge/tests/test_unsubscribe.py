"""Signed unsubscribe links on the edge: confirmation page, one-click POST publishing a\ncontact.event, forgery and replay."""

from __future__ import annotations

import base64
import uuid

import pytest

from libs.common.events import ContactEvent
from libs.common.unsubscribe import BadToken, make_token, read_token
from libs.mail.headers import HeaderPolicy
from services.api.tests.support import find_event
from services.edge.tests.support import PROBLEM, Edge


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_token_round_trip_carries_no_address() -> None:
    campaign = uuid.uuid4()
    token = make_token("s3cret", campaign, 42)
    target = read_token("s3cret", token)
    assert (target.campaign_id, target.recipient_id) == (campaign, 42)
    # Only the two ids travel, never the address.
    assert _unb64(token.split(".")[0]) == campaign.bytes + (42).to_bytes(8, "big")


def test_reads_the_links_the_dispatcher_writes() -> None:
    campaign = uuid.uuid4()
    header = HeaderPolicy("https://mail.example.com", "s3cret").headers(
        campaign, 7, "news@example.com"
    )["List-Unsubscribe"]
    assert header.startswith("<https://mail.example.com/u/")
    target = read_token("s3cret", header.removeprefix("<https://mail.example.com/u/").rstrip(">"))
    assert (target.campaign_id, target.recipient_id) == (campaign, 7)


def test_tampered_or_foreign_tokens_are_refused() -> None:
    campaign = uuid.uuid4()
    token = make_token("s3cret", campaign, 42)
    with pytest.raises(BadToken):
        read_token("other-secret", token)
    payload, mac = token.split(".")
    raw = bytearray(_unb64(payload))
    raw[-1] ^= 1  # the recipient id's last byte: someone else's address
    with pytest.raises(BadToken):
        read_token("s3cret", f"{_b64(bytes(raw))}.{mac}")
    other_campaign = make_token("s3cret", uuid.uuid4(), 42)
    with pytest.raises(BadToken):  # a signature replayed onto another payload
        read_token("s3cret", f"{other_campaign.split('.')[0]}.{mac}")
    for garbage in ("", "abc", "!!!!", "a.b", token[:-2], token + "x"):
        with pytest.raises(BadToken):
            read_token("s3cret", garbage)


async def test_page_then_one_click_post_publishes_unsubscribe(edge: Edge) -> None:
    campaign = uuid.uuid4()
    recipient_id = 4242
    token = make_token(edge.settings.secret_key, campaign, recipient_id)

    page = await edge.client.get(f"/u/{token}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'action="/u/{token}"' in page.text
    legacy = await edge.client.get(f"/unsubscribe/{token}")
    assert legacy.status_code == 200 and f'action="/unsubscribe/{token}"' in legacy.text

    done = await edge.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    key, event = await find_event(
        edge.settings,
        "contact.event",
        lambda e: e.get("campaign_id") == str(campaign) and e.get("recipient_id") == recipient_id,
    )
    assert key == f"{campaign}:{recipient_id}".encode()
    published = ContactEvent.model_validate(event)
    assert (published.action, published.source) == ("unsubscribe", "one-click")
    assert event.get("email") is None  # the tracker resolves the address that was mailed


async def test_forged_and_foreign_tokens_are_404(edge: Edge) -> None:
    foreign = make_token("not-our-secret", uuid.uuid4(), 7)
    for token in (foreign, "garbage", "x" * 300):
        for method in ("GET", "POST"):
            answer = await edge.client.request(method, f"/u/{token}")
            assert answer.status_code == 404, (method, token)
            assert answer.headers["content-type"] == PROBLEM
