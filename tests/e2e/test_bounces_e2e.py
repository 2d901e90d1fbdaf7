"""Bounces and complaints over SMTP, every service its own process (issue 14 item 2):

- the SMTP server (aiosmtpd) refuses some addresses at RCPT with 550 5.1.1: they fail as
  hard bounces and are suppressed;
- later, DSNs and an ARF complaint addressed to the VERP envelope senders the server saw
  land in a real dovecot mailbox: `mailfleet run bounces` reads them, the tracker
  suppresses those addresses and moves nothing twice;
- the next campaign to the same list skips every one of them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioimaplib
import asyncpg
import pytest
from aiosmtpd.controller import Controller

from libs.common.embedded import free_port
from libs.common.settings import Settings
from services.bounces.tests.dovecot import PASSWORD, USER, Dovecot, private_dovecot
from services.bounces.tests.samples import sample
from tests.e2e.harness import RunningStack, start_stack

RECIPIENTS = 40
DEAD = 4  # refused at RCPT
pytestmark = pytest.mark.timeout(400)


class Mailserver:
    """Refuses `dead-*` at RCPT with 550 5.1.1; records each delivery's envelope sender."""

    def __init__(self) -> None:
        self.envelope_from: dict[str, str] = {}
        self.delivered: dict[str, int] = {}

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
        return "250 Message accepted"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot("mailfleet-dovecot-e2e-") as server:
        yield server


@pytest.fixture(scope="module")
def mailserver() -> Iterator[tuple[int, Mailserver]]:
    handler = Mailserver()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


@pytest.fixture(scope="module")
async def stack(
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    dovecot: Dovecot,
    mailserver: tuple[int, Mailserver],
) -> AsyncIterator[RunningStack]:
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


async def test_smtp_bounces_and_complaints_are_suppressed_and_skipped_next_time(
    stack: RunningStack,
    dovecot: Dovecot,
    mailserver: tuple[int, Mailserver],
    pool: asyncpg.Pool,
) -> None:
    _, server = mailserver
    tag = uuid.uuid4().hex[:8]
    dead = [f"dead-{i}-{tag}@example.com" for i in range(DEAD)]
    alive = [f"alive-{i}-{tag}@example.com" for i in range(RECIPIENTS - DEAD)]
    later_bounced, later_soft, complained = alive[0], alive[1], alive[2]
    api = stack.client()
    try:
        list_id = await api.create_list(f"bounces-{tag}")
        rows = "email,first_name\n" + "".join(f"{e},X\n" for e in [*dead, *alive])
        job = await api.wait_import(await api.import_csv(list_id, rows.encode()))
        assert job["status"] == "completed", job

        async def campaign() -> dict[str, Any]:
            campaign_id = await api.create_campaign(
                name=f"bounces {tag}",
                subject="Hi",
                html="<p>Hi {{ first_name }}</p>",
                from_email="news@example.com",
                list_id=list_id,
            )
            await api.schedule(campaign_id)
            return await api.wait_campaign(campaign_id, timeout=180)

        first = await campaign()
        assert first["status"] == "completed", first
        stats = first["stats"]
        assert (stats["sent"], stats["failed"], stats["total"]) == (RECIPIENTS - DEAD, DEAD, 40)

        async def reasons() -> dict[str, str]:
            rows = await pool.fetch(
                "SELECT email, reason FROM suppressions WHERE email = ANY($1::text[])",
                [*dead, *alive],
            )
            return {r["email"]: r["reason"] for r in rows}

        await wait_for("send-time bounces suppressed", lambda: _has(reasons, len(dead)))
        assert await reasons() == dict.fromkeys(dead, "bounce")

        # Later: a DSN (hard), a soft DSN (one is not enough) and a complaint, each sent to
        # the VERP envelope sender that the receiving server saw.
        def report(name: str, rcpt: str) -> bytes:
            return sample(
                name,
                verp=server.envelope_from[rcpt],
                rcpt=rcpt,
                message_id=f"<unknown-{tag}@example.com>",  # VERP alone must match
                report_id=f"{name}-{tag}",
            )

        mails = [
            report("gmail_dsn_hard", later_bounced),
            report("postfix_dsn_soft", later_soft),
            report("outlook_arf_complaint", complained),
        ]
        await append(dovecot, [*mails, mails[0]])  # the DSN delivered twice
        await wait_for("reports suppressed", lambda: _has(reasons, len(dead) + 2))

        second = await campaign()
    finally:
        await api.close()
    assert await reasons() == {
        **dict.fromkeys(dead, "bounce"),
        later_bounced: "bounce",
        complained: "spamreport",
    }
    assert second["status"] == "completed", second
    stats = second["stats"]
    skipped = DEAD + 2
    assert (stats["sent"], stats["suppressed"], stats["failed"]) == (40 - skipped, skipped, 0)
    # Nobody mailed twice by one campaign; the suppressed never got the second one.
    assert server.delivered[later_bounced] == 1 and server.delivered[complained] == 1
    assert server.delivered[later_soft] == 2
    bounced = await pool.fetchval(
        "SELECT count(*) FROM delivery_events WHERE email = $1 AND event = 'bounce'",
        later_bounced,
    )
    assert bounced == 1  # the DSN read twice, folded once


async def _has(reasons: Any, n: int) -> bool:
    return len(await reasons()) >= n
