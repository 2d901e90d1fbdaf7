"""One campaign through the whole system: CSV import, API, Kafka, every service as its own
process, a SendGrid-compatible server. Every valid address is received exactly once."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from libs.common.settings import Settings
from services.edge.tests.support import WEBHOOK_PATH, public_key_b64, sendgrid_event, signed
from tests.e2e.harness import RunningStack, start_stack

# The key SendGrid would sign its event webhook with; the edge verifies with its public half.
WEBHOOK_KEY = ec.generate_private_key(ec.SECP256R1())

RECIPIENTS = 20_000


@pytest.fixture(scope="module")
async def stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningStack]:
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("e2e-logs"),
        env={"SENDGRID_WEBHOOK_VERIFICATION_KEY": public_key_b64(WEBHOOK_KEY)},
    )
    yield running
    await running.stop()


def make_csv(valid: int, seed: int = 7) -> tuple[bytes, set[str], int, int]:
    """A CSV with `valid` distinct addresses, plus invalid rows and case-variant duplicates.

    Returns the bytes, the expected (lower-cased) addresses, the invalid and duplicate counts.
    """
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["Email", "first_name", "city"])
    expected: set[str] = set()
    rows: list[list[str]] = []
    for i in range(valid):
        email = f"person{i}.{rng.randrange(10**6)}@example{i % 50}.com"
        expected.add(email)
        rows.append([email, f"Name{i}", rng.choice(["Köln", "Zürich", "Łódź", "Paris"])])
    invalid = [["not-an-address", "X", "Y"], ["missing@tld", "X", "Y"], ["", "empty", "Y"]]
    duplicates = [[r[0].upper(), r[1], r[2]] for r in rows[:25]]
    rows += invalid + duplicates
    rng.shuffle(rows)
    writer.writerows(rows)
    return "\ufeff".encode() + out.getvalue().encode(), expected, len(invalid), len(duplicates)


async def test_twenty_thousand_recipients_each_receive_the_campaign_once(
    stack: RunningStack,
) -> None:
    content, expected, invalid, duplicates = make_csv(RECIPIENTS)
    api = stack.client()
    try:
        list_id = await api.create_list("e2e")
        job = await api.wait_import(await api.import_csv(list_id, content))
        assert job["status"] == "completed", job
        assert job["rows_imported"] == RECIPIENTS
        assert job["rows_rejected"] == invalid
        assert job["rows_duplicate"] == duplicates

        campaign_id = await api.create_campaign(
            name="e2e",
            subject="Hello {{ first_name }}",
            html="<p>Hi {{ first_name }} from {{ city }}</p>",
            from_email="news@example.com",
            list_id=list_id,
        )
        scheduled = await api.schedule(campaign_id)
        assert scheduled["status"] == "scheduled"
        done = await api.wait_campaign(campaign_id, timeout=300)
    finally:
        await api.close()

    assert done["status"] == "completed", done
    stats = done["stats"]
    assert stats["total"] == RECIPIENTS
    assert stats["sent"] == RECIPIENTS
    assert stats["failed"] == stats["pending"] == stats["suppressed"] == 0

    received = stack.sink.state.received_in(campaign_id)
    assert set(received) == expected
    assert max(received.values()) == 1, "an address received the campaign twice"
    subjects = {
        m.email: m.subject
        for m in stack.sink.messages
        if m.custom_args.get("campaign_id") == campaign_id
    }
    sample = next(iter(subjects.items()))
    assert sample[1].startswith("Hello Name"), sample


def test_logs_are_json_lines_with_ids(stack: RunningStack) -> None:
    log_dir = Path(stack.supervisor.log_dir)
    scheduler_log = (log_dir / "scheduler.log").read_text()
    assert '"campaign_id"' in scheduler_log and '"service": "scheduler"' in scheduler_log


async def test_a_hard_bounce_reported_by_webhook_is_skipped_by_the_next_campaign(
    stack: RunningStack,
) -> None:
    """Provider event (signed) → edge → delivery.event → tracker suppression → the next
    campaign's scheduler skips it. The bounce is of a delivery of a first campaign: an event
    that matches no delivery suppresses nobody (issue 12)."""
    bounced = f"bounce-{uuid.uuid4().hex[:8]}@example.com"
    others = [f"keep{i}-{uuid.uuid4().hex[:8]}@example.com" for i in range(2)]
    api = stack.client()
    try:
        list_id = await api.create_list("after-bounce")
        rows = "email,first_name\n" + "".join(f"{e},X\n" for e in [bounced, *others])
        job = await api.wait_import(await api.import_csv(list_id, rows.encode()))
        assert job["status"] == "completed", job
        first = await api.create_campaign(
            name="before bounce",
            subject="Hi",
            html="<p>Hi</p>",
            from_email="news@example.com",
            list_id=list_id,
        )
        await api.schedule(first)
        assert (await api.wait_campaign(first, timeout=120))["status"] == "completed"
        mailed = await api.http.get(f"/campaigns/{first}/deliveries", params={"limit": 10})
        recipient_id = next(
            d["recipient_id"] for d in mailed.json()["items"] if d["email"] == bounced
        )
        event = sendgrid_event(
            "bounce",
            email=bounced,
            type="bounce",
            reason="550 5.1.1 no such user",
            campaign_id=first,
            recipient_id=str(recipient_id),
            timestamp=int(time.time()),
        )
        body = orjson.dumps([event])
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as edge:
            webhook = await edge.post(WEBHOOK_PATH, content=body, headers=signed(WEBHOOK_KEY, body))
        assert webhook.status_code == 200, webhook.text
        deadline = time.monotonic() + 60
        while True:
            found = await api.http.get("/suppressions", params={"email": bounced})
            if found.status_code == 200 and found.json()["items"]:
                break
            assert time.monotonic() < deadline, "the bounce never became a suppression"
            await asyncio.sleep(0.2)  # polling the tracker's fold through the API
        assert found.json()["items"][0]["reason"] == "bounce"

        campaign_id = await api.create_campaign(
            name="after bounce",
            subject="Hi",
            html="<p>Hi</p>",
            from_email="news@example.com",
            list_id=list_id,
        )
        await api.schedule(campaign_id)
        done = await api.wait_campaign(campaign_id, timeout=120)
    finally:
        await api.close()
    assert done["status"] == "completed", done
    assert (done["stats"]["sent"], done["stats"]["suppressed"], done["stats"]["total"]) == (2, 1, 3)
    received = set(stack.sink.state.received_in(campaign_id))
    assert received == set(others)
