"""SendGrid v3 mail/send payloads (pure): one request per ≤1,000 templated recipients.

The shared part (from, subject, content) is built with the `sendgrid` package's `Mail`
model; personalizations are plain dicts in exactly the shape its `Personalization.get()`
produces (a test holds them equal), because building 1,000 helper objects per request costs
~25 ms of CPU, a large share of the dispatcher's budget at a million emails a minute.
"""

from __future__ import annotations

from typing import Any

from sendgrid.helpers.mail import Content, From, Mail, Subject

from libs.mail.messages import Message, Sender, TemplatedGroup, TemplatedRecipient

MAX_PERSONALIZATIONS = 1000

Payload = dict[str, Any]


def _shared(sender: Sender, subject: str, text: str, html: str) -> Payload:
    mail = Mail()
    mail.from_email = From(sender.email, sender.name or None)
    mail.subject = Subject(subject)
    # SendGrid requires text/plain before text/html.
    mail.add_content(Content("text/plain", text))
    mail.add_content(Content("text/html", html))
    payload: Payload = mail.get()
    payload.pop("personalizations", None)
    return payload


def personalization(
    email: str,
    headers: dict[str, str],
    custom_args: dict[str, str],
    substitutions: dict[str, str] | None = None,
) -> Payload:
    item: Payload = {"to": [{"email": email}]}
    if headers:
        item["headers"] = headers
    if substitutions:
        item["substitutions"] = substitutions
    if custom_args:
        item["custom_args"] = custom_args
    return item


def shared_entries(maps: list[dict[str, str]]) -> dict[str, str]:
    """The entries every one of `maps` holds with the same value."""
    if not maps:
        return {}
    shared = dict(maps[0])
    for other in maps[1:]:
        for key, value in list(shared.items()):
            if other.get(key) != value:
                del shared[key]
        if not shared:
            break
    return shared


def templated_payloads(
    sender: Sender, group: TemplatedGroup, max_per_request: int = MAX_PERSONALIZATIONS
) -> list[tuple[Payload, list[TemplatedRecipient]]]:
    """One payload per chunk of recipients, with the recipients it carries.

    Headers and custom args that every recipient of a chunk has alike (List-Id,
    Feedback-ID, List-Unsubscribe-Post, the campaign and batch ids) are sent once, at the
    message level, where SendGrid applies them to every personalization (and merges the
    custom args into each one's events): a third of the bytes of a request, that each
    recipient would otherwise carry again.
    """
    shared = _shared(sender, group.subject, group.text, group.html)
    chunks = []
    size = max(1, min(max_per_request, MAX_PERSONALIZATIONS))
    for start in range(0, len(group.recipients), size):
        chunk = group.recipients[start : start + size]
        payload = dict(shared)
        common_headers = shared_entries([r.headers for r in chunk])
        common_args = shared_entries([r.custom_args for r in chunk])
        if common_headers:
            payload["headers"] = common_headers
        if common_args:
            payload["custom_args"] = common_args
        payload["personalizations"] = [
            personalization(
                r.email,
                {k: v for k, v in r.headers.items() if k not in common_headers},
                {k: v for k, v in r.custom_args.items() if k not in common_args},
                r.substitutions,
            )
            for r in chunk
        ]
        chunks.append((payload, chunk))
    return chunks


# Our own tracking is on: SendGrid's click tracking would wrap our signed redirects in its
# own, and its pixel would count every open a second time.
SENDGRID_TRACKING_OFF: Payload = {
    "click_tracking": {"enable": False, "enable_text": False},
    "open_tracking": {"enable": False},
}


def without_sendgrid_tracking(payload: Payload) -> Payload:
    return {**payload, "tracking_settings": SENDGRID_TRACKING_OFF}


def message_payload(sender: Sender, message: Message) -> Payload:
    payload = _shared(sender, message.subject, message.text, message.html)
    payload["personalizations"] = [
        personalization(message.email, message.headers, message.custom_args)
    ]
    return payload
