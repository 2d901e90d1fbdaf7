"""The campaign editor's tracking checkbox: ticked by default, and what it says is stored."""

from __future__ import annotations

import uuid

from tests.console.conftest import Console
from tests.console.support import page_csrf, sign_in

CHECKBOX = 'name="tracking" value="on"'


async def test_the_checkbox_switches_tracking(console: Console) -> None:
    db = console.app.state.resources.db
    list_id = await db.fetchval("INSERT INTO lists (name) VALUES ('tracking') RETURNING id")
    async with console.client() as client:
        await sign_in(client, "editor@example.com")
        csrf = await page_csrf(client)
        new = await client.get("/console/campaigns/new")
        assert f"{CHECKBOX} checked" in new.text
        fields = {
            "csrf_token": csrf,
            "name": "Untracked",
            "from_email": "news@example.com",
            "list_id": str(list_id),
            "subject": "Hi",
            "html": '<p><a href="https://shop.example.org/">shop</a></p>',
        }
        created = await client.post("/console/campaigns/new", data=fields)  # not ticked
        assert created.status_code == 303
        campaign = uuid.UUID(created.headers["location"].rsplit("/", 1)[1])
        assert await db.fetchval("SELECT tracking FROM campaigns WHERE id = $1", campaign) is False
        edit_path = created.headers["location"] + "/edit"
        form = await client.get(edit_path)
        assert CHECKBOX in form.text and f"{CHECKBOX} checked" not in form.text
        saved = await client.post(edit_path, data={**fields, "tracking": "on"})
        assert saved.status_code == 303
        assert await db.fetchval("SELECT tracking FROM campaigns WHERE id = $1", campaign) is True
        assert f"{CHECKBOX} checked" in (await client.get(edit_path)).text
