"""The content the dispatcher sends carries the campaign's list, for List-Id and Feedback-ID."""

from __future__ import annotations

import uuid

import asyncpg

from services.dispatcher.content_store import ContentRepository
from services.dispatcher.tests.support import insert_content


async def test_content_names_its_campaigns_list(pool: asyncpg.Pool) -> None:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('news') RETURNING id")
    campaign = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status)"
        " VALUES ('c', 's', 'h', 'news@example.com', $1, 'smtp', 'in_progress') RETURNING id",
        list_id,
    )
    content = await ContentRepository(pool).get(await insert_content(pool, campaign))
    assert content is not None and content.list_id == list_id
    # A snapshot whose campaign row is gone still loads (the per-domain List-Id is used).
    orphan = await ContentRepository(pool).get(await insert_content(pool, uuid.uuid4()))
    assert orphan is not None and orphan.list_id is None
