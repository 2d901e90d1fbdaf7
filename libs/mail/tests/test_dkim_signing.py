"""DKIM: messages sent by the SMTP provider to a real aiosmtpd server carry signatures that
dkimpy verifies against the public key published by a real DNS server."""

from __future__ import annotations

import email
import email.policy
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import dkim
import dkim.crypto
import dns.exception
import dns.resolver
import pytest
from aiosmtpd.controller import Controller

from libs.common.embedded import free_port
from libs.common.events import BatchRecipient, RecipientOutcome
from libs.common.settings import DEFAULT_UNSUBSCRIBE_FOOTER, DkimKeyConfig, Settings
from libs.mail.config import DispatcherSettings
from libs.mail.dkim_signing import (
    DkimKey,
    DkimKeyError,
    DkimSigner,
    _rsa_sign_with_openssl,
    load_key,
    new_key_file,
)
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.registry import build_providers
from libs.mail.providers.sendgrid import RetryPolicy
from libs.mail.providers.smtp import SMTPProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.rendering import Content, build_outbox
from libs.mail.tests.dns_server import Zone, dns_server


class Received:
    def __init__(self) -> None:
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.original_content or envelope.content)
        return "250 OK"


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, Received]]:
    handler, port = Received(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


@pytest.fixture
def dns_zone() -> Iterator[tuple[Zone, int]]:
    with dns_server() as served:
        yield served


def write_key(folder: Path, kind: str) -> Path:
    return new_key_file(folder / f"{kind}.pem", "rsa" if kind == "rsa" else "ed25519")


def dns_lookup(port: int) -> Any:
    """dkimpy's `dnsfunc`, asking the local DNS server over the network."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 5.0

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


async def send_one(
    port: int, signer: DkimSigner, html: str, list_id: uuid.UUID | None = None
) -> None:
    provider = SMTPProvider(
        host="127.0.0.1", port=port, username="", password="", tls="none", max_connections=1,
        timeout_s=5, limiter=RateLimiter(0), retry=RetryPolicy(2, 0.01, 0.05), signer=signer,
    )  # fmt: skip
    campaign = uuid.uuid4()
    content = Content(
        uuid.uuid4(), campaign, "Grüße {{ name }}", html, None, "news@example.com", "Ñews", list_id
    )
    people = [BatchRecipient(recipient_id=7, email="zoe@example.org", fields={"name": "Zoë"})]
    policy = HeaderPolicy(
        "https://mail.example.com", "k", unsubscribe_footer=DEFAULT_UNSUBSCRIBE_FOOTER
    )
    outbox = build_outbox(content, campaign, f"{campaign}:0", people, policy)

    async def ignore(outcomes: list[RecipientOutcome]) -> None:
        return None

    outcomes = await provider.send(outbox, ignore)
    await provider.close()
    assert [o.status for o in outcomes] == ["sent"]


def publish(zone: Zone, key: DkimKey) -> None:
    zone.txt(f"{key.selector}._domainkey.{key.domain}", key.dns_record())


@pytest.mark.parametrize("kinds", [["rsa"], ["ed25519"], ["rsa", "ed25519"]])
async def test_smtp_messages_carry_a_dkim_signature_that_verifies_against_dns(
    tmp_path: Path, smtp_sink: tuple[int, Received], dns_zone: tuple[Zone, int], kinds: list[str]
) -> None:
    (port, received), (zone, dns_port) = smtp_sink, dns_zone
    keys = [
        load_key(
            DkimKeyConfig(
                domain="example.com", selector=f"s-{k}", key_file=str(write_key(tmp_path, k))
            )
        )
        for k in kinds
    ]
    for key in keys:
        publish(zone, key)
    await send_one(port, DkimSigner(keys), "<html><body><p>Hi {{ name }}</p></body></html>")

    [raw] = received.raw
    assert raw.count(b"DKIM-Signature:") == len(kinds)
    for kind in kinds:
        algorithm = b"a=rsa-sha256" if kind == "rsa" else b"a=ed25519-sha256"
        assert algorithm in raw
    # dkimpy verifies the first signature; each is checked alone by dropping the others.
    for n in range(len(kinds)):
        assert dkim.verify(only_signature(raw, n), dnsfunc=dns_lookup(dns_port)), kinds[n]


async def test_a_tampered_body_or_a_changed_dns_key_fails_verification(
    tmp_path: Path, smtp_sink: tuple[int, Received], dns_zone: tuple[Zone, int]
) -> None:
    (port, received), (zone, dns_port) = smtp_sink, dns_zone
    key = load_key(
        DkimKeyConfig(
            domain="example.com", selector="s1", key_file=str(write_key(tmp_path, "ed25519"))
        )
    )
    publish(zone, key)
    await send_one(port, DkimSigner([key]), "<p>Hi {{ name }}</p>")
    [raw] = received.raw
    assert dkim.verify(raw, dnsfunc=dns_lookup(dns_port))
    assert not dkim.verify(raw.replace(b"Hi Zo", b"Hi Jo"), dnsfunc=dns_lookup(dns_port))
    other = load_key(
        DkimKeyConfig(
            domain="example.com", selector="s1", key_file=str(write_key(tmp_path / "..", "ed25519"))
        )
    )
    publish(zone, other)
    assert not dkim.verify(raw, dnsfunc=dns_lookup(dns_port))


async def test_list_headers_and_a_visible_unsubscribe_link_are_sent(
    smtp_sink: tuple[int, Received],
) -> None:
    port, received = smtp_sink
    audience = uuid.uuid4()
    await send_one(port, DkimSigner([]), "<html><body><p>Hi {{ name }}</p></body></html>", audience)
    [raw] = received.raw
    assert b"DKIM-Signature" not in raw  # no key for the domain: unsigned
    # Plain values, not RFC 2047 encoded words (the email package's doing for long headers
    # at 78 columns); a fold (CRLF SP) is allowed.
    plain = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert " ".join(plain["List-Id"].split()) == f"<{audience.hex}.lists.example.com>"
    assert plain["Feedback-ID"].split()[0].endswith(f":{audience.hex}:mailfleet:example.com")
    assert plain["List-Unsubscribe"].split()[0].startswith("<https://mail.example.com/u/")
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert '<a href="https://mail.example.com/u/' in html and "Unsubscribe</a>" in html
    assert html.index("Unsubscribe</a>") < html.index("</body>")  # visible: inside the body


def only_signature(raw: bytes, keep: int) -> bytes:
    """`raw` with only its `keep`-th DKIM-Signature header (headers are folded with CRLF SP)."""
    head, body = raw.split(b"\r\n\r\n", 1)
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    signatures = [f for f in fields if f.lower().startswith(b"dkim-signature:")]
    kept = [f for f in fields if f not in signatures or f is signatures[keep]]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


async def test_the_dispatchers_smtp_provider_signs_with_the_configured_keys(
    tmp_path: Path, smtp_sink: tuple[int, Received], dns_zone: tuple[Zone, int]
) -> None:
    (port, received), (zone, dns_port) = smtp_sink, dns_zone
    entry = DkimKeyConfig(
        domain="Example.com", selector="mf", key_file=str(write_key(tmp_path, "rsa"))
    )
    publish(zone, load_key(entry))
    settings = Settings(
        SMTP_HOST="127.0.0.1", SMTP_PORT=port, SMTP_TLS="none", MAILFLEET_DKIM_KEYS=[entry]
    )
    async with aiohttp.ClientSession() as session:
        provider = build_providers(settings, DispatcherSettings(), session)["smtp"]
        campaign = uuid.uuid4()
        content = Content(uuid.uuid4(), campaign, "S", "<p>x</p>", None, "news@example.com", None)
        people = [BatchRecipient(recipient_id=1, email="a@example.org", fields={})]
        outbox = build_outbox(content, campaign, "b", people, HeaderPolicy("https://m", "k"))

        async def ignore(outcomes: list[RecipientOutcome]) -> None:
            return None

        assert [o.status for o in await provider.send(outbox, ignore)] == ["sent"]
        await provider.close()  # type: ignore[attr-defined]
    [raw] = received.raw
    assert b"d=example.com" in raw and dkim.verify(raw, dnsfunc=dns_lookup(dns_port))


def test_an_unreadable_key_file_stops_the_dispatcher_at_start(tmp_path: Path) -> None:
    missing = DkimKeyConfig(
        domain="example.com", selector="mf", key_file=str(tmp_path / "nope.pem")
    )
    (tmp_path / "junk.pem").write_text("not a key")
    junk = DkimKeyConfig(domain="example.com", selector="mf", key_file=str(tmp_path / "junk.pem"))
    for entry in (missing, junk):
        with pytest.raises(DkimKeyError, match="DKIM key for example.com"):
            load_key(entry)


def test_the_openssl_rsa_signature_is_byte_for_byte_dkimpys(tmp_path: Path) -> None:
    key = load_key(
        DkimKeyConfig(domain="example.com", selector="s", key_file=str(write_key(tmp_path, "rsa")))
    )
    parsed = dkim.crypto.parse_pem_private_key(key.private)
    digest = hashlib.sha256(b"header hash input")
    assert _rsa_sign_with_openssl(digest, parsed) == dkim.crypto.RSASSA_PKCS1_v1_5_sign(
        digest, parsed
    )
    assert dkim.RSASSA_PKCS1_v1_5_sign is _rsa_sign_with_openssl  # what dkim.sign calls
