"""Deliverability end to end over SMTP, every service its own process (issue 14):
2,000 recipients (1,000 in CI, see RECIPIENTS), a real SMTP server (aiosmtpd), a real IMAP
mailbox (dovecot) and a real DNS server (dnslib) publishing the DKIM key.

- 2 % are refused at RCPT with 550 5.1.1: they fail as hard bounces and are suppressed;
- 1 % bounce later: DSNs in Gmail's, Outlook's and Postfix's formats, addressed to the
  VERP envelope senders the server saw, land in the dovecot mailbox; `mailfleet run
  bounces` reads them and the tracker suppresses those addresses, folding a DSN delivered
  twice once; a soft DSN alone suppresses nobody;
- 3 complaints arrive as ARF reports (Outlook and Yahoo formats);
- 30 % open and 10 % click, through the signed pixel and redirects of the edge;
- every received message carries a DKIM signature that dkimpy verifies against DNS;
- the campaign's stats match exactly, and the next campaign skips every one of them.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioimaplib
import asyncpg
import dkim
import httpx
import pytest

from libs.common.settings import DkimKeyConfig, Settings
from libs.mail.dkim_signing import load_key, new_key_file
from libs.mail.tests.dns_server import Zone, dns_server
from libs.mail.tests.test_dkim_signing import dns_lookup
from services.bounces.tests.dovecot import PASSWORD, USER, Dovecot, private_dovecot
from services.bounces.tests.samples import sample
from tests.e2e.harness import RunningStack, smtp_server, start_stack

# The 2,000 with MAILFLEET_E2E_DELIVERABILITY_RECIPIENTS=2000 (README); CI sends
# 1,000 to keep `make test` under its 20 minutes on a slow machine.
RECIPIENTS = int(os.environ.get("MAILFLEET_E2E_DELIVERABILITY_RECIPIENTS", "1000"))
DEAD = RECIPIENTS // 50  # 2 %, refused at RCPT
BOUNCE_LATER = RECIPIENTS // 100  # 1 %, a DSN into the bounce mailbox
COMPLAINTS = 3
OPENS = RECIPIENTS * 3 // 10  # 30 %
CLICKS = RECIPIENTS // 10  # 10 %
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131"
DSN_FORMATS = ("gmail_dsn_hard", "outlook_ndr_hard", "postfix_dsn_hard")
ARF_FORMATS = ("outlook_arf_complaint", "yahoo_arf_complaint")
SENDING_DOMAIN = "example.com"
pytestmark = pytest.mark.timeout(400)


class Mailserver:
    """Refuses `dead-*` at RCPT with 550 5.1.1; records each delivery's envelope sender."""

    def __init__(self) -> None:
        self.envelope_from: dict[str, str] = {}
        self.delivered: dict[str, int] = {}
        self.raw: dict[str, bytes] = {}

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("dead-"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            self.envelope_from[rcpt] = envelope.mail_from
            self.delivered[rcpt] = self.delivered.get(rcpt, 0) + 1
            self.raw[rcpt] = envelope.original_content or envelope.content
        return "250 Message accepted"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot("mailfleet-dovecot-e2e-") as server:
        yield server


@pytest.fixture(scope="module")
def mailserver() -> Iterator[tuple[int, Mailserver]]:
    handler = Mailserver()
    with smtp_server(handler) as port:
        yield port, handler


@pytest.fixture(scope="module")
def dns_zone() -> Iterator[tuple[Zone, int]]:
    with dns_server() as served:
        yield served


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory, dns_zone: tuple[Zone, int]) -> Path:
    """An RSA key for the sending domain, its public half published in the DNS zone."""
    path = new_key_file(tmp_path_factory.mktemp("dkim") / "rsa.pem", "rsa")
    key = load_key(DkimKeyConfig(domain=SENDING_DOMAIN, selector="mf1", key_file=str(path)))
    dns_zone[0].txt(f"mf1._domainkey.{SENDING_DOMAIN}", key.dns_record())
    return path


