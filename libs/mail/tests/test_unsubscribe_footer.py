"""Every HTML body shows an unsubscribe link: the template's own, or the footer."""

from __future__ import annotations

import uuid

import pytest

from libs.common.events import BatchRecipient
from libs.common.settings import DEFAULT_UNSUBSCRIBE_FOOTER, Settings
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Message
from libs.mail.rendering import Content, build_outbox

POLICY = HeaderPolicy("https://m.example.com", "k", unsubscribe_footer=DEFAULT_UNSUBSCRIBE_FOOTER)


def bodies(html: str) -> list[str]:
    campaign = uuid.uuid4()
    content = Content(uuid.uuid4(), campaign, "S", html, None, "a@example.com", None)
    people = [
        BatchRecipient(recipient_id=i, email=f"u{i}@x.org", fields={"n": "<b>"}) for i in (1, 2)
    ]
    outbox = build_outbox(content, campaign, "b", people, POLICY)
    messages: list[Message] = list(outbox.individual)
    if outbox.templated is not None:
        messages += [outbox.templated.expand(r) for r in outbox.templated.recipients]
    assert len(messages) == 2
    return [m.html for m in sorted(messages, key=lambda m: m.recipient_id)]


@pytest.mark.parametrize(
    "html",
    ["<p>Hi {{ n }}</p>", "{% if n %}<p>Hi {{ n }}</p>{% endif %}"],
    ids=["substitution", "rendered"],
)
def test_a_template_without_a_link_gets_the_footer_with_each_recipients_own_link(html: str) -> None:
    first, second = bodies(f"<html><body>{html}</body></html>")
    for body, rid in ((first, 1), (second, 2)):
        link = POLICY.unsubscribe_link(uuid.UUID(int=0), rid).split("/u/")[0]
        assert f'<a href="{link}/u/' in body and body.endswith("</p></body></html>")
    assert first.split('href="')[1] != second.split('href="')[1]


def test_a_template_with_its_own_link_gets_no_footer() -> None:
    [body, _] = bodies('<p>Bye: <a href="{{ unsubscribe_url }}">here</a></p>')
    assert body.count("https://m.example.com/u/") == 1 and "Unsubscribe</a>" not in body


def test_a_recipient_field_cannot_replace_the_link() -> None:
    campaign = uuid.uuid4()
    content = Content(uuid.uuid4(), campaign, "S", "<p>x</p>", None, "a@example.com", None)
    person = BatchRecipient(
        recipient_id=1, email="u@x.org", fields={"unsubscribe_url": "https://evil"}
    )
    outbox = build_outbox(content, campaign, "b", [person], POLICY)
    message = (
        outbox.templated.expand(outbox.templated.recipients[0])
        if outbox.templated
        else outbox.individual[0]
    )
    assert "https://evil" not in message.html and "https://m.example.com/u/" in message.html


def test_a_footer_without_the_link_is_refused() -> None:
    with pytest.raises(ValueError, match="unsubscribe_url"):
        Settings(MAILFLEET_UNSUBSCRIBE_FOOTER="<p>bye</p>")
