"""SMTP over TLS against aiosmtpd with a certificate this test makes (trustme): STARTTLS and
implicit TLS work when the CA is trusted through SMTP_CA_FILE, and a certificate nobody
trusts is refused (an outage of the provider, never a message sent in clear)."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller

from libs.common.embedded import free_port
from libs.common.events import BatchRecipient, RecipientOutcome
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox
from libs.mail.providers.base import ProviderOutage
from libs.mail.providers.sendgrid import RetryPolicy
from libs.mail.providers.smtp import SMTPProvider, SMTPTLSMode, tls_mode
from libs.mail.rate_limit import RateLimiter
from libs.mail.rendering import Content, build_outbox


class TLSRecordingHandler:
    def __init__(self) -> None:
        self.received: list[tuple[str, bool]] = []  # (recipient, over TLS)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        over_tls = server.transport.get_extra_info("ssl_object") is not None
        self.received += [(r, over_tls) for r in envelope.rcpt_tos]
        return "250 OK"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = Path(tmp_path_factory.mktemp("smtp-ca")) / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def serve(handler: TLSRecordingHandler, context: ssl.SSLContext, implicit: bool) -> Controller:
    if implicit:
        return Controller(handler, hostname="127.0.0.1", port=free_port(), ssl_context=context)
    return Controller(
        handler, hostname="127.0.0.1", port=free_port(), tls_context=context, require_starttls=True
    )


@pytest.fixture(params=["starttls", "implicit"])
def server(
    request: pytest.FixtureRequest, server_context: ssl.SSLContext
) -> Iterator[tuple[Controller, TLSRecordingHandler, SMTPTLSMode]]:
    handler = TLSRecordingHandler()
    controller = serve(handler, server_context, implicit=request.param == "implicit")
    controller.start()
    yield controller, handler, request.param
    controller.stop()


def provider(port: int, tls: SMTPTLSMode, ca_file: str = "") -> SMTPProvider:
    return SMTPProvider(
        host="127.0.0.1", port=port, username="", password="", tls=tls, ca_file=ca_file,
        max_connections=2, timeout_s=5, limiter=RateLimiter(0), retry=RetryPolicy(2, 0.01, 0.05),
    )  # fmt: skip


def outbox(n: int) -> Outbox:
    campaign = uuid.uuid4()
    content = Content(uuid.uuid4(), campaign, "S", "<p>B</p>", None, "news@example.com", None)
    people = [
        BatchRecipient(recipient_id=i, email=f"t{i}@example.com", fields={}) for i in range(n)
    ]
    return build_outbox(content, campaign, f"{campaign}:0", people, HeaderPolicy("https://a", "k"))


async def no_progress(outcomes: list[RecipientOutcome]) -> None:
    return None


async def test_mail_goes_over_tls_to_a_server_the_ca_file_trusts(
    server: tuple[Controller, TLSRecordingHandler, SMTPTLSMode], ca_file: str
) -> None:
    controller, handler, tls = server
    smtp = provider(controller.port, tls, ca_file)
    outcomes = await smtp.send(outbox(3), no_progress)
    await smtp.close()
    assert {o.status for o in outcomes} == {"sent"}
    assert sorted(handler.received) == [(f"t{i}@example.com", True) for i in range(3)]


async def test_a_certificate_nobody_trusts_is_refused(
    server: tuple[Controller, TLSRecordingHandler, SMTPTLSMode],
) -> None:
    controller, handler, tls = server
    smtp = provider(controller.port, tls)  # the system's CAs only
    with pytest.raises(ProviderOutage) as raised:
        await smtp.send(outbox(2), no_progress)
    await smtp.close()
    assert raised.value.reason.startswith("TLS:") and "certificate verify failed" in (
        raised.value.reason
    )
    assert not smtp.breaker.allows()
    assert handler.received == []


def test_tls_is_implicit_on_465_and_starttls_elsewhere_by_default() -> None:
    assert tls_mode("auto", 465) == "implicit"
    assert tls_mode("auto", 587) == "starttls"
    assert tls_mode("auto", 25) == "starttls"
    assert tls_mode("none", 25) == "none"


async def test_a_server_without_starttls_is_refused_not_sent_in_clear() -> None:
    handler = TLSRecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())  # no TLS at all
    controller.start()
    try:
        smtp = provider(controller.port, "starttls")
        with pytest.raises(ProviderOutage) as raised:
            await smtp.send(outbox(1), no_progress)
        await smtp.close()
    finally:
        controller.stop()
    assert "STARTTLS" in raised.value.reason
    assert handler.received == []
