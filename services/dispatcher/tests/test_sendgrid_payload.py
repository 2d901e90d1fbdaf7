"""SendGrid payloads as SendGrid's API documents them, and the sink's check of its limits."""

from __future__ import annotations

import uuid
from typing import Any

from sendgrid.helpers.mail import CustomArg, Header, Personalization, Substitution, To

from libs.common.events import BatchRecipient
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Sender, TemplatedGroup, TemplatedRecipient
from libs.mail.providers.sendgrid_payload import (
    message_payload,
    personalization,
    templated_payloads,
)
from libs.mail.rendering import Content, build_outbox
from libs.mail.sendgrid_limits import validate_mail_send

POLICY = HeaderPolicy("https://mail.example.com", "k")
CAMPAIGN = uuid.uuid4()


def batch_outbox(n: int, html: str = "<p>Hi {{ first_name }}</p>") -> Any:
    c = Content(uuid.uuid4(), CAMPAIGN, "Hello {{ first_name }}", html, None, "n@example.com", "N")
    people = [
        BatchRecipient(recipient_id=i, email=f"user{i}@example.com", fields={"first_name": f"F{i}"})
        for i in range(n)
    ]
    return build_outbox(c, CAMPAIGN, f"{CAMPAIGN}:0", people, POLICY)


def test_a_large_templated_batch_is_one_request_per_thousand_valid_personalizations() -> None:
    outbox = batch_outbox(2500)
    requests = templated_payloads(outbox.sender, outbox.templated)
    assert [len(p["personalizations"]) for p, _ in requests] == [1000, 1000, 500]
    for payload, chunk in requests:
        assert validate_mail_send(payload) == []
        assert [p["to"][0]["email"] for p in payload["personalizations"]] == [
            r.email for r in chunk
        ]
    first = requests[0][0]
    assert first["from"] == {"email": "n@example.com", "name": "N"}
    assert [c["type"] for c in first["content"]] == ["text/plain", "text/html"]
    item = first["personalizations"][7]
    args = {**first["custom_args"], **item["custom_args"]}  # as SendGrid merges them
    assert args["recipient_id"] == "7"
    assert args["campaign_id"] == str(CAMPAIGN)
    assert item["substitutions"] == {"{{t:first_name}}": "F7", "{{h:first_name}}": "F7"}
    assert "Message-ID" in item["headers"] and "List-Unsubscribe" in item["headers"]


def test_what_every_recipient_has_alike_is_sent_once_and_each_keeps_its_own() -> None:
    outbox = batch_outbox(3)
    recipients = outbox.templated.recipients
    # One recipient's List-Id differs: it stays in that recipient's personalization only.
    odd = TemplatedRecipient(
        recipients[1].recipient_id, recipients[1].email, recipients[1].substitutions,
        {**recipients[1].headers, "List-Id": "<other.example.com>"}, recipients[1].custom_args,
    )  # fmt: skip
    group = TemplatedGroup(
        outbox.templated.subject, outbox.templated.html, outbox.templated.text,
        [recipients[0], odd, recipients[2]],
    )  # fmt: skip
    ((payload, _),) = templated_payloads(outbox.sender, group)
    assert validate_mail_send(payload) == []
    assert set(payload["headers"]) == {"List-Unsubscribe-Post", "Feedback-ID"}
    assert payload["custom_args"] == {"campaign_id": str(CAMPAIGN), "batch_id": f"{CAMPAIGN}:0"}
    for item, wanted in zip(payload["personalizations"], group.recipients, strict=True):
        # What SendGrid applies to each recipient is exactly what it was rendered with.
        assert {**payload["headers"], **item["headers"]} == wanted.headers
        assert {**payload["custom_args"], **item["custom_args"]} == wanted.custom_args
        assert "Feedback-ID" not in item["headers"] and "campaign_id" not in item["custom_args"]
    assert payload["personalizations"][1]["headers"]["List-Id"] == "<other.example.com>"
    assert "List-Id" in payload["personalizations"][0]["headers"]


def test_personalizations_match_the_sendgrid_package_model() -> None:
    headers = {"List-Unsubscribe": "<https://x/u/1>", "Message-ID": "<a@b>"}
    args = {"campaign_id": "c", "recipient_id": "1"}
    subs = {"{{t:n}}": "Ann"}
    model = Personalization()
    model.add_to(To("ann@example.com"))
    for k, v in headers.items():
        model.add_header(Header(k, v))
    for k, v in subs.items():
        model.add_substitution(Substitution(k, v))
    for k, v in args.items():
        model.add_custom_arg(CustomArg(k, v))
    assert personalization("ann@example.com", headers, args, subs) == model.get()


def test_individually_rendered_messages_are_valid_single_personalization_requests() -> None:
    outbox = batch_outbox(2, html="<p>{{ first_name | lower }}</p>")
    payload = message_payload(outbox.sender, outbox.individual[1])
    assert validate_mail_send(payload) == []
    assert payload["content"][1]["value"] == "<p>f1</p>"
    assert payload["subject"] == "Hello F1"
    assert len(payload["personalizations"]) == 1


def fields_of(payload: Any) -> set[str | None]:
    return {e.field for e in validate_mail_send(payload)}


def valid() -> dict[str, Any]:
    return message_payload(
        Sender("n@example.com"), batch_outbox(1, html="<p>{{ first_name | e }}</p>").individual[0]
    )


def test_the_sink_rules_reject_what_sendgrid_rejects() -> None:
    too_many = valid()
    too_many["personalizations"] = [{"to": [{"email": f"u{i}@x.org"}]} for i in range(1001)]
    assert "personalizations" in fields_of(too_many)

    no_from = valid()
    del no_from["from"]
    assert "from.email" in fields_of(no_from)

    bad_to = valid()
    bad_to["personalizations"][0]["to"] = [{"email": "nope"}]
    assert "personalizations.0.to.0.email" in fields_of(bad_to)

    reserved = valid()
    reserved["personalizations"][0]["headers"]["Subject"] = "x"
    assert "personalizations.0.headers.Subject" in fields_of(reserved)

    big_subs = valid()
    big_subs["personalizations"][0]["substitutions"] = {"{{x}}": "y" * 10_001}
    assert "personalizations.0.substitutions" in fields_of(big_subs)

    html_first = valid()
    html_first["content"].reverse()
    assert "content" in fields_of(html_first)

    empty_value = valid()
    empty_value["content"][1]["value"] = ""
    assert "content.1.value" in fields_of(empty_value)

    no_subject = valid()
    del no_subject["subject"]
    assert "subject" in fields_of(no_subject)

    duplicate = valid()
    duplicate["personalizations"][0]["cc"] = [
        {"email": duplicate["personalizations"][0]["to"][0]["email"]}
    ]
    assert "personalizations.0.cc.0.email" in fields_of(duplicate)

    non_string_arg = valid()
    non_string_arg["personalizations"][0]["custom_args"]["n"] = 1
    assert "personalizations.0.custom_args.n" in fields_of(non_string_arg)

    assert validate_mail_send(valid()) == []
    assert validate_mail_send([]) != []
