"""Own open and click tracking, the pure rules: link rewriting in both rendering paths,
tokens that bind campaign, recipient, link index and URL, and machine hits."""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import replace

import pytest

from libs.common.events import BatchRecipient
from libs.common.settings import DEFAULT_UNSUBSCRIBE_FOOTER
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Message
from libs.mail.rendering import Content, build_outbox
from libs.mail.tracking import (
    BadTrackingToken,
    Hit,
    LinkTracker,
    link_part,
    machine_reason,
    open_token,
    read_click_token,
    read_open_token,
    trackable_links,
    who_part,
)

BASE = "https://m.example.com"
SECRET = "s3cret-key-for-tracking-tests"
POLICY = HeaderPolicy(BASE, SECRET, unsubscribe_footer=DEFAULT_UNSUBSCRIBE_FOOTER)
CAMPAIGN = uuid.UUID("6f1c2a9e-0000-4000-8000-000000000001")
SENT = 1_900_000_000
CLICK = re.compile(re.escape(BASE) + r"/c/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)")
OPEN = re.compile(re.escape(BASE) + r"/o/([A-Za-z0-9_-]+)")

HTML = (
    "<html><body><p>Hi {{ n }}</p>"
    '<a href="https://shop.example.org/a?x=1&amp;y=2">shop</a>'
    "<a href='http://blog.example.org/post'>blog</a>"
    '<a href="mailto:help@example.org">mail us</a>'
    '<a href="#top">top</a>'
    '<a href="/relative">rel</a>'
    '<a href="tel:+3312345">call</a>'
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    "</body></html>"
)


def messages(html: str, *, tracking: bool = True, text: str | None = None) -> list[Message]:
    content = Content(
        uuid.uuid4(), CAMPAIGN, "S", html, text, "a@example.com", None, tracking=tracking
    )
    people = [
        BatchRecipient(recipient_id=i, email=f"u{i}@x.org", fields={"n": f"N{i}"}) for i in (1, 2)
    ]
    outbox = build_outbox(content, CAMPAIGN, "b", people, POLICY, now=SENT)
    found: list[Message] = list(outbox.individual)
    if outbox.templated is not None:
        found += [outbox.templated.expand(r) for r in outbox.templated.recipients]
    assert len(found) == 2
    return sorted(found, key=lambda m: m.recipient_id)


SUBSTITUTION = HTML
RENDERED = HTML.replace("<p>Hi {{ n }}</p>", "{% if n %}<p>Hi {{ n }}</p>{% endif %}")


@pytest.mark.parametrize("html", [SUBSTITUTION, RENDERED], ids=["substitution", "rendered"])
def test_http_links_are_signed_redirects_and_nothing_else_is_touched(html: str) -> None:
    for message in messages(html):
        clicks = CLICK.findall(message.html)
        assert len(clicks) == 2
        hits = [read_click_token(SECRET, link, who) for link, who in clicks]
        assert [(h.link_index, h.url) for h in hits] == [
            (0, "https://shop.example.org/a?x=1&y=2"),  # the entity is the URL's "&"
            (1, "http://blog.example.org/post"),
        ]
        assert {(h.campaign_id, h.recipient_id, h.sent_at) for h in hits} == {
            (CAMPAIGN, message.recipient_id, SENT)
        }
        for kept in ("mailto:help@example.org", "#top", "/relative", "tel:+3312345"):
            assert f'href="{kept}"' in message.html
        # The unsubscribe link is the real one, never a redirect.
        unsubscribe = POLICY.unsubscribe_link(CAMPAIGN, message.recipient_id)
        assert f'href="{unsubscribe}"' in message.html
        assert "shop.example.org" not in message.html  # only inside the signed link
        (pixel,) = OPEN.findall(message.html)
        assert message.html.index(pixel) < message.html.index("</body>")
        opened = read_open_token(SECRET, pixel)
        assert (opened.campaign_id, opened.recipient_id, opened.sent_at) == (
            CAMPAIGN,
            message.recipient_id,
            SENT,
        )
        # The text part keeps the original links: readable, and what the reader sees.
        assert "https://shop.example.org/a?x=1&y=2" in message.text
        assert "/c/" not in message.text and "/o/" not in message.text


def test_the_substitution_path_stays_one_shared_body() -> None:
    content = Content(uuid.uuid4(), CAMPAIGN, "S", HTML, None, "a@example.com", None, tracking=True)
    people = [BatchRecipient(recipient_id=i, email=f"u{i}@x.org") for i in range(3)]
    outbox = build_outbox(content, CAMPAIGN, "b", people, POLICY, now=SENT)
    assert outbox.templated is not None and not outbox.individual
    # The URL half of each link is literal in the shared body; only the signature varies.
    assert link_part(CAMPAIGN, 0, "https://shop.example.org/a?x=1&y=2") in outbox.templated.html
    values = outbox.templated.recipients[0].substitutions
    assert sum(len(k) + len(v) for k, v in values.items()) < 400


def test_a_link_with_a_merge_field_is_tracked_per_recipient() -> None:
    html = '<p>Hi</p><a href="https://x.example.org/u/{{ n }}">me</a>'
    first, second = messages(html)
    urls = [read_click_token(SECRET, *CLICK.findall(m.html)[0]).url for m in (first, second)]
    assert urls == ["https://x.example.org/u/N1", "https://x.example.org/u/N2"]


