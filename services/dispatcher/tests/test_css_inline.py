"""CSS is inlined into HTML bodies (css-inline), in both rendering paths."""

from __future__ import annotations

import uuid

from libs.common.events import BatchRecipient
from libs.mail.headers import HeaderPolicy
from libs.mail.rendering import Content, build_outbox, inline_css

POLICY = HeaderPolicy("https://mail.example.com", "s3cret")
CAMPAIGN = uuid.uuid4()
STYLED = (
    "<html><head><style>p.lead { color: #c00; } @media (max-width: 600px) "
    "{ p { font-size: 18px; } }</style></head>"
    "<body><p class='lead'>Dear {{ first_name }}</p>{BODY}</body></html>"
)


def content(html: str) -> Content:
    return Content(uuid.uuid4(), CAMPAIGN, "Hi", html, None, "news@example.com", None)


def recipients() -> list[BatchRecipient]:
    return [BatchRecipient(recipient_id=1, email="a@example.com", fields={"first_name": "Ann"})]


def test_html_without_a_stylesheet_is_left_as_it_is() -> None:
    assert inline_css("<p>Dear x &amp; y</p>") == "<p>Dear x &amp; y</p>"


def test_substitution_bodies_are_inlined_once_and_keep_their_tags() -> None:
    outbox = build_outbox(
        content(STYLED.replace("{BODY}", "")), CAMPAIGN, "b:0", recipients(), POLICY
    )
    assert outbox.templated is not None
    message = outbox.templated.expand(outbox.templated.recipients[0])
    assert '<p class="lead" style="color: #c00;">Dear Ann</p>' in message.html
    assert "@media (max-width: 600px)" in message.html  # responsive rules kept in <style>
    assert "color: #c00" not in message.text


def test_rendered_bodies_are_inlined_after_rendering() -> None:
    body = "{% for i in range(2) %}<p class='lead'>#{{ i }}</p>{% endfor %}"
    outbox = build_outbox(
        content(STYLED.replace("{BODY}", body)), CAMPAIGN, "b:0", recipients(), POLICY
    )
    (message,) = outbox.individual
    assert message.html.count('style="color: #c00;"') == 3
    assert "#1</p>" in message.html
