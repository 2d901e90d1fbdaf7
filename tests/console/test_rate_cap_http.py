"""The campaign page's rate-cap box over plain HTTP: a viewer sees the cap but no box and
is refused a forged post; an editor's post without JavaScript redirects back, and one that
names no number is a 422 saying why; a campaign that has ended shows no box."""

from __future__ import annotations

import uuid

from tests.console.conftest import Console
from tests.console.support import csrf_in, sign_in


async def test_the_rate_cap_box(console: Console) -> None:
    pool = console.app.state.resources.db
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('cap page') RETURNING id")
    campaign_id = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " max_per_hour) VALUES ($1, 's', '<p>x</p>', 'news@example.com', $2, 'sink',"
        " 'in_progress', 50000) RETURNING id",
        f"capped {uuid.uuid4().hex[:6]}",
        list_id,
    )
    url = f"/console/campaigns/{campaign_id}"
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        page = await client.get(url)
        assert "50,000 recipients an hour" in page.text and 'id="cap-input"' not in page.text
        forged = await client.post(
            url + "/rate-cap", data={"max_per_hour": "1", "csrf_token": csrf_in(page.text)}
        )
        assert forged.status_code == 403
    async with console.client() as client:
        await sign_in(client, "editor@example.com")
        page = await client.get(url)
        csrf = csrf_in(page.text)
        assert 'id="cap-input"' in page.text
        saved = await client.post(
            url + "/rate-cap", data={"max_per_hour": "2,500", "csrf_token": csrf}
        )
        assert saved.status_code == 303 and saved.headers["location"] == url
        refused = await client.post(
            url + "/rate-cap", data={"max_per_hour": "x", "csrf_token": csrf}
        )
        assert refused.status_code == 422 and "valid integer" in refused.text
        cleared = await client.post(
            url + "/rate-cap",
            data={"max_per_hour": "", "csrf_token": csrf},
            headers={"HX-Request": "true"},
        )
        assert cleared.status_code == 200 and "data-cap-saved" in cleared.text
        assert await pool.fetchval(
            "SELECT max_per_hour FROM campaigns WHERE id = $1", campaign_id
        ) is None  # fmt: skip
        await pool.execute("UPDATE campaigns SET status = 'completed' WHERE id = $1", campaign_id)
        ended = await client.get(url)
        assert "none" in ended.text and 'id="cap-input"' not in ended.text
    audit = await pool.fetch(
        "SELECT details FROM audit_log WHERE action = 'campaign.rate_cap' AND target_id = $1"
        " ORDER BY created_at",
        str(campaign_id),
    )
    assert [a["details"]["max_per_hour"] for a in audit] == [2500, None]
