"""The console's campaign page shows the audience (issue 15 item 2), and saving the editor
with its list unchanged keeps an audience of several lists and segments."""

from __future__ import annotations

import uuid

from tests.console.conftest import Console
from tests.console.support import ADMIN_EMAIL, page_csrf, sign_in


async def test_campaign_page_shows_the_audience_and_the_editor_keeps_it(
    console: Console,
) -> None:
    db = console.app.state.resources.db
    tag = uuid.uuid4().hex[:6]
    first = await db.fetchval("INSERT INTO lists (name) VALUES ($1) RETURNING id", f"First {tag}")
    second = await db.fetchval("INSERT INTO lists (name) VALUES ($1) RETURNING id", f"Second {tag}")
    segment = await db.fetchval(
        "INSERT INTO segments (name, filter) VALUES ($1, $2) RETURNING id",
        f"Pune {tag}",
        {"field": "city", "op": "eq", "value": "Pune"},
    )
    audience = {
        "lists": [str(first), str(second)],
        "segments": [],
        "exclude_lists": [],
        "exclude_segments": [str(segment)],
    }
    campaign_id = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, audience,"
        " audience_filters) VALUES ('aud', 'Hi', '<p>Hi</p>', 'a@example.com', $1, 'sink', $2,"
        " $3) RETURNING id",
        first,
        audience,
        {str(segment): {"field": "city", "op": "eq", "value": "Pune"}},
    )
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        page = await client.get(f"/console/campaigns/{campaign_id}")
        assert page.status_code == 200
        shown = page.text.split('id="audience"', 1)[1].split("</dd>", 1)[0]
        assert f"First {tag}" in shown and f"Second {tag}" in shown
        assert f"minus segments Pune {tag}" in " ".join(shown.split())
        editor = await client.get(f"/console/campaigns/{campaign_id}/edit")
        assert 'id="audience-note"' in editor.text
        csrf = await page_csrf(client)
        saved = await client.post(
            f"/console/campaigns/{campaign_id}/edit",
            data={
                "csrf_token": csrf,
                "name": "aud renamed",
                "from_email": "a@example.com",
                "list_id": str(first),
                "subject": "Hi",
                "html": "<p>Hi</p>",
            },
        )
        assert saved.status_code == 303, saved.text
    row = await db.fetchrow("SELECT name, audience FROM campaigns WHERE id = $1", campaign_id)
    assert row["name"] == "aud renamed" and row["audience"] == audience
