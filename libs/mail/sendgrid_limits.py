"""SendGrid v3 `/v3/mail/send` request rules, as documented, checked on a decoded payload.

The sink answers 400 with these errors, so a payload the dispatcher builds is proven valid
against the same limits SendGrid enforces (sizes, counts, required fields, content order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.mail.messages import is_valid_address

MAX_REQUEST_BYTES = 30 * 1024 * 1024
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS_PER_REQUEST = 1000
MAX_SUBSTITUTION_BYTES = 10_000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "x-sg-id", "x-sg-eid", "received", "dkim-signature", "Content-Type",
        "Content-Transfer-Encoding", "To", "From", "Subject", "Reply-To", "CC", "BCC",
    )
)  # fmt: skip
HELP_URL = "https://docs.sendgrid.com/api-reference/mail-send/errors"


@dataclass(frozen=True)
class SendGridError:
    message: str
    field: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"message": self.message, "field": self.field, "help": HELP_URL}


def _string_map_size(value: dict[str, Any]) -> int:
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in value.items())


class _Checker:
    def __init__(self) -> None:
        self.errors: list[SendGridError] = []

    def fail(self, message: str, field: str | None) -> None:
        self.errors.append(SendGridError(message, field))

    def address(self, value: Any, field: str, *, required: bool = True) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("email"), str):
            self.fail("The email address is required.", f"{field}.email")
            return None
        email: str = value["email"]
        if not is_valid_address(email):
            self.fail("Does not contain a valid address.", f"{field}.email")
        if "name" in value and not isinstance(value["name"], str):
            self.fail("The name must be a string.", f"{field}.name")
        return email.lower()

    def string_map(self, value: Any, field: str, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"The {what} must be an object.", field)
            return {}
        for key, item in value.items():
            if not isinstance(item, str):
                self.fail(f"The {what} values must be strings.", f"{field}.{key}")
        return value

    def headers(self, value: Any, field: str) -> None:
        for name in self.string_map(value, field, "headers"):
            if name.lower() in RESERVED_HEADERS:
                self.fail(f"The header {name} is reserved and cannot be set.", f"{field}.{name}")


def _check_personalization(
    check: _Checker, item: Any, index: int, global_args: int
) -> tuple[int, bool]:
    """Returns (recipients in it, has its own subject)."""
    field = f"personalizations.{index}"
    if not isinstance(item, dict):
        check.fail("The personalization must be an object.", field)
        return 0, False
    to = item.get("to")
    if not isinstance(to, list) or not to:
        check.fail(
            "The to array is required for all personalization objects, and must have at "
            "least one email object with a valid email address.",
            f"{field}.to",
        )
        to = []
    seen: set[str] = set()
    count = 0
    for kind in ("to", "cc", "bcc"):
        entries = item.get(kind) or []
        if not isinstance(entries, list):
            check.fail(f"The {kind} must be an array.", f"{field}.{kind}")
            continue
        for n, entry in enumerate(entries):
            email = check.address(entry, f"{field}.{kind}.{n}")
            count += 1
            if email is not None and email in seen:
                check.fail(
                    "Each email address in the personalization block should be unique "
                    "between to, cc, and bcc.",
                    f"{field}.{kind}.{n}.email",
                )
            if email is not None:
                seen.add(email)
    subject = item.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject):
        check.fail("The subject must be a non-empty string.", f"{field}.subject")
    if "headers" in item:
        check.headers(item["headers"], f"{field}.headers")
    if "substitutions" in item:
        subs = check.string_map(item["substitutions"], f"{field}.substitutions", "substitutions")
        if _string_map_size(subs) > MAX_SUBSTITUTION_BYTES:
            check.fail(
                "The total collective size of your substitutions may not exceed 10,000 bytes "
                "per personalization object.",
                f"{field}.substitutions",
            )
        if "dynamic_template_data" in item:
            check.fail(
                "substitutions and dynamic_template_data cannot be used together.",
                f"{field}.substitutions",
            )
    if "custom_args" in item:
        args = check.string_map(item["custom_args"], f"{field}.custom_args", "custom_args")
        if _string_map_size(args) + global_args > MAX_CUSTOM_ARGS_BYTES:
            check.fail(
                "The total size of custom arguments may not exceed 10,000 bytes.",
                f"{field}.custom_args",
            )
    return count, isinstance(subject, str) and bool(subject)


def _check_content(check: _Checker, content: Any) -> None:
    if not isinstance(content, list) or not content:
        check.fail(
            "Unless a valid template_id is provided, the content parameter is required.", "content"
        )
        return
    types: list[str] = []
    for n, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str) or not part["type"]:
            check.fail(
                "The content type must be a string at least one character in length.",
                f"content.{n}.type",
            )
            continue
        value = part.get("value")
        if not isinstance(value, str) or not value:
            check.fail(
                "The content value must be a string at least one character in length.",
                f"content.{n}.value",
            )
        types.append(part["type"])
    if "text/plain" in types and types[0] != "text/plain":
        check.fail(
            "If present, text/plain must be first, followed by text/html, followed by any other content.",
            "content",
        )
    if "text/html" in types and types.index("text/html") > (1 if "text/plain" in types else 0):
        check.fail(
            "If present, text/plain must be first, followed by text/html, followed by any other content.",
            "content",
        )


def validate_mail_send(payload: Any, body_size: int = 0) -> list[SendGridError]:
    """Every rule `payload` breaks; empty when SendGrid would accept it."""
    check = _Checker()
    if body_size > MAX_REQUEST_BYTES:
        check.fail("The total size of your email must be less than 30MB.", None)
    if not isinstance(payload, dict):
        check.fail("The request body must be a JSON object.", None)
        return check.errors
    personalizations = payload.get("personalizations")
    global_args = 0
    if "custom_args" in payload:
        global_args = _string_map_size(
            check.string_map(payload["custom_args"], "custom_args", "custom_args")
        )
    every_has_subject = True
    if not isinstance(personalizations, list) or not personalizations:
        check.fail(
            "The personalizations field is required and must have at least one personalization.",
            "personalizations",
        )
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        check.fail("The personalizations field can contain at most 1000 items.", "personalizations")
    total = 0
    for index, item in enumerate(personalizations):
        count, has_subject = _check_personalization(check, item, index, global_args)
        total += count
        every_has_subject = every_has_subject and has_subject
    if total > MAX_RECIPIENTS_PER_REQUEST:
        check.fail("The total number of recipients must be no more than 1000.", "personalizations")
    check.address(payload.get("from"), "from")
    check.address(payload.get("reply_to"), "reply_to", required=False)
    templated = isinstance(payload.get("template_id"), str)
    subject = payload.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject):
        check.fail("The subject must be a non-empty string.", "subject")
    elif subject is None and not every_has_subject and not templated:
        check.fail(
            "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
            "subject",
        )
    if not templated or "content" in payload:
        _check_content(check, payload.get("content"))
    if "headers" in payload:
        check.headers(payload["headers"], "headers")
    categories = payload.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or len(categories) > MAX_CATEGORIES:
            check.fail("Too many categories: at most 10.", "categories")
        elif any(not isinstance(c, str) or len(c) > MAX_CATEGORY_LENGTH for c in categories):
            check.fail("A category must be a string of at most 255 characters.", "categories")
    send_at = payload.get("send_at")
    if send_at is not None and not isinstance(send_at, int):
        check.fail("send_at must be a UNIX timestamp.", "send_at")
    return check.errors
