"""Double opt-in through the whole system (issue 15 item 3): subscribe on the edge, the
confirmation arrives at the sink, a campaign sent meanwhile does not mail the unconfirmed
address, the link is followed, the address is confirmed and `joined` is published.
Expired and forged links are refused by the running edge."""

from __future__ import annotations

import asyncio
import html
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from libs.common.confirm_token import make_confirm_token
from libs.common.settings import Settings
from libs.mail.sink import SinkMessage
from services.api.tests.support import find_event
from tests.e2e.harness import RunningStack, start_stack

SECRET = "e2e-secret"  # what start_stack gives every service as MAILFLEET_SECRET_KEY
WAIT_S = 60.0


@pytest.fixture(scope="module")
async def stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningStack]:
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("e2e-subscription-logs"),
    )
    yield running
    await running.stop()


async def _arrived(stack: RunningStack, email: str) -> SinkMessage:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = [m for m in stack.sink.messages if m.email == email]
        if found:
            return found[0]
        await asyncio.sleep(0.1)  # the sink is fed by another process: poll its record
    raise AssertionError(f"nothing arrived for {email} within {WAIT_S} s")


async def _status(pool: asyncpg.Pool, list_id: str, email: str, wanted: str) -> None:
    deadline = time.monotonic() + WAIT_S
    status = None
    while time.monotonic() < deadline:
        status = await pool.fetchval(
            "SELECT status FROM recipients WHERE list_id = $1 AND email = $2",
            uuid.UUID(list_id),
            email,
        )
        if status == wanted:
            return
        await asyncio.sleep(0.1)  # folded by the importer's process
    raise AssertionError(f"{email} is {status!r}, not {wanted!r}, after {WAIT_S} s")


async def test_double_opt_in_end_to_end(
    stack: RunningStack, settings: Settings, pool: asyncpg.Pool
) -> None:
    api = stack.client()
    tag = uuid.uuid4().hex[:6]
    member, newcomer = f"member-{tag}@example.com", f"newcomer-{tag}@example.com"
    try:
        created = await api._json(  # noqa: SLF001
            "POST",
            "/lists",
            201,
            json={
                "name": "Weekly",
                "opt_in": "double",
                "confirmation_from_email": "news@example.com",
                "editable_fields": ["first_name"],
            },
        )
        list_id, public_id = created["id"], created["public_id"]
        job = await api.wait_import(await api.import_csv(list_id, f"email\n{member}\n".encode()))
        assert job["status"] == "completed" and job["rows_imported"] == 1, job

        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as edge:
            answers = [
                await edge.post(f"/s/{public_id}", json={"email": e, "first_name": "Nia"})
                for e in (newcomer, member)
            ]
            # New or already on the list: the same answer.
            assert [a.status_code for a in answers] == [202, 202]
            assert answers[0].json() == answers[1].json()

            confirmation = await _arrived(stack, newcomer)
            assert "confirm" in confirmation.subject.lower()
            await _status(pool, list_id, newcomer, "unconfirmed")

            # A campaign sent before the link is followed mails the member only.
            campaign_id = await api.create_campaign(
                name="before confirming",
                subject="Issue 1",
                html="<p>Hello</p>",
                from_email="news@example.com",
                list_id=list_id,
            )
            await api.schedule(campaign_id)
            done = await api.wait_campaign(campaign_id)
            assert done["status"] == "completed", done
            mailed = {m.email for m in stack.sink.messages if m.subject == "Issue 1"}
            assert mailed == {member}

            link = re.search(r'href="([^"]+/confirm/[^"]+)"', confirmation.html)
            assert link is not None, confirmation.html
            url = html.unescape(link.group(1))
            assert url.startswith(stack.edge_url)
            page = await edge.get(url)
            assert page.status_code == 200 and "Confirm my subscription" in page.text
            confirmed = await edge.post(url)
            assert confirmed.status_code == 200, confirmed.text
            await _status(pool, list_id, newcomer, "active")
            _, joined = await find_event(
                settings,
                "contact.event",
                lambda e: e.get("action") == "joined" and e.get("email") == newcomer,
            )
            assert joined["list_id"] == list_id and joined["source"] == "confirmation"
            consent = await pool.fetchrow(
                "SELECT status, ip, user_agent, source FROM consents WHERE email = $1", newcomer
            )
            assert consent is not None and consent["status"] == "confirmed"
            assert consent["ip"] and consent["user_agent"] and consent["source"] == "form"

            lid = uuid.UUID(list_id)
            expired = make_confirm_token(
                SECRET, lid, newcomer, datetime.now(UTC) - timedelta(days=7, minutes=1)
            )
            forged = make_confirm_token("guessed-secret", lid, newcomer, datetime.now(UTC))
            assert (await edge.post(f"/confirm/{expired}")).status_code == 410
            assert (await edge.post(f"/confirm/{forged}")).status_code == 404
    finally:
        await api.close()