@pytest.fixture(scope="module")
async def stack(
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    dovecot: Dovecot,
    mailserver: tuple[int, Mailserver],
    dkim_key: Path,
) -> AsyncIterator[RunningStack]:
    keys = [{"domain": SENDING_DOMAIN, "selector": "mf1", "key_file": str(dkim_key)}]
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("bounces-e2e-logs"),
        extra_children=["bounces"],
        env={
            "MAILFLEET_DEFAULT_PROVIDER": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mailserver[0]),
            "SMTP_TLS": "none",
            "MAILFLEET_BOUNCE_DOMAIN": "bounces.example.net",
            "MAILFLEET_BOUNCE_IMAP_HOST": "127.0.0.1",
            "MAILFLEET_BOUNCE_IMAP_PORT": str(dovecot.port),
            "MAILFLEET_BOUNCE_IMAP_TLS": "none",
            "MAILFLEET_BOUNCE_IMAP_USER": USER,
            "MAILFLEET_BOUNCE_IMAP_PASSWORD": PASSWORD,
            "MAILFLEET_BOUNCE_POLL_SECONDS": "0.3",
            "MAILFLEET_DKIM_KEYS": json.dumps(keys),
            # Readers here click at once: no click is taken for a scanner's.
            "MAILFLEET_TRACKING_SCANNER_SECONDS": "0",
        },
    )
    yield running
    await running.stop()


async def wait_for(what: str, condition: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return value


async def append(server: Dovecot, mails: list[bytes]) -> None:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=server.port, timeout=20)
    await client.wait_hello_from_server()
    assert (await client.login(USER, PASSWORD)).result == "OK"
    for raw in mails:
        assert (await client.append(raw, mailbox="INBOX")).result == "OK"
    await client.logout()


