"""Reading a mail from the bounce mailbox: an RFC 3464 DSN or an RFC 5965 ARF report. Pure.

Each report becomes `delivery.event`s: a DSN's failed recipient a `bounce` (detail `type`
`bounce` when the status says the address is dead, `soft` for a 4.x.x given up on, `blocked`
for a refusal of this message), a delayed one `deferred`, an ARF abuse report a
`spamreport`. Which delivery it is about: the signed VERP address the report was sent to
(or that the returned original carries as Return-Path), else the original's Message-ID.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from libs.common.events import DeliveryEvent, DeliveryEventType
from libs.mail.bounces import BounceClass, classify_status, enhanced_status, parse_verp

MAX_REPORT_BYTES = 2 * 1024 * 1024  # larger mail is no report of ours: it goes to Unparsed
MAX_RECIPIENTS_PER_REPORT = 100
MAX_DIAGNOSTIC_CHARS = 500
PROVIDER = "smtp"

# Headers under which the receiving MTA records the address a mail was delivered to: the
# VERP address, for a DSN that went to our envelope sender.
_DELIVERED_TO = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_BOUNCE_TYPE: dict[BounceClass, str] = {"hard": "bounce", "soft": "soft", "block": "blocked"}


class NotAReport(ValueError):  # noqa: N818 - an answer about the input
    """The mail is neither a DSN nor an ARF report we can attribute."""


@dataclass(frozen=True)
class _Original:
    """What the report tells of the message it is about."""

    message_id: str | None
    return_path: str | None
    to: str | None


def parse_report(raw: bytes, secret: str) -> list[DeliveryEvent]:
    """The events a report carries; raises NotAReport for anything else."""
    if len(raw) > MAX_REPORT_BYTES:
        raise NotAReport(f"larger than {MAX_REPORT_BYTES} bytes")
    mail = email.message_from_bytes(raw, policy=email.policy.compat32)
    if mail.get_content_type() != "multipart/report":
        raise NotAReport(f"content type {mail.get_content_type()}, not multipart/report")
    report_type = str(mail.get_param("report-type") or "").lower()
    original = _original(mail)
    report = _Report(
        mail=mail,
        original=original,
        verp=_verp_candidates(mail, original),
        occurred=_date(mail.get("Date")),
        report_id=str(mail.get("Message-ID") or "").strip() or hashlib.sha256(raw).hexdigest(),
        secret=secret,
    )
    if report_type == "delivery-status":
        events = _dsn_events(report)
    elif report_type == "feedback-report":
        events = _arf_events(report)
    else:
        raise NotAReport(f"report-type {report_type or 'missing'}")
    if not events:
        raise NotAReport("no recipient in the report")
    return events


def _part(mail: Message, content_type: str) -> Message | None:
    return next((p for p in mail.walk() if p.get_content_type() == content_type), None)


def _original(mail: Message) -> _Original:
    headers: Message | None = None
    rfc822 = _part(mail, "message/rfc822")
    if rfc822 is not None and _blocks(rfc822):
        headers = _blocks(rfc822)[0]
    else:
        text = _part(mail, "text/rfc822-headers")
        if text is not None:
            payload = text.get_payload(decode=True)
            if isinstance(payload, bytes):
                headers = email.message_from_bytes(payload, policy=email.policy.compat32)
    if headers is None:
        return _Original(None, None, None)
    return _Original(
        _header(headers, "Message-ID"), _header(headers, "Return-Path"), _header(headers, "To")
    )


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a message/* part, as the email package parses them."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [block for block in payload if isinstance(block, Message)]


def _header(mail: Message, name: str) -> str | None:
    value = mail.get(name)
    return " ".join(str(value).split()) or None if value is not None else None


def _verp_candidates(mail: Message, original: _Original) -> list[str]:
    found = [a for name in _DELIVERED_TO for _, a in getaddresses(mail.get_all(name) or [])]
    if original.return_path:
        found.append(original.return_path)
    return found


def _target(
    secret: str, candidates: list[str], original: _Original
) -> tuple[Any, int | None, str | None]:
    """(campaign id, recipient id) from the first valid VERP address, else the Message-ID."""
    for address in candidates:
        target = parse_verp(secret, address)
        if target is not None:
            return target.campaign_id, target.recipient_id, original.message_id
    return None, None, original.message_id


def _date(value: Any) -> datetime:
    try:
        parsed = parsedate_to_datetime(str(value)) if value else None
    except (TypeError, ValueError):
        parsed = None
    if parsed is None:
        return datetime.now(UTC)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _address(field: str | None) -> str | None:
    """`rfc822; user@example.com` -> `user@example.com`."""
    if not field:
        return None
    value = field.split(";", 1)[-1].strip().strip("<>").strip()
    return value if "@" in value else None


@dataclass(frozen=True)
class _Report:
    """A multipart/report being read, and what names the delivery it is about."""

    mail: Message
    original: _Original
    verp: list[str]
    occurred: datetime
    report_id: str
    secret: str

    def event(
        self,
        kind: DeliveryEventType,
        recipient: str,
        detail: dict[str, Any],
        *,
        first_verp: str | None = None,
        occurred: datetime | None = None,
    ) -> DeliveryEvent:
        candidates = [first_verp, *self.verp] if first_verp else self.verp
        campaign_id, recipient_id, message_id = _target(self.secret, candidates, self.original)
        # The same report read twice (a poll that died before moving it, a copy appended
        # again) gives the same event id: the tracker folds it once.
        key = f"{self.report_id}\0{kind}\0{recipient.lower()}"
        return DeliveryEvent(
            event_id=f"imap:{hashlib.sha256(key.encode()).hexdigest()[:40]}",
            campaign_id=campaign_id,
            recipient_id=recipient_id,
            email=recipient,
            event=kind,
            provider=PROVIDER,
            provider_message_id=message_id,
            occurred_at=occurred or self.occurred,
            detail=detail,
        )


def _dsn_events(report: _Report) -> list[DeliveryEvent]:
    status_part = _part(report.mail, "message/delivery-status")
    if status_part is None:
        raise NotAReport("a delivery-status report without its message/delivery-status part")
    blocks = _blocks(status_part)
    if not blocks:
        raise NotAReport("unreadable message/delivery-status part")
    reporting_mta = _address(str(blocks[0].get("Reporting-MTA") or ""))
    events = []
    for block in blocks[1:][:MAX_RECIPIENTS_PER_REPORT]:  # the first block is per-message
        recipient = _address(block.get("Final-Recipient")) or _address(
            block.get("Original-Recipient")
        )
        action = str(block.get("Action") or "").strip().lower()
        if recipient is None or action not in ("failed", "delayed"):
            continue  # delivered / relayed / expanded: nothing went wrong
        diagnostic = " ".join(str(block.get("Diagnostic-Code") or "").split())
        status = enhanced_status(str(block.get("Status") or "")) or enhanced_status(diagnostic)
        kind: DeliveryEventType = "deferred" if action == "delayed" else "bounce"
        detail: dict[str, Any] = {
            "source": "dsn",
            "status": status,
            "diagnostic": diagnostic[:MAX_DIAGNOSTIC_CHARS],
            "reporting_mta": reporting_mta,
        }
        if kind == "bounce":
            detail["type"] = _BOUNCE_TYPE[classify_status(status) if status else "block"]
        events.append(report.event(kind, recipient, detail))
    return events


def _arf_events(report: _Report) -> list[DeliveryEvent]:
    feedback = _part(report.mail, "message/feedback-report")
    if feedback is None:
        raise NotAReport("a feedback-report without its message/feedback-report part")
    fields = _blocks(feedback)
    block = fields[0] if fields else feedback
    feedback_type = str(block.get("Feedback-Type") or "").strip().lower()
    if feedback_type not in ("abuse", "fraud", "virus", "other"):
        raise NotAReport(f"feedback type {feedback_type or 'missing'}")
    recipient = _address(str(block.get("Original-Rcpt-To") or "")) or _address(report.original.to)
    if recipient is None:
        raise NotAReport("a complaint that names no recipient (redacted)")
    arrival = block.get("Arrival-Date") or block.get("Received-Date")
    detail = {
        "source": "arf",
        "feedback_type": feedback_type,
        "user_agent": block.get("User-Agent"),
    }
    return [
        report.event(
            "spamreport",
            recipient,
            detail,
            first_verp=_address(str(block.get("Original-Mail-From") or "")),
            occurred=_date(arrival) if arrival else None,
        )
    ]
