"""The console's campaign page says who paused a campaign and why (the reputation guard's
reason, issue 14 item 5)."""

from __future__ import annotations

import uuid

from tests.console.conftest import Console
from tests.console.support import sign_in


async def test_the_campaign_page_shows_the_guard_pause_reason(console: Console) -> None:
    pool = console.app.state.resources.db
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('guard page') RETURNING id")
    campaign_id = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " paused_by, pause_reason) VALUES ($1, 's', '<p>x</p>', 'news@example.com', $2,"
        " 'sink', 'paused', 'guard', 'hard_bounce_rate 0.10 > 0.05') RETURNING id",
        f"stormy {uuid.uuid4().hex[:6]}",
        list_id,
    )
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        page = await client.get(f"/console/campaigns/{campaign_id}")
    assert page.status_code == 200
    assert "Paused by guard" in page.text
    assert '<dd id="pause-reason">hard_bounce_rate 0.10 &gt; 0.05</dd>' in page.text
