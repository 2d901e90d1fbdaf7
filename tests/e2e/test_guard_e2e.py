"""A bounce storm stops its campaign; a clean campaign beside it goes on (issue 14 item 5).

Every service its own process, the guard among them, sending over SMTP to an aiosmtpd
server that refuses 10 % of one campaign's addresses at RCPT with 550 5.1.1 (hard bounces
at send time). The stormy campaign asks the guard for a lower volume (its `guard` field),
so that a few hundred sends are enough: the guard pauses it with the reason, the
dispatchers stop sending it, and the clean campaign completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from libs.common.embedded import free_port
from libs.common.events import DeliveryResult, RecipientOutcome, Topic
from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from tests.e2e.harness import RunningStack, smtp_server, start_stack

RECIPIENTS = 600  # per campaign
MIN_SENDS = 200  # the stormy campaign's own guard volume
GUARD_METRICS = free_port()
pytestmark = pytest.mark.timeout(300)


class Mailserver:
    """Refuses `*-dead-*` at RCPT with 550 5.1.1, accepts everyone else."""

    def __init__(self) -> None:
        self.accepted = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if "-dead-" in address:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted += len(envelope.rcpt_tos)
        return "250 Message accepted"


@pytest.fixture(scope="module")
def mailserver() -> Iterator[tuple[int, Mailserver]]:
    handler = Mailserver()
    with smtp_server(handler) as port:
        yield port, handler


@pytest.fixture(scope="module")
async def stack(
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    mailserver: tuple[int, Mailserver],
) -> AsyncIterator[RunningStack]:
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("guard-e2e-logs"),
        extra_children=["guard"],
        metrics_ports={"guard": GUARD_METRICS},
        env={
            "MAILFLEET_DEFAULT_PROVIDER": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mailserver[0]),
            "SMTP_TLS": "none",
            # Slow enough that both campaigns are still sending when the storm is seen.
            "SMTP_RATE_PER_SEC": "60",
            "MAILFLEET_BATCH_SIZE": "50",
            "MAILFLEET_GUARD_HOP_SECONDS": "1",
        },
    )
    yield running
    await running.stop()


async def guard_reading(settings: Settings, port: int, timeout: float = 60) -> None:
    """Until the guard has counted a first delivery.result (of a campaign that does not
    exist): a group's first assignment takes seconds on Tansu, longer on a machine busy
    starting a whole stack, and the 10 s are about a guard that is running."""
    producer = EventProducer(settings)
    await producer.start()
    try:
        now = datetime.now(UTC)
        nobody = uuid.uuid4()
        probe = DeliveryResult(
            batch_id=f"{nobody}:0", campaign_id=nobody, batch_no=0, batches_total=1,
            audience_total=1, suppressed_total=0, provider="smtp",
            outcomes=[RecipientOutcome(recipient_id=1, email="probe@example.com", status="sent")],
            started_at=now, finished_at=now,
        )  # fmt: skip
        await producer.send(Topic.DELIVERY_RESULT, str(nobody), probe)
    finally:
        await producer.stop()
    counted = 'mailfleet_guard_records_total{topic="delivery.result"} '
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                page = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                line = next((x for x in page.splitlines() if x.startswith(counted)), "")
                if line and float(line.split()[-1]) >= 1:
                    return
            assert time.monotonic() < deadline, "the guard never read delivery.result"
            await asyncio.sleep(0.2)


async def test_a_bounce_storm_pauses_its_campaign_within_10_s_and_the_clean_one_goes_on(
    stack: RunningStack, mailserver: tuple[int, Mailserver], settings: Settings
) -> None:
    tag = uuid.uuid4().hex[:8]
    api = stack.client()
    try:

        async def campaign(name: str, dead_every: int | None, **fields: Any) -> str:
            list_id = await api.create_list(f"guard-{name}-{tag}")
            # Numbered first: a list is sent in address order within each import run
            # (services/importer/prepare.py), so the refused tenth is spread evenly.
            rows = "".join(
                f"{i:06d}-{'dead' if dead_every and i % dead_every == 0 else 'ok'}-{tag}"
                "@example.com\n"
                for i in range(RECIPIENTS)
            )
            job = await api.wait_import(await api.import_csv(list_id, b"email\n" + rows.encode()))
            assert job["status"] == "completed", job
            return await api.create_campaign(
                name=f"guard {name} {tag}",
                subject="Hi",
                html="<p>Hi</p>",
                from_email="news@example.com",
                list_id=list_id,
                **fields,
            )

        stormy = await campaign("stormy", 10, guard={"min_sends": MIN_SENDS})  # 10 % refused
        clean = await campaign("clean", None, guard={"min_sends": MIN_SENDS})
        await guard_reading(settings, GUARD_METRICS)
        scheduled_at = time.monotonic()
        await api.schedule(stormy)
        await api.schedule(clean)
        # When the storm is there to see (the campaign's own volume reached, as the API
        # shows it), and when the campaign is paused.
        storm_seen: float | None = None
        deadline = time.monotonic() + 60
        while True:
            shown = await api.campaign(stormy)
            handled = shown["stats"]["sent"] + shown["stats"]["failed"]
            if storm_seen is None and handled >= MIN_SENDS:
                storm_seen = time.monotonic()
            if shown["status"] != "in_progress" and shown["status"] != "scheduled":
                break
            assert time.monotonic() < deadline, shown
            await asyncio.sleep(0.1)  # polling a remote status
        paused_at = time.monotonic()
        assert shown["status"] == "paused", shown
        assert shown["paused_by"] == "guard"
        assert shown["pause_reason"] == "hard_bounce_rate 0.10 > 0.05"
        took = paused_at - (storm_seen or paused_at)
        assert took < 10, took
        done = await api.wait_campaign(clean, timeout=120)
        assert done["status"] == "completed", done
        assert done["stats"]["sent"] == RECIPIENTS and done["stats"]["failed"] == 0
        # The stormy campaign stopped: most of it was never offered to the server.
        stats = (await api.campaign(stormy))["stats"]
        assert stats["sent"] + stats["failed"] < RECIPIENTS, stats
        assert (await api.campaign(stormy))["status"] == "paused"
        print(
            f"stormy paused {took:.1f} s after {MIN_SENDS} sends showed"
            f" ({paused_at - scheduled_at:.1f} s after scheduling), with {handled} shown"
            f" then; in the end {stats['sent'] + stats['failed']} of {RECIPIENTS} sent"
        )
    finally:
        await api.close()
