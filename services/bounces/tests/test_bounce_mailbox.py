"""DSNs and ARF reports appended to a real dovecot mailbox are read by the poller, folded by
the real tracker exactly once (suppressions included), and moved out of the inbox."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aioimaplib
import asyncpg

from conftest import make_settings
from libs.common.events import DeliveryEvent, Topic
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from libs.mail.bounces import verp_address
from services.bounces.app import main as bounces_main
from services.bounces.metrics import POLL_FAILURES
from services.bounces.tests.dovecot import PASSWORD, USER, Dovecot
from services.bounces.tests.samples import sample
from services.tracker.tests.support import (
    make_results,
    new_campaign,
    publish_results,
    running_tracker,
    stats_of,
    wait_for,
)

SOFT_LIMIT = 2


@contextlib.asynccontextmanager
async def imap(server: Dovecot) -> AsyncIterator[aioimaplib.IMAP4]:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=server.port, timeout=20)
    await client.wait_hello_from_server()
    assert (await client.login(USER, PASSWORD)).result == "OK"
    try:
        yield client
    finally:
        await client.logout()


async def count(client: aioimaplib.IMAP4, folder: str) -> int:
    response = await client.status(folder, "(MESSAGES)")
    if response.result != "OK":
        return 0  # not created yet
    return int(response.lines[0].decode().rsplit("MESSAGES", 1)[1].strip(" )"))


@contextlib.asynccontextmanager
async def running_poller(
    settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> AsyncIterator[asyncio.Task[None]]:
    ctx = ServiceContext("bounces", settings, pool, producer, asyncio.Event())
    task = asyncio.create_task(bounces_main(ctx))
    try:
        yield task
    finally:
        ctx.stop.set()
        await asyncio.wait_for(task, 30)


async def test_reports_in_the_mailbox_are_folded_once_and_moved_away(
    dovecot: Dovecot,
    database_url: str,
    kafka_bootstrap: str,
    settings: Settings,  # creates the topics
    pool: asyncpg.Pool,
    producer: EventProducer,
) -> None:
    config = make_settings(
        database_url,
        kafka_bootstrap,
        bounce_imap_host="127.0.0.1",
        bounce_imap_port=dovecot.port,
        bounce_imap_tls="none",
        bounce_imap_user=USER,
        bounce_imap_password=PASSWORD,
        bounce_poll_seconds=0.2,
        soft_bounce_limit=SOFT_LIMIT,
    )
    cid = await new_campaign(pool)
    tag = cid.hex[:8]  # addresses unique to this test: other tests suppress r<n>@example.com

    def address(rid: int) -> str:
        return f"r{rid}-{tag}@example.com"

    [result] = make_results(cid, 1, 6)  # message ids msg-<tag>-<n>
    outcomes = [o.model_copy(update={"email": address(o.recipient_id)}) for o in result.outcomes]
    results = [result.model_copy(update={"outcomes": outcomes})]

    def mail(name: str, rid: int, *, verp: bool = True, report_id: str = "r") -> bytes:
        envelope = (
            verp_address(config.secret_key, "bounces.example.net", cid, rid)
            if verp
            else "news@example.com"
        )
        return sample(
            name,
            verp=envelope,
            rcpt=address(rid),
            message_id=f"msg-{cid.hex[:8]}-{rid}",
            report_id=f"{report_id}-{cid}",
        )

    mails = [
        mail("gmail_dsn_hard", 1),
        mail("outlook_ndr_hard", 2, verp=False),  # matched by Message-ID alone
        mail("outlook_arf_complaint", 3),
        mail("yahoo_arf_complaint", 4),
        mail("postfix_dsn_soft", 5, report_id="a"),
        mail("postfix_dsn_soft", 5, report_id="b"),  # the second in a row: suppressed
        mail("postfix_dsn_soft", 6, report_id="a"),  # only one: not suppressed
        mail("out_of_office", 1),
    ]
    emails = [address(rid) for rid in range(1, 7)]

    async def suppressions() -> dict[str, str]:
        rows = await pool.fetch(
            "SELECT email, reason FROM suppressions WHERE email = ANY($1::text[])", emails
        )
        return {r["email"]: r["reason"] for r in rows}

    async with imap(dovecot) as client, running_tracker(config, pool, producer):
        await publish_results(producer, results)

        async def logged() -> bool:
            stats = await stats_of(pool, cid)
            return stats is not None and stats["sent"] == 6

        await wait_for(logged, what="the delivery log")
        for raw in mails:
            assert (await client.append(raw, mailbox="INBOX")).result == "OK"

        async with running_poller(config, pool, producer):

            async def all_moved() -> bool:
                return (
                    await count(client, "INBOX") == 0
                    and await count(client, "Processed") == 7
                    and await count(client, "Unparsed") == 1
                )

            await wait_for(all_moved, timeout=60, what="the mailbox emptied")

            async def all_suppressed() -> bool:
                return len(await suppressions()) == 5

            await wait_for(all_suppressed, timeout=60, what="five suppressions")
            assert await suppressions() == {
                address(1): "bounce",
                address(2): "bounce",
                address(3): "spamreport",
                address(4): "spamreport",
                address(5): "bounce",
            }

            # Suppressions and the campaign's counters are written by separate folds:
            # wait for the counters too, then hold them to exactly these values.
            async def counted() -> bool:
                stats = await stats_of(pool, cid)
                return stats is not None and stats["bounced"] + stats["spam_reports"] >= 6

            await wait_for(counted, timeout=60, what="the bounces counted")
            before = await stats_of(pool, cid)
            assert before is not None
            assert (before["bounced"], before["spam_reports"]) == (4, 2)

            # A replay: the same DSN and complaint delivered to the mailbox again.
            for raw in (mails[0], mails[2], mails[6]):
                assert (await client.append(raw, mailbox="INBOX")).result == "OK"

            async def replay_moved() -> bool:
                return await count(client, "INBOX") == 0 and await count(client, "Processed") == 10

            await wait_for(replay_moved, timeout=60, what="the replay moved")
            # Anything published before the sentinel, on the campaign's partition, is folded
            # once the sentinel is.
            await settle(producer, pool, cid)

        after = await stats_of(pool, cid)
        assert after is not None
        assert (after["bounced"], after["spam_reports"]) == (4, 2)
        assert len(await suppressions()) == 5
        streak = await pool.fetchval(
            "SELECT in_a_row FROM soft_bounce_streaks WHERE email = $1", address(6)
        )
        assert streak == 1
        folded = await pool.fetchval(
            "SELECT count(*) FROM delivery_events WHERE campaign_id = $1 AND provider = 'smtp'",
            cid,
        )
        assert folded == 7


async def settle(producer: EventProducer, pool: asyncpg.Pool, cid: uuid.UUID) -> None:
    sentinel = DeliveryEvent(
        event_id=f"sentinel-{uuid.uuid4()}",
        email="s@x.io",
        event="processed",
        provider="test",
        occurred_at=datetime.now(UTC),
    )
    await producer.send(Topic.DELIVERY_EVENT, str(cid), sentinel)

    async def folded() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT 1 FROM delivery_events WHERE event_id = $1", sentinel.event_id
            )
        )

    await wait_for(folded, what="the sentinel event")


async def test_a_refused_login_is_retried_each_poll_and_stops_cleanly(
    dovecot: Dovecot,
    database_url: str,
    kafka_bootstrap: str,
    pool: asyncpg.Pool,
    producer: EventProducer,
) -> None:
    config = make_settings(
        database_url,
        kafka_bootstrap,
        bounce_imap_host="127.0.0.1",
        bounce_imap_port=dovecot.port,
        bounce_imap_tls="none",
        bounce_imap_user=USER,
        bounce_imap_password="wrong",
        bounce_poll_seconds=0.1,
    )
    before = POLL_FAILURES._value.get()

    async def failed_twice() -> bool:
        return POLL_FAILURES._value.get() >= before + 2

    async with running_poller(config, pool, producer) as task:
        await wait_for(failed_twice, timeout=60, what="two failed polls")
        assert not task.done()  # a refused login never ends the service
