"""Helpers shared by the dispatcher tests: content rows and batches."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from aiosmtpd.controller import Controller

from libs.common.embedded import free_port
from libs.common.events import BatchReady, BatchRecipient

SUBJECT = "Hello {{ first_name }}"
HTML = "<p>Dear {{ first_name }} from {{ city }}</p>"


async def insert_content(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, subject: str = SUBJECT, html: str = HTML
) -> uuid.UUID:
    content_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO content_snapshots (id, campaign_id, subject, html, text, from_email, from_name)"
        " VALUES ($1, $2, $3, $4, NULL, 'news@example.com', 'News')",
        content_id,
        campaign_id,
        subject,
        html,
    )
    return content_id


def make_batch(
    campaign_id: uuid.UUID,
    content_id: uuid.UUID,
    batch_no: int,
    size: int,
    *,
    batches_total: int = 1,
    provider: str = "sink",
    first_id: int = 0,
) -> BatchReady:
    start = first_id + batch_no * size
    recipients = [
        BatchRecipient(
            recipient_id=i,
            email=f"r{i}.{campaign_id.hex[:8]}@example.com",
            fields={"first_name": f"Name{i}", "city": "Zürich & Co"},
        )
        for i in range(start, start + size)
    ]
    return BatchReady(
        batch_id=f"{campaign_id}:{batch_no}",
        campaign_id=campaign_id,
        batch_no=batch_no,
        batches_total=batches_total,
        audience_total=size * batches_total,
        suppressed_total=0,
        content_id=content_id,
        provider=provider,
        recipients=recipients,
    )


class SlowRelay:
    """aiosmtpd handler of a slow relay: `delay_s` a message; counts every address."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.received: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay_s)
        self.received.update(a.lower() for a in envelope.rcpt_tos)
        return "250 Message accepted"


@contextmanager
def slow_relay_server(delay_s: float = 0.05) -> Iterator[tuple[int, SlowRelay]]:
    """A real SMTP server (aiosmtpd, in its own thread) on a free port."""
    relay = SlowRelay(delay_s)
    port = free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, relay
    finally:
        controller.stop()
