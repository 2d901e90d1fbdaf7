"""Rendering: merge fields, escaping, substitutions vs full render, headers."""

from __future__ import annotations

import uuid

import pytest

from libs.common.events import BatchRecipient
from libs.common.templating import check_template, simple_template_pieces
from libs.common.unsubscribe import BadToken, read_token
from libs.mail.headers import HeaderPolicy
from libs.mail.html_text import html_to_text
from libs.mail.rendering import Content, build_outbox, render_message

POLICY = HeaderPolicy("https://mail.example.com", "s3cret", "unsub@example.com")
CAMPAIGN = uuid.UUID("00000000-0000-4000-8000-000000000001")


def content(subject: str, html: str, text: str | None = None) -> Content:
    return Content(uuid.uuid4(), CAMPAIGN, subject, html, text, "news@example.com", "News")


def recipient(rid: int, email: str, **fields: object) -> BatchRecipient:
    return BatchRecipient(recipient_id=rid, email=email, fields=fields)


def outbox_messages(c: Content, recipients: list[BatchRecipient]) -> dict[int, object]:
    outbox = build_outbox(c, CAMPAIGN, "b:0", recipients, POLICY)
    messages = {m.recipient_id: m for m in outbox.individual}
    if outbox.templated:
        for r in outbox.templated.recipients:
            messages[r.recipient_id] = outbox.templated.expand(r)
    return messages


def test_merge_fields_fill_subject_html_and_text_per_recipient() -> None:
    c = content(
        "Hi {{ first_name }}", "<p>Dear {{ first_name }} ({{ email }})</p>", "Dear {{ first_name }}"
    )
    msgs = outbox_messages(
        c, [recipient(1, "ann@x.org", first_name="Ann"), recipient(2, "bo@x.org", first_name="Bo")]
    )
    assert msgs[1].subject == "Hi Ann"  # type: ignore[attr-defined]
    assert msgs[1].html == "<p>Dear Ann (ann@x.org)</p>"  # type: ignore[attr-defined]
    assert msgs[2].text == "Dear Bo"  # type: ignore[attr-defined]


def test_merge_fields_are_escaped_in_html_and_raw_in_text_and_subject() -> None:
    c = content("For {{ name }}", "<b>{{ name }}</b>", "Hello {{ name }}")
    msgs = outbox_messages(c, [recipient(1, "a@x.org", name="Tom & <Jerry>")])
    m = msgs[1]
    assert m.html == "<b>Tom &amp; &lt;Jerry&gt;</b>"  # type: ignore[attr-defined]
    assert m.text == "Hello Tom & <Jerry>"  # type: ignore[attr-defined]
    assert m.subject == "For Tom & <Jerry>"  # type: ignore[attr-defined]


def test_simple_templates_use_one_substitution_group_matching_a_full_render() -> None:
    c = content(
        "Hi {{ first_name }}",
        '<p>Hi {{ first_name }}, <a href="https://x.org/?e={{ email }}">you</a> {{ missing }}'
        " score {{ score }} {{ flag }}</p>",
    )
    people = [
        recipient(1, "a@x.org", first_name='Zoë "Z" O\'Neil', score=3.5, flag=None),
        recipient(2, "b@x.org", first_name="<script>", score=[1, "<"], flag=True),
        recipient(3, "c@x.org"),
    ]
    outbox = build_outbox(c, CAMPAIGN, "b:0", people, POLICY)
    assert outbox.templated is not None and len(outbox.templated.recipients) == 3
    assert outbox.individual == []
    for r, templated in zip(people, outbox.templated.recipients, strict=True):
        expected = render_message(c, r, templated.headers, templated.custom_args)
        got = outbox.templated.expand(templated)
        assert (got.subject, got.html, got.headers) == (
            expected.subject,
            expected.html,
            expected.headers,
        )
        # The generated text part may differ only in whitespace: text derived from the shared
        # body cannot collapse the spaces around a value that turns out empty.
        assert got.text.split() == expected.text.split()


def test_rich_templates_and_tag_like_values_are_rendered_per_recipient() -> None:
    rich = content("Hi {{ name | upper }}", "<p>{% if vip %}VIP {% endif %}{{ name }}</p>")
    outbox = build_outbox(
        rich, CAMPAIGN, "b:0", [recipient(1, "a@x.org", name="al", vip=True)], POLICY
    )
    assert outbox.templated is None
    assert outbox.individual[0].subject == "Hi AL"
    assert outbox.individual[0].html == "<p>VIP al</p>"

    simple = content("Hi {{ name }}", "<p>{{ name }}</p>")
    outbox = build_outbox(
        simple,
        CAMPAIGN,
        "b:0",
        [recipient(1, "a@x.org", name="{{h:x}}"), recipient(2, "b@x.org", name="ok")],
        POLICY,
    )
    assert [m.recipient_id for m in outbox.individual] == [1]
    assert outbox.individual[0].html == "<p>{{h:x}}</p>"
    assert outbox.templated is not None and [
        r.recipient_id for r in outbox.templated.recipients
    ] == [2]