async def test_a_campaign_over_smtp_with_bounces_complaints_opens_and_dkim(
    stack: RunningStack,
    dovecot: Dovecot,
    mailserver: tuple[int, Mailserver],
    dns_zone: tuple[Zone, int],
    pool: asyncpg.Pool,
) -> None:
    _, server = mailserver
    tag = uuid.uuid4().hex[:8]
    dead = [f"dead-{i}-{tag}@example.com" for i in range(DEAD)]
    alive = [f"alive-{i}-{tag}@example.com" for i in range(RECIPIENTS - DEAD)]
    bounced_later = alive[:BOUNCE_LATER]
    complained = alive[BOUNCE_LATER : BOUNCE_LATER + COMPLAINTS]
    soft = alive[BOUNCE_LATER + COMPLAINTS]
    api = stack.client()
    try:
        list_id = await api.create_list(f"deliverability-{tag}")
        rows = "email,first_name\n" + "".join(f"{e},X\n" for e in [*dead, *alive])
        job = await api.wait_import(await api.import_csv(list_id, rows.encode()))
        assert job["status"] == "completed", job

        async def campaign() -> dict[str, Any]:
            campaign_id = await api.create_campaign(
                name=f"deliverability {tag}",
                subject="Hi",
                html='<p>Hi {{ first_name }}, <a href="https://shop.example.org/">shop</a></p>',
                from_email=f"news@{SENDING_DOMAIN}",
                list_id=list_id,
            )
            await api.schedule(campaign_id)
            return await api.wait_campaign(campaign_id, timeout=240)

        first = await campaign()
        assert first["status"] == "completed", first
        stats = first["stats"]
        assert (stats["sent"], stats["failed"], stats["total"]) == (
            RECIPIENTS - DEAD,
            DEAD,
            RECIPIENTS,
        )

        async def reasons() -> dict[str, str]:
            rows = await pool.fetch(
                "SELECT email, reason FROM suppressions WHERE email = ANY($1::text[])",
                [*dead, *alive],
            )
            return {r["email"]: r["reason"] for r in rows}

        await wait_for("send-time bounces suppressed", lambda: _has(reasons, len(dead)))
        assert await reasons() == dict.fromkeys(dead, "bounce")

        # Every message the server received verifies against the key published in DNS.
        lookup = dns_lookup(dns_zone[1])
        assert sorted(server.raw) == sorted(alive)
        unsigned = [r for r, raw in server.raw.items() if not dkim.verify(raw, dnsfunc=lookup)]
        assert unsigned == []

        # Readers open and click through the edge's signed links in the mail they got.
        await read_and_click(stack.edge_url, [server.raw[r] for r in alive[-OPENS:]], CLICKS)

        # Later: hard DSNs in three providers' formats, a soft DSN (one is not enough) and
        # ARF complaints, each sent to the VERP envelope sender that the server saw.
        def report(name: str, rcpt: str) -> bytes:
            return sample(
                name,
                verp=server.envelope_from[rcpt],
                rcpt=rcpt,
                message_id=f"<unknown-{tag}@example.com>",  # VERP alone must match
                report_id=f"{name}-{rcpt}",
            )

        mails = [
            *(report(DSN_FORMATS[n % 3], r) for n, r in enumerate(bounced_later)),
            *(report(ARF_FORMATS[n % 2], r) for n, r in enumerate(complained)),
            report("postfix_dsn_soft", soft),
        ]
        await append(dovecot, [*mails, mails[0]])  # one DSN delivered twice
        expected = {
            **dict.fromkeys(dead, "bounce"),
            **dict.fromkeys(bounced_later, "bounce"),
            **dict.fromkeys(complained, "spamreport"),
        }
        await wait_for("reports suppressed", lambda: _has(reasons, len(expected)))

        # `bounced` counts the bounces reported after the server took the message (hard
        # and soft DSNs); a refusal at RCPT was never accepted and stays in `failed`.
        later_bounces = BOUNCE_LATER + 1

        async def reported() -> dict[str, Any] | None:
            current: dict[str, Any] = (await api.campaign(first["id"]))["stats"]
            done = current["spam_reports"] >= COMPLAINTS and current["bounced"] >= later_bounces
            done = done and current["opens"] >= OPENS and current["clicks"] >= CLICKS
            return current if done else None

        after = await wait_for("the first campaign's stats", reported)
        second = await campaign()
    finally:
        await api.close()
    assert await reasons() == expected
    assert (after["bounced"], after["spam_reports"]) == (later_bounces, COMPLAINTS)
    assert (after["opened"], after["opens"], after["machine_opens"]) == (OPENS, OPENS, 0)
    assert (after["clicked"], after["clicks"], after["machine_clicks"]) == (CLICKS, CLICKS, 0)
    assert (after["unique_open_rate"], after["unique_click_rate"]) == (
        round(OPENS / (RECIPIENTS - DEAD), 4),
        round(CLICKS / (RECIPIENTS - DEAD), 4),
    )
    assert (after["sent"], after["failed"]) == (RECIPIENTS - DEAD, DEAD)
    assert second["status"] == "completed", second
    stats = second["stats"]
    skipped = len(expected)
    assert (stats["sent"], stats["suppressed"], stats["failed"]) == (
        RECIPIENTS - skipped,
        skipped,
        0,
    )
    # Nobody mailed twice by one campaign; the suppressed never got the second one.
    assert all(server.delivered[r] == 1 for r in [*bounced_later, *complained])
    assert server.delivered[soft] == 2
    bounced = await pool.fetchval(
        "SELECT count(*) FROM delivery_events WHERE email = $1 AND event = 'bounce'",
        bounced_later[0],
    )
    assert bounced == 1  # the DSN read twice, folded once


def _html_of(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


async def read_and_click(edge_url: str, mails: list[bytes], clicks: int) -> None:
    base = re.escape(edge_url)
    pixel, link = re.compile(rf'src="({base}/o/[^"]+)"'), re.compile(rf'href="({base}/c/[^"]+)"')
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def read(n: int, raw: bytes) -> None:
            html = _html_of(raw)
            (src,) = pixel.findall(html)
            assert (await http.get(src, headers={"user-agent": BROWSER})).status_code == 200
            if n < clicks:
                (href,) = link.findall(html)
                answer = await http.get(href, headers={"user-agent": BROWSER})
                assert answer.status_code == 302, answer.text

        await asyncio.gather(*(read(n, raw) for n, raw in enumerate(mails)))


async def _has(reasons: Any, n: int) -> bool:
    return len(await reasons()) >= n