@pytest.mark.parametrize("html", [SUBSTITUTION, RENDERED], ids=["substitution", "rendered"])
def test_switched_off_the_message_is_as_before(html: str) -> None:
    tracked_off = messages(html, tracking=False)
    for message in tracked_off:
        assert "/c/" not in message.html and "/o/" not in message.html
        assert 'href="https://shop.example.org/a?x=1&amp;y=2"' in message.html


def test_links_already_on_the_edge_and_odd_urls_are_left_alone() -> None:
    html = (
        f'<a href="{BASE}/u/abc">u</a><a href="javascript:alert(1)">j</a>'
        '<a href="https://ok.example.org/">ok</a><a href="https://x.example.org/'
        + "a"
        * 2100
        + '">long</a><a name="x">no href</a><area href="https://map.example.org/">'
        '<a data-href="https://data.example.org/" HREF=https://bare.example.org/x>d</a>'
    )
    assert [link.url for link in trackable_links(html, BASE)] == [
        "https://ok.example.org/",
        "https://map.example.org/",
        "https://bare.example.org/x",
    ]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_forged_click_tokens_are_refused() -> None:
    tracker = LinkTracker(BASE, SECRET, CAMPAIGN, SENT)
    link, who = CLICK.findall(tracker.click_url(3, "https://shop.example.org/", 7))[0]
    assert read_click_token(SECRET, link, who).url == "https://shop.example.org/"
    # Another URL under the same signature: the redirect is not open.
    evil = link_part(CAMPAIGN, 3, "https://evil.example.net/")
    # Another link index, another campaign, another recipient, another send time.
    raw = bytearray(_unb64(link))
    raw[17:19] = (4).to_bytes(2, "big")
    other_index = _b64(bytes(raw))
    other_campaign = link_part(uuid.uuid4(), 3, "https://shop.example.org/")
    who_raw = bytearray(_unb64(who))
    who_raw[7] ^= 1
    other_recipient = _b64(bytes(who_raw))
    who_raw = bytearray(_unb64(who))
    who_raw[11] ^= 1
    other_time = _b64(bytes(who_raw))
    forged = [
        (evil, who),
        (other_index, who),
        (other_campaign, who),
        (link, other_recipient),
        (link, other_time),
        (link, who_part("another-secret", link, 7, SENT)),
        (link, who[:-2]),
        ("", who),
        (link, ""),
        ("!!!", who),
        (link + "x", who),
    ]
    for bad_link, bad_who in forged:
        with pytest.raises(BadTrackingToken):
            read_click_token(SECRET, bad_link, bad_who)
    # A link signed for a non-http URL is refused even with a good signature.
    js = link_part(CAMPAIGN, 0, "javascript:alert(1)")
    with pytest.raises(BadTrackingToken):
        read_click_token(SECRET, js, who_part(SECRET, js, 7, SENT))


def test_forged_open_tokens_are_refused() -> None:
    token = open_token(SECRET, CAMPAIGN, 7, SENT)
    assert read_open_token(SECRET, token) == Hit("open", CAMPAIGN, 7, SENT)
    raw = bytearray(_unb64(token))
    raw[20] ^= 1  # the recipient id
    for bad in (_b64(bytes(raw)), token[:-3], "", "abc", open_token("other", CAMPAIGN, 7, SENT)):
        with pytest.raises(BadTrackingToken):
            read_open_token(SECRET, bad)
    # A click's signature does not make an open token, nor the other way round.
    link = link_part(CAMPAIGN, 0, "https://a.example.org/")
    with pytest.raises(BadTrackingToken):
        read_open_token(SECRET, who_part(SECRET, link, 7, SENT))


def test_machine_hits() -> None:
    opened = Hit("open", CAMPAIGN, 1, SENT)
    browser = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
    assert machine_reason(opened, "Mozilla/5.0", "203.0.113.9", SENT + 3600) == "apple_mpp"
    assert machine_reason(opened, browser, "17.58.101.4", SENT + 3600) == "apple_mpp"
    assert machine_reason(opened, browser, "203.0.113.9", SENT + 1) is None
    clicked = replace(opened, kind="click", link_index=0, url="https://a.example.org/")
    assert machine_reason(clicked, browser, "203.0.113.9", SENT + 2) == "scanner"
    assert machine_reason(clicked, browser, "203.0.113.9", SENT + 2, scanner_seconds=1) is None
    assert machine_reason(clicked, browser, "203.0.113.9", SENT + 600) is None
    # Apple's proxy prefetches images, not links: a later click from 17/8 is a person's.
    assert machine_reason(clicked, "Mozilla/5.0", "17.58.101.4", SENT + 600) is None


def test_sendgrid_adds_no_tracking_of_its_own_when_we_track() -> None:
    from libs.mail.providers.sendgrid_payload import (
        message_payload,
        templated_payloads,
        without_sendgrid_tracking,
    )

    for tracking in (True, False):
        content = Content(
            uuid.uuid4(), CAMPAIGN, "S", HTML, None, "a@example.com", None, tracking=tracking
        )
        outbox = build_outbox(
            content, CAMPAIGN, "b", [BatchRecipient(recipient_id=1, email="u1@x.org")], POLICY
        )
        assert outbox.own_tracking is tracking
    assert outbox.templated is not None
    ((payload, _),) = templated_payloads(outbox.sender, outbox.templated)
    assert "tracking_settings" not in payload  # the account's own settings apply
    off = without_sendgrid_tracking(payload)["tracking_settings"]
    assert off["click_tracking"]["enable"] is False and off["open_tracking"]["enable"] is False
    message = outbox.templated.expand(outbox.templated.recipients[0])
    assert "tracking_settings" in without_sendgrid_tracking(message_payload(outbox.sender, message))
