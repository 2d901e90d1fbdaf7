"""The public subscribe form, confirmation links and the preference centre on the edge:
honeypot, rate limits, the same answer for every address, forged and expired links."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from libs.common.confirm_token import (
    BadConfirmToken,
    ExpiredConfirmToken,
    make_confirm_token,
    read_confirm_token,
)
from libs.common.embedded import free_port
from libs.common.settings import Settings
from libs.common.unsubscribe import make_token
from services.api.tests.support import find_event
from services.edge.rate_limit import TokenBuckets
from services.edge.routes.subscribe import MAX_BODY_BYTES, BadPost, parse_post
from services.edge.tests.support import PROBLEM, Edge, running_edge

T0 = datetime(2030, 5, 1, 10, 0, tzinfo=UTC)


# ----- pure parts -----


def test_confirm_token_round_trip_expiry_and_forgery() -> None:
    list_id = uuid.uuid4()
    token = make_confirm_token("s3cret", list_id, "ann@example.com", T0)
    target = read_confirm_token("s3cret", token, now=T0 + timedelta(days=7))
    assert (target.list_id, target.email, target.issued_at) == (list_id, "ann@example.com", T0)
    with pytest.raises(ExpiredConfirmToken):
        read_confirm_token("s3cret", token, now=T0 + timedelta(days=7, seconds=1))
    with pytest.raises(BadConfirmToken):
        read_confirm_token("other-secret", token, now=T0)
    payload, mac = token.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    edited = base64.urlsafe_b64encode(raw.replace(b"ann@", b"bob@")).decode().rstrip("=")
    with pytest.raises(BadConfirmToken):  # another address under the same signature
        read_confirm_token("s3cret", f"{edited}.{mac}", now=T0)
    for garbage in ("", "abc", "a.b", token[:-2], "x" * 600):
        with pytest.raises(BadConfirmToken):
            read_confirm_token("s3cret", garbage, now=T0)


def test_token_buckets_refill_and_stay_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets(2, 60.0, clock=lambda: now[0], max_keys=3)
    assert [buckets.take("a") for _ in range(3)] == [True, True, False]
    assert buckets.take("b")  # another key has its own bucket
    now[0] = 30.0  # half the period: one token back
    assert buckets.take("a") and not buckets.take("a")
    for key in ("c", "d", "e"):
        buckets.take(key)
    assert len(buckets._buckets) == 3  # noqa: SLF001


def test_post_limits() -> None:
    fields, as_json = parse_post(
        b"email=a%40b.example&name=Ann", "application/x-www-form-urlencoded"
    )
    assert fields == {"email": "a@b.example", "name": "Ann"} and not as_json
    fields, as_json = parse_post(b'{"email": "a@b.example", "n": 1}', "application/json")
    assert fields == {"email": "a@b.example", "n": "1"} and as_json
    for body, kind in (
        (b"x" * (MAX_BODY_BYTES + 1), "application/json"),
        (b"[1]", "application/json"),
        (b"{", "application/json"),
        ("&".join(f"f{i}=1" for i in range(40)).encode(), "application/x-www-form-urlencoded"),
        # Never cut: 250 characters of local part and a domain, cut, would be another address.
        (b"email=" + b"a" * 250 + b"%40example.com.evil.org", "application/x-www-form-urlencoded"),
    ):
        with pytest.raises(BadPost):
            parse_post(body, kind)


# ----- over HTTP, with the real database and broker -----


@pytest.fixture(scope="module")
async def edge(settings: Settings) -> AsyncIterator[Edge]:
    """An edge of this module's own: other modules' posts spend no token of its buckets."""
    async with running_edge(settings, subscribe_per_ip_per_minute=1000) as running:
        yield running


async def _list(pool: asyncpg.Pool, opt_in: str = "double") -> tuple[uuid.UUID, str]:
    row = await pool.fetchrow(
        "INSERT INTO lists (name, opt_in, editable_fields) VALUES ('Weekly <news>', $1,"
        " '{first_name}') RETURNING id, public_id",
        opt_in,
    )
    assert row is not None
    return row["id"], row["public_id"]


def _address() -> str:
    return f"s-{uuid.uuid4().hex[:10]}@example.com"


def _count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("mailfleet_edge_subscribe_posts_total", {"outcome": outcome})
    return value or 0.0


def _confirmations() -> float:
    labels = {"action": "confirmed"}
    return REGISTRY.get_sample_value("mailfleet_edge_preference_actions_total", labels) or 0.0


async def _subscribed_events(settings: Settings, email: str) -> dict[str, Any]:
    """The first `subscribed` event for `email` (one key: all of them in order)."""
    _, event = await find_event(
        settings,
        "contact.event",
        lambda e: e.get("action") == "subscribed" and e.get("email") == email,
    )
    return event


async def test_form_and_json_subscribe_publish_and_answer_alike(
    edge: Edge, pool: asyncpg.Pool
) -> None:
    list_id, public_id = await _list(pool)
    member, stranger = _address(), _address()
    await pool.execute("INSERT INTO recipients (list_id, email) VALUES ($1, $2)", list_id, member)
    answers = []
    for email in (member, stranger):
        answers.append(
            await edge.client.post(
                f"/s/{public_id}",
                data={"email": email, "first_name": "Ann", "admin": "yes"},
                headers={"user-agent": "Firefox"},
            )
        )
    # Existing or not: the same answer, byte for byte.
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].text == answers[1].text and "check your inbox" in answers[0].text.lower()
    assert "content-security-policy" in answers[0].headers
    event = await _subscribed_events(edge.settings, stranger)
    assert event["list_id"] == str(list_id) and event["source"] == "form"
    assert event["data"]["fields"] == {"first_name": "Ann"}  # only the list's editable fields
    assert event["data"]["user_agent"] == "Firefox" and event["data"]["ip"]

    as_json = [
        await edge.client.post(f"/s/{public_id}", json={"email": e}) for e in (member, _address())
    ]
    assert [a.status_code for a in as_json] == [202, 202]
    assert as_json[0].json() == as_json[1].json() == {"status": "accepted"}
    # A browser on the list owner's site may post JSON with fetch().
    assert as_json[0].headers["access-control-allow-origin"] == "*"
    preflight = await edge.client.options(
        f"/s/{public_id}",
        headers={"origin": "https://shop.example", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["access-control-allow-methods"]


async def test_honeypot_answers_the_same_and_publishes_nothing(
    edge: Edge, pool: asyncpg.Pool
) -> None:
    _, public_id = await _list(pool)
    email = _address()
    before = _count("honeypot")
    bot = await edge.client.post(
        f"/s/{public_id}", data={"email": email, "first_name": "Bot", "website": "http://spam"}
    )
    person = await edge.client.post(f"/s/{public_id}", data={"email": email, "first_name": "Real"})
    assert (bot.status_code, bot.text) == (person.status_code, person.text)
    assert _count("honeypot") == before + 1
    # Same key, same partition: had the bot's post been published, it would come first.
    event = await _subscribed_events(edge.settings, email)
    assert event["data"]["fields"] == {"first_name": "Real"}


async def test_unknown_list_bad_address_and_oversized_body_are_refused(
    edge: Edge, pool: asyncpg.Pool
) -> None:
    _, public_id = await _list(pool)
    unknown = await edge.client.post(f"/s/{uuid.uuid4().hex}", json={"email": _address()})
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM
    bad = await edge.client.post(f"/s/{public_id}", data={"email": "not an address"})
    assert bad.status_code == 422 and "valid email" in bad.text
    bad_json = await edge.client.post(f"/s/{public_id}", json={"email": "not an address"})
    assert bad_json.status_code == 422 and bad_json.headers["content-type"] == PROBLEM
    assert bad_json.headers["access-control-allow-origin"] == "*"  # readable by fetch()
    huge = await edge.client.post(
        f"/s/{public_id}", content=b"email=" + b"a" * MAX_BODY_BYTES,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert huge.status_code == 413


@pytest.fixture
async def strict_edge(settings: Settings) -> AsyncIterator[Edge]:
    async with running_edge(
        settings, subscribe_per_ip_per_minute=3, subscribe_per_address_per_hour=2
    ) as running:
        yield running


async def test_rate_limits_per_ip_and_per_address(strict_edge: Edge, pool: asyncpg.Pool) -> None:
    _, public_id = await _list(pool)
    email = _address()
    limited_before = _count("address_limited")
    answers = [
        await strict_edge.client.post(f"/s/{public_id}", json={"email": email}) for _ in range(3)
    ]
    # The third post of one address: the same answer, counted, not published.
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert _count("address_limited") == limited_before + 1
    # The fourth post from this client, any address: refused.
    refused = await strict_edge.client.post(f"/s/{public_id}", json={"email": _address()})
    assert refused.status_code == 429
    other_client = await strict_edge.client.post(
        f"/s/{public_id}", data={"email": _address()}, headers={"x-forwarded-for": "1.2.3.4"}
    )
    assert other_client.status_code == 429  # the header is not trusted without proxies
    # The same client's posts to preference-centre and confirmation links count too.
    token = make_confirm_token(
        strict_edge.settings.secret_key, uuid.uuid4(), email, datetime.now(UTC)
    )
    assert (await strict_edge.client.post(f"/confirm/{token}")).status_code == 429
    link = make_token(strict_edge.settings.secret_key, uuid.uuid4(), 1)
    assert (await strict_edge.client.post(f"/u/{link}/leave")).status_code == 429


async def test_confirmation_link_page_post_expired_and_forged(edge: Edge) -> None:
    list_id, email = uuid.uuid4(), _address()
    secret = edge.settings.secret_key
    token = make_confirm_token(secret, list_id, email, datetime.now(UTC) - timedelta(days=6))
    confirmed_before = _confirmations()
    page = await edge.client.get(f"/confirm/{token}")
    assert page.status_code == 200 and f'action="/confirm/{token}"' in page.text
    assert _confirmations() == confirmed_before  # a GET (a mail scanner) confirms nothing

    done = await edge.client.post(f"/confirm/{token}")
    assert done.status_code == 200 and "confirmed" in done.text
    assert _confirmations() == confirmed_before + 1
    key, event = await find_event(
        edge.settings,
        "contact.event",
        lambda e: e.get("action") == "confirmed" and e.get("email") == email,
    )
    assert key == email.encode() and event["list_id"] == str(list_id)

    old = make_confirm_token(secret, list_id, email, datetime.now(UTC) - timedelta(days=8))
    forged = make_confirm_token("not-our-secret", list_id, email, datetime.now(UTC))
    for method in ("GET", "POST"):
        expired = await edge.client.request(method, f"/confirm/{old}")
        assert expired.status_code == 410 and "expired" in expired.text
        for bad in (forged, "garbage", "x" * 600):
            refused = await edge.client.request(method, f"/confirm/{bad}")
            assert refused.status_code == 404 and "not valid" in refused.text
            assert "Traceback" not in refused.text


async def test_preference_centre_leave_edit_and_join_again(edge: Edge, pool: asyncpg.Pool) -> None:
    list_id, _ = await _list(pool)
    email = _address()
    recipient_id = await pool.fetchval(
        "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3) RETURNING id",
        list_id,
        email,
        {"first_name": "<Ann>"},
    )
    campaign_id = uuid.uuid4()
    token = make_token(edge.settings.secret_key, campaign_id, recipient_id)
    page = await edge.client.get(f"/u/{token}")
    assert page.status_code == 200
    assert "Weekly &lt;news&gt;" in page.text and email in page.text
    assert 'value="&lt;Ann&gt;"' in page.text and '<label for="f0">' in page.text
    assert f'action="/u/{token}/leave"' in page.text and f'action="/u/{token}"' in page.text
    assert "<script" not in page.text and "unsubscribed from all" not in page.text

    saved = await edge.client.post(
        f"/u/{token}/preferences", data={"first_name": "Bo", "email": "x@evil.example"}
    )
    assert saved.status_code == 200 and 'value="Bo"' in saved.text
    _, changed = await find_event(
        edge.settings,
        "contact.event",
        lambda e: e.get("action") == "preferences" and e.get("email") == email,
    )
    assert changed["data"] == {"fields": {"first_name": "Bo"}}

    left = await edge.client.post(f"/u/{token}/leave")
    assert left.status_code == 200 and f'action="/u/{token}/join"' in left.text
    _, leave = await find_event(
        edge.settings,
        "contact.event",
        lambda e: e.get("action") == "left" and e.get("email") == email,
    )
    assert leave["list_id"] == str(list_id) and leave["source"] == "preferences"

    await pool.execute("UPDATE recipients SET status = 'unsubscribed' WHERE id = $1", recipient_id)
    again = await edge.client.post(f"/u/{token}/join")
    assert again.status_code == 200 and "confirm" in again.text
    event = await _subscribed_events(edge.settings, email)
    assert event["source"] == "preferences" and event["list_id"] == str(list_id)

    # Unsubscribed from everything (the tracker's suppression): the page says so.
    await pool.execute("INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')", email)
    assert "unsubscribed from all our emails" in (await edge.client.get(f"/u/{token}")).text

    # RFC 8058 one-click on the same link: unchanged, the delivery's unsubscribe.
    one_click = await edge.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    _, unsubscribed = await find_event(
        edge.settings,
        "contact.event",
        lambda e: e.get("action") == "unsubscribe" and e.get("campaign_id") == str(campaign_id),
    )
    assert unsubscribed["source"] == "one-click" and unsubscribed.get("email") is None


async def test_preference_centre_without_a_recipient_is_the_plain_unsubscribe_page(
    edge: Edge,
) -> None:
    token = make_token(edge.settings.secret_key, uuid.uuid4(), 2**62)
    page = await edge.client.get(f"/u/{token}")
    assert page.status_code == 200 and f'action="/u/{token}"' in page.text
    assert "/leave" not in page.text
    refused = await edge.client.post(f"/u/{token}/leave")
    assert refused.status_code == 503


async def test_without_the_database_the_form_says_503_and_unsubscribing_still_works(
    settings: Settings,
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    async with running_edge(settings, database_url=closed) as down:
        answer = await down.client.post(f"/s/{uuid.uuid4().hex}", json={"email": _address()})
        assert answer.status_code == 503 and answer.headers["content-type"] == PROBLEM
        token = make_token(down.settings.secret_key, uuid.uuid4(), 7)
        page = await down.client.get(f"/u/{token}")
        assert page.status_code == 200 and f'action="/u/{token}"' in page.text
        one_click = await down.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200
