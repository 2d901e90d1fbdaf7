"""Parsing DSNs and ARF reports in the formats Gmail, Outlook, Postfix and Yahoo send."""

from __future__ import annotations

import uuid

import pytest

from libs.mail.bounces import verp_address
from services.bounces.reports import NotAReport, parse_report
from services.bounces.tests.samples import sample

SECRET = "s3cret"
CAMPAIGN = uuid.UUID("6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e")
VERP = verp_address(SECRET, "bounces.example.net", CAMPAIGN, 42)
RCPT = "Typo.User@example.com"
MID = "<mf.6f1c2d3e4a5b4c6d8e7f901a2b3c4d5e.42@example.com>"


@pytest.mark.parametrize(
    ("name", "kind", "bounce_type", "status"),
    [
        ("gmail_dsn_hard", "bounce", "bounce", "5.1.1"),
        ("outlook_ndr_hard", "bounce", "bounce", "5.1.10"),
        ("postfix_dsn_hard", "bounce", "bounce", "5.1.1"),
        ("postfix_dsn_soft", "bounce", "soft", "4.4.1"),
        ("outlook_arf_complaint", "spamreport", None, None),
        ("yahoo_arf_complaint", "spamreport", None, None),
    ],
)
def test_reports_name_the_delivery_by_verp(
    name: str, kind: str, bounce_type: str | None, status: str | None
) -> None:
    [event] = parse_report(sample(name, verp=VERP, rcpt=RCPT, message_id=MID), SECRET)
    assert (event.event, event.email, event.provider) == (kind, RCPT, "smtp")
    assert (event.campaign_id, event.recipient_id, event.provider_message_id) == (
        CAMPAIGN,
        42,
        MID,
    )
    assert event.detail.get("type") == bounce_type
    assert event.detail.get("status") == status
    assert event.event_id.startswith("imap:")


def test_without_a_valid_verp_address_the_message_id_is_left_to_match() -> None:
    forged = verp_address("not-our-secret", "bounces.example.net", CAMPAIGN, 7)
    for verp in ("news@example.com", forged):
        [event] = parse_report(
            sample("postfix_dsn_hard", verp=verp, rcpt=RCPT, message_id=MID), SECRET
        )
        assert (event.campaign_id, event.recipient_id) == (None, None)
        assert event.provider_message_id == MID


def test_the_same_report_twice_has_the_same_event_id() -> None:
    raw = sample("gmail_dsn_hard", verp=VERP, rcpt=RCPT, message_id=MID)
    assert parse_report(raw, SECRET)[0].event_id == parse_report(raw, SECRET)[0].event_id
    other = sample("postfix_dsn_soft", verp=VERP, rcpt=RCPT, message_id=MID, report_id="r2")
    again = sample("postfix_dsn_soft", verp=VERP, rcpt=RCPT, message_id=MID, report_id="r3")
    assert parse_report(other, SECRET)[0].event_id != parse_report(again, SECRET)[0].event_id


def test_anything_else_is_not_a_report() -> None:
    with pytest.raises(NotAReport, match="multipart/report"):
        parse_report(sample("out_of_office", verp=VERP, rcpt=RCPT, message_id=MID), SECRET)
    with pytest.raises(NotAReport):
        parse_report(b"\xff\xfe garbage", SECRET)
