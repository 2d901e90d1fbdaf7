"""SMTP against a real aiosmtpd server that parses every message."""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from libs.common.embedded import free_port
from libs.common.events import BatchRecipient, RecipientOutcome
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.base import ProviderOutage
from libs.mail.providers.sendgrid import RetryPolicy
from libs.mail.providers.smtp import SMTPProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.rendering import Content, build_outbox


class RecordingHandler:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(parsed)  # type: ignore[arg-type]
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, RecordingHandler]]:
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


async def test_smtp_sends_correct_mime_and_fails_only_refused_recipients(
    smtp_server: tuple[int, RecordingHandler],
) -> None:
    port, handler = smtp_server
    provider = SMTPProvider(
        host="127.0.0.1", port=port, username="", password="", tls="none",
        max_connections=3, timeout_s=5, limiter=RateLimiter(0), retry=RetryPolicy(2, 0.01, 0.05),
    )  # fmt: skip
    campaign = uuid.uuid4()
    content = Content(
        uuid.uuid4(),
        campaign,
        "Grüße {{ name }}",
        "<p>Hi {{ name }}</p>",
        None,
        "news@example.com",
        "Ñews",
    )
    people = [
        BatchRecipient(recipient_id=i, email=f"user{i}@example.com", fields={"name": f"Zoë{i}"})
        for i in range(20)
    ]
    people.append(BatchRecipient(recipient_id=99, email="reject@example.com", fields={}))
    outbox = build_outbox(
        content, campaign, f"{campaign}:0", people, HeaderPolicy("http://api", "k")
    )
    progress: list[RecipientOutcome] = []

    async def record(outcomes: list[RecipientOutcome]) -> None:
        progress.extend(outcomes)

    outcomes = await provider.send(outbox, record)
    await provider.close()
    by_id = {o.recipient_id: o for o in outcomes}
    assert by_id[99].status == "failed" and "550" in (by_id[99].error or "")
    assert [by_id[i].status for i in range(20)] == ["sent"] * 20
    assert len(progress) == 21
    assert len(handler.messages) == 20
    mail = next(m for m in handler.messages if m["To"] == "user3@example.com")
    assert mail["Subject"] == "Grüße Zoë3"
    assert mail.get_content_type() == "multipart/alternative"
    assert mail.get_body(("plain",)).get_content().strip() == "Hi Zoë3"  # type: ignore[union-attr]
    assert mail.get_body(("html",)).get_content().strip() == "<p>Hi Zoë3</p>"  # type: ignore[union-attr]
    assert mail["X-Mailfleet-Recipient-Id"] == "3"
    assert mail["X-Mailfleet-Campaign-Id"] == str(campaign)
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["Message-ID"] == by_id[3].message_id


class HangUpAfterData:
    """Takes the message, then drops the connection instead of answering `DATA`."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.extend(envelope.rcpt_tos)
        server.transport.close()
        return "250 never heard"


def smtp_provider(port: int, **kw: Any) -> SMTPProvider:
    return SMTPProvider(
        host="127.0.0.1", port=port, username=kw.pop("username", ""),
        password=kw.pop("password", ""), tls=kw.pop("tls", "none"), max_connections=2,
        timeout_s=5, limiter=RateLimiter(0), retry=RetryPolicy(3, 0.01, 0.05), **kw,
    )  # fmt: skip


def one_campaign(n: int) -> Any:
    campaign = uuid.uuid4()
    content = Content(uuid.uuid4(), campaign, "S", "<p>B</p>", None, "news@example.com", None)
    people = [
        BatchRecipient(recipient_id=i, email=f"u{i}@example.com", fields={}) for i in range(n)
    ]
    return build_outbox(content, campaign, f"{campaign}:0", people, HeaderPolicy("http://a", "k"))


async def no_progress(outcomes: list[RecipientOutcome]) -> None:
    return None


async def test_a_disconnect_after_data_is_unknown_and_never_resent() -> None:
    handler = HangUpAfterData()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        provider = smtp_provider(controller.port)
        outcomes = await provider.send(one_campaign(3), no_progress)
        await provider.close()
    finally:
        controller.stop()
    assert {o.status for o in outcomes} == {"unknown"}
    assert "after DATA" in (outcomes[0].error or "")
    assert sorted(handler.received) == ["u0@example.com", "u1@example.com", "u2@example.com"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_a_refused_login_is_an_outage() -> None:
    from aiosmtpd.smtp import AuthResult

    def refuse(*args: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)

    handler = RecordingHandler()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(),
        authenticator=refuse, auth_require_tls=False, auth_required=True,
    )  # fmt: skip
    controller.start()
    try:
        provider = smtp_provider(controller.port, username="u", password="rotated")
        with pytest.raises(ProviderOutage) as raised:
            await provider.send(one_campaign(5), no_progress)
        await provider.close()
    finally:
        controller.stop()
    assert raised.value.reason.startswith("535")
    assert not provider.breaker.allows()
    assert handler.messages == []
