"""An old unsubscribe link unsubscribes the address that was mailed (issue 12, item 8),
after the recipient's row was edited, and after it was deleted: the link names the
delivery, and the tracker resolves the address from the delivery log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.common.settings import Settings
from libs.common.unsubscribe import make_token
from services.edge.tests.support import Edge, running_edge
from services.tracker.tests.support import new_campaign, running_tracker, wait_for


@pytest.fixture(scope="module")
async def edge_and_tracker(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Edge]:
    async with running_edge(settings) as edge:
        async with running_tracker(settings, pool, edge.producer):
            yield edge


async def _mailed(pool: asyncpg.Pool, email: str) -> tuple[uuid.UUID, int]:
    """A recipient and the delivery of one campaign to it, as the tracker logged it."""
    campaign_id = await new_campaign(pool)
    list_id = await pool.fetchval("SELECT list_id FROM campaigns WHERE id = $1", campaign_id)
    recipient_id = int(
        await pool.fetchval(
            "INSERT INTO recipients (list_id, email) VALUES ($1, $2) RETURNING id", list_id, email
        )
    )
    await pool.execute(
        "INSERT INTO campaign_stats (campaign_id, audience_total, sent) VALUES ($1, 1, 1)",
        campaign_id,
    )
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id)"
        " VALUES ($1, $2, $3, 'sent', $4)",
        campaign_id,
        recipient_id,
        email,
        f"{campaign_id}:0",
    )
    return campaign_id, recipient_id


async def _unsubscribe_and_wait(
    edge: Edge, pool: asyncpg.Pool, campaign_id: uuid.UUID, recipient_id: int, email: str
) -> None:
    token = make_token(edge.settings.secret_key, campaign_id, recipient_id)
    page = await edge.client.get(f"/u/{token}")
    assert page.status_code == 200, page.text
    done = await edge.client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
    assert done.status_code == 200, done.text
    reason = await wait_for(
        lambda: pool.fetchval("SELECT reason FROM suppressions WHERE email = $1", email),
        what=f"{email} to be suppressed",
    )
    assert reason == "unsubscribe"
    stats = await pool.fetchrow(
        "SELECT unsubscribes FROM campaign_stats WHERE campaign_id = $1", campaign_id
    )
    assert stats["unsubscribes"] == 1


async def test_link_works_after_the_recipient_is_edited(
    edge_and_tracker: Edge, pool: asyncpg.Pool
) -> None:
    mailed = f"old-{uuid.uuid4().hex[:8]}@example.com"
    campaign_id, recipient_id = await _mailed(pool, mailed)
    edited = f"new-{uuid.uuid4().hex[:8]}@example.com"
    await pool.execute("UPDATE recipients SET email = $2 WHERE id = $1", recipient_id, edited)

    await _unsubscribe_and_wait(edge_and_tracker, pool, campaign_id, recipient_id, mailed)
    # The address now on the row was never mailed by this campaign: it stays subscribed.
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE email = $1", edited) == 0


async def test_link_works_after_the_recipient_is_deleted(
    edge_and_tracker: Edge, pool: asyncpg.Pool
) -> None:
    mailed = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    campaign_id, recipient_id = await _mailed(pool, mailed)
    await pool.execute("DELETE FROM recipients WHERE id = $1", recipient_id)

    await _unsubscribe_and_wait(edge_and_tracker, pool, campaign_id, recipient_id, mailed)
    stored = await pool.fetchrow(
        "SELECT email, matched FROM delivery_events WHERE event_id = $1",
        f"unsubscribe:{campaign_id}:{recipient_id}",
    )
    assert (stored["email"], stored["matched"]) == (mailed, True)
