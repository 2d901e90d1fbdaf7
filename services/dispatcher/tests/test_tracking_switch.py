"""The dispatcher tracks a campaign's links exactly when its `tracking` switch is on."""

from __future__ import annotations

import uuid

import asyncpg

from libs.common.events import BatchRecipient
from libs.mail.headers import HeaderPolicy
from libs.mail.rendering import build_outbox
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.tests.support import insert_content

POLICY = HeaderPolicy("https://m.example.com", "secret")


async def _campaign(pool: asyncpg.Pool, tracking: bool) -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('news') RETURNING id")
    campaign: uuid.UUID = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " tracking) VALUES ('c', 's', 'h', 'news@example.com', $1, 'smtp', 'in_progress', $2)"
        " RETURNING id",
        list_id,
        tracking,
    )
    return campaign


async def test_the_switch_decides_rewriting(pool: asyncpg.Pool) -> None:
    repository = ContentRepository(pool)
    people = [BatchRecipient(recipient_id=1, email="a@example.org")]
    for tracking in (True, False):
        campaign = await _campaign(pool, tracking)
        snapshot = await insert_content(
            pool, campaign, html='<a href="https://a.example.org/">a</a>'
        )
        content = await repository.get(snapshot)
        assert content is not None and content.tracking is tracking
        outbox = build_outbox(content, campaign, "b", people, POLICY)
        html = outbox.templated.html if outbox.templated else outbox.individual[0].html
        assert ("https://m.example.com/o/" in html) is tracking
        assert ('href="https://a.example.org/"' in html) is not tracking
