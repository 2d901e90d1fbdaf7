"""SMTP replies at send time: a permanent 5xx about the address is a hard bounce, a 4xx is
retried and never a bounce; the envelope sender is the recipient's signed VERP address."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from libs.common.embedded import free_port
from libs.common.events import BatchRecipient, RecipientOutcome
from libs.mail.bounces import (
    HARD_BOUNCE_PREFIX,
    classify_reply,
    parse_verp,
    verp_sender_for,
)
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Message, Sender
from libs.mail.providers.sendgrid import RetryPolicy
from libs.mail.providers.smtp import SMTPProvider, mime_message
from libs.mail.rate_limit import RateLimiter
from libs.mail.rendering import Content, build_outbox

SECRET = "test-secret"


class RejectingHandler:
    """Answers RCPT by the local part: `dead*` 550 5.1.1, `policy*` 550 5.7.1, `busy*` 450
    4.2.1 on the first try only, `full*` 452 4.2.2 always, `datadead*` 554 5.1.1 at DATA."""

    def __init__(self) -> None:
        self.envelopes: dict[str, str] = {}
        self.tried: dict[str, int] = {}

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        local = address.split("@")[0]
        self.tried[local] = self.tried.get(local, 0) + 1
        if local.startswith("dead"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("policy"):
            return "550 5.7.1 Message rejected due to content restrictions"
        if local.startswith("busy") and self.tried[local] == 1:
            return "450 4.2.1 The user you are trying to contact is receiving mail too quickly"
        if local.startswith("full"):
            return "452 4.2.2 Mailbox full"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos[0].startswith("datadead"):
            return "554 5.1.1 Delivery error: This user doesn't have an account"
        self.envelopes[envelope.rcpt_tos[0]] = envelope.mail_from
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, RejectingHandler]]:
    handler = RejectingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


async def test_permanent_refusals_are_hard_bounces_and_4xx_only_deferrals(
    smtp_server: tuple[int, RejectingHandler],
) -> None:
    port, handler = smtp_server
    provider = SMTPProvider(
        host="127.0.0.1", port=port, username="", password="", tls="none",
        max_connections=2, timeout_s=5, limiter=RateLimiter(0), retry=RetryPolicy(3, 0.01, 0.05),
        envelope_sender=verp_sender_for(SECRET, "bounces.example.net"),
    )  # fmt: skip
    campaign = uuid.uuid4()
    content = Content(uuid.uuid4(), campaign, "Hi", "<p>Hi</p>", None, "news@example.com", "News")
    locals_ = ["ok", "dead", "policy", "busy", "full", "datadead"]
    people = [
        BatchRecipient(recipient_id=i, email=f"{name}@example.com", fields={})
        for i, name in enumerate(locals_)
    ]
    outbox = build_outbox(
        content, campaign, f"{campaign}:0", people, HeaderPolicy("http://api", "k")
    )

    async def ignore(_: list[RecipientOutcome]) -> None:
        return None

    outcomes = {o.email.split("@")[0]: o for o in await provider.send(outbox, ignore)}
    await provider.close()

    assert outcomes["ok"].status == "sent"
    assert outcomes["dead"].status == "failed"
    assert (outcomes["dead"].error or "").startswith(f"{HARD_BOUNCE_PREFIX}550 5.1.1")
    assert (outcomes["datadead"].error or "").startswith(f"{HARD_BOUNCE_PREFIX}554 5.1.1")
    # Refused for this message, not because the address is dead: failed, never suppressed.
    assert outcomes["policy"].status == "failed"
    assert not (outcomes["policy"].error or "").startswith(HARD_BOUNCE_PREFIX)
    # 4xx: retried; a second try got through, a mailbox full every time gave up unbounced.
    assert outcomes["busy"].status == "sent" and handler.tried["busy"] == 2
    assert outcomes["full"].status == "failed" and handler.tried["full"] == 3
    assert not (outcomes["full"].error or "").startswith(HARD_BOUNCE_PREFIX)
    # The envelope sender names the campaign and recipient, signed.
    target = parse_verp(SECRET, handler.envelopes["ok@example.com"])
    assert target is not None
    assert (target.campaign_id, target.recipient_id) == (campaign, 0)
    assert handler.envelopes["ok@example.com"].endswith("@bounces.example.net")
    assert parse_verp("another-secret", handler.envelopes["ok@example.com"]) is None


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (550, "5.1.1 The email account that you tried to reach does not exist", "hard"),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", "hard"),
        (550, "5.2.1 The email account that you tried to reach is disabled", "hard"),
        (552, "5.2.2 The recipient's inbox is out of storage space", "block"),
        (550, "5.7.1 Service unavailable, Client host blocked using Spamhaus", "block"),
        (553, "5.1.8 Sender address rejected: Domain not found", "block"),
        (550, "Requested action not taken: mailbox unavailable", "hard"),
        (554, "Transaction failed", "block"),
        (421, "4.7.0 Try again later, closing connection", "soft"),
        (250, "2.0.0 OK", None),
    ],
)
def test_reply_classification(code: int, message: str, expected: str | None) -> None:
    assert classify_reply(code, message) == expected


class RefusesSender:
    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        return "550 Sender address rejected"


async def test_a_refused_sender_is_no_bounce_of_the_recipient() -> None:
    port = free_port()
    controller = Controller(RefusesSender(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        provider = SMTPProvider(
            host="127.0.0.1", port=port, username="", password="", tls="none",
            max_connections=1, timeout_s=5, limiter=RateLimiter(0),
            retry=RetryPolicy(1, 0.01, 0.05),
        )  # fmt: skip
        message = Message(1, "someone@example.com", "s", "<p>h</p>", "h", {}, {})
        outcome = await provider.send_message(
            mime_message(Sender("news@example.com"), message), message
        )
        await provider.close()
    finally:
        controller.stop()
    assert outcome.status == "failed"
    assert not (outcome.error or "").startswith(HARD_BOUNCE_PREFIX)