def test_text_part_is_generated_from_html_when_missing() -> None:
    c = content(
        "s",
        '<h1>Hello {{ name }}</h1><p>Visit <a href="https://x.org">us</a><br>now &amp; later</p>',
    )
    msgs = outbox_messages(c, [recipient(1, "a@x.org", name="A&B")])
    assert msgs[1].text == "Hello A&B\n\nVisit us (https://x.org)\nnow & later\n"  # type: ignore[attr-defined]
    assert html_to_text("<style>x{}</style><ul><li>a</li><li>b</li></ul>") == "- a\n- b\n"


def test_invalid_addresses_and_runtime_template_errors_are_settled_not_sent() -> None:
    c = content("s", "<p>{{ 1 / n }}</p>")
    outbox = build_outbox(
        c,
        CAMPAIGN,
        "b:0",
        [
            recipient(1, "not-an-address"),
            recipient(2, "a@x.org", n=0),
            recipient(3, "b@x.org", n=2),
        ],
        POLICY,
    )
    settled = {o.recipient_id: o for o in outbox.settled}
    assert settled[1].status == "invalid"
    assert settled[2].status == "failed" and "division by zero" in (settled[2].error or "")
    assert [m.recipient_id for m in outbox.individual] == [3]


def test_every_message_carries_unsubscribe_message_id_and_correlation_ids() -> None:
    c = content("s", "<p>{{ email }}</p>")
    outbox = build_outbox(
        c, CAMPAIGN, "b:7", [recipient(41, "a@x.org"), recipient(42, "b@x.org")], POLICY
    )
    assert outbox.templated is not None
    first, second = outbox.templated.recipients
    assert first.custom_args == {
        "campaign_id": str(CAMPAIGN),
        "recipient_id": "41",
        "batch_id": "b:7",
    }
    assert first.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url, mailto = first.headers["List-Unsubscribe"].split(", ")
    assert url.startswith("<https://mail.example.com/u/")
    assert mailto == "<mailto:unsub@example.com?subject=unsubscribe>"
    token = url.removeprefix("<https://mail.example.com/u/").removesuffix(">")
    target = read_token("s3cret", token)
    assert (target.campaign_id, target.recipient_id) == (CAMPAIGN, 41)
    with pytest.raises(BadToken):
        read_token("other", token)
    assert first.headers["Message-ID"] != second.headers["Message-ID"]
    assert first.headers["Message-ID"].endswith("@example.com>")


def test_template_checks_still_name_the_line_and_simple_pieces_reject_rich_syntax() -> None:
    problem = check_template("html", "<p>ok</p>\n{{ broken ")
    assert problem is not None and problem.line == 2
    assert check_template("subject", "Hi {{ name }}") is None
    assert simple_template_pieces("a {{ x.y }}") is None
    assert simple_template_pieces("a {{ range }}") is None
    assert simple_template_pieces("{% raw %}{{x}}{% endraw %}") == ["{{x}}"]


# ----- a message that cannot be built fails alone (issue 11, items 3 and 7) -----


@pytest.mark.parametrize(
    "subject",
    ["Hi {{ name }}", "{% if name %}Hi {{ name|trim }}{% endif %}"],
    ids=["simple", "rich"],
)
def test_a_line_break_from_a_merge_field_fails_that_recipient_alone(subject: str) -> None:
    c = content(subject, "<p>{{ name }}</p>")
    people = [
        recipient(1, "a@x.org", name="Ann"),
        recipient(2, "b@x.org", name="Eve\r\nBcc: all@x.org"),
        recipient(3, "c@x.org", name="Bo\nX-Spam: yes"),
        recipient(4, "d@x.org", name="Al"),
    ]
    outbox = build_outbox(c, CAMPAIGN, "b:0", people, POLICY)
    failed = {o.recipient_id: o for o in outbox.settled}
    assert set(failed) == {2, 3}
    assert {o.status for o in failed.values()} == {"failed"}
    assert all("line break" in (o.error or "") for o in failed.values())
    assert outbox.recipient_count == 2


def test_a_sender_name_with_a_line_break_fails_every_recipient() -> None:
    c = Content(
        uuid.uuid4(), CAMPAIGN, "Hi", "<p>x</p>", None, "news@x.org", "News\r\nBcc: a@x.org"
    )
    outbox = build_outbox(c, CAMPAIGN, "b:0", [recipient(1, "a@x.org")], POLICY)
    assert outbox.recipient_count == 0
    assert outbox.settled[0].status == "failed" and "from_name" in (outbox.settled[0].error or "")


def test_a_message_past_its_limits_fails_alone_with_the_reason() -> None:
    c = content("Hi", "{{ 'x' * n }}")
    people = [recipient(1, "a@x.org", n=10), recipient(2, "b@x.org", n=10**9)]
    outbox = build_outbox(c, CAMPAIGN, "b:0", people, POLICY)
    assert [m.recipient_id for m in outbox.individual] == [1]
    (failed,) = outbox.settled
    assert failed.recipient_id == 2 and failed.status == "failed"
    assert (failed.error or "").startswith("template too costly:")
    assert "MAILFLEET_RENDER_MAX_BYTES" in (failed.error or "")
