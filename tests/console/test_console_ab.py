"""The campaign page shows its A/B test (issue 17 item 1): the split, the decision, and the
test group's stats per variant with the z-test against the leader."""

from __future__ import annotations

import html
import re
import uuid

from tests.console.conftest import Console
from tests.console.support import csrf_in, sign_in


async def _ab_campaign(console: Console, winner: str | None) -> uuid.UUID:
    db = console.app.state.resources.db
    list_id = await db.fetchval("INSERT INTO lists (name) VALUES ('ab page') RETURNING id")
    campaign_id: uuid.UUID = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status)"
        " VALUES ('ab page', 'Base', '<p>Hi</p>', 'a@example.com', $1, 'sink', 'in_progress')"
        " RETURNING id",
        list_id,
    )
    await db.execute(
        "INSERT INTO ab_tests (campaign_id, test_share, seed, wait_seconds, metric, winner,"
        " decided_by, decided_at, decision_reason)"
        " VALUES ($1, 0.2, 5, 7200, 'open', $2::text, CASE WHEN $2::text IS NOT NULL"
        " THEN 'scheduler:open' END, CASE WHEN $2::text IS NOT NULL THEN now() END,"
        " CASE WHEN $2::text IS NOT NULL THEN 'highest unique open rate' END)",
        campaign_id,
        winner,
    )
    await db.executemany(
        "INSERT INTO ab_variants (campaign_id, variant, subject) VALUES ($1, $2, $3)",
        [(campaign_id, "A", "Spring <sale>"), (campaign_id, "B", None)],
    )
    await db.executemany(
        "INSERT INTO campaign_variant_stats (campaign_id, variant, recipients, sent,"
        " unique_opens) VALUES ($1, $2, 1000, 1000, $3)",
        [(campaign_id, "A", 150), (campaign_id, "B", 200)],
    )
    return campaign_id


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


async def test_the_campaign_page_shows_the_test_per_variant(console: Console) -> None:
    undecided = await _ab_campaign(console, None)
    decided = await _ab_campaign(console, "B")
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        page = await client.get(f"/console/campaigns/{undecided}")
        assert page.status_code == 200
        assert 'id="ab-test"' in page.text and "Spring &lt;sale&gt;" in page.text  # escaped
        text = _text(page.text)
        assert "20.0 % of the audience in the test" in text and "No winner yet." in text
        assert "against the leader (B)" in text
        assert (
            "A Spring <sale> 1000 150 15.0 % 0 0.0 % -5.0 pts (-8.3 to -1.7) 0.003, significant"
            in text
        )
        assert "B (the campaign's) 1000 200 20.0 % 0 0.0 % leader" in text
        page = await client.get(f"/console/campaigns/{decided}")
        assert "Winner: B" in _text(page.text)
        db = console.app.state.resources.db
        await db.execute("DELETE FROM ab_tests WHERE campaign_id = $1", decided)
        plain = await client.get(f"/console/campaigns/{decided}")
        assert plain.status_code == 200 and 'id="ab-test"' not in plain.text
    await db.execute(
        "UPDATE campaigns SET status = 'completed' WHERE id = ANY($1::uuid[])", [undecided, decided]
    )


async def test_an_editor_picks_the_winner_from_the_page(console: Console) -> None:
    campaign_id = await _ab_campaign(console, None)
    db = console.app.state.resources.db
    await db.execute(
        "UPDATE ab_tests SET test_started_at = now() WHERE campaign_id = $1", campaign_id
    )
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        page = await client.get(f"/console/campaigns/{campaign_id}")
        assert "Pick B" not in page.text  # a viewer only reads
    async with console.client() as client:
        await sign_in(client, "editor@example.com")
        page = await client.get(f"/console/campaigns/{campaign_id}")
        assert "Pick A" in page.text and "Pick B" in page.text
        token = csrf_in(page.text)
        path = f"/console/campaigns/{campaign_id}/ab/winner"
        bad = await client.post(path, data={"csrf_token": token, "variant": "Z"})
        assert bad.status_code == 422
        picked = await client.post(path, data={"csrf_token": token, "variant": "B"})
        assert picked.status_code == 303
        page = await client.get(f"/console/campaigns/{campaign_id}")
        assert "Winner: B" in _text(page.text) and "Pick A" not in page.text
        again = await client.post(path, data={"csrf_token": token, "variant": "A"})
        assert again.status_code == 409
    row = await db.fetchrow(
        "SELECT winner, decided_by FROM ab_tests WHERE campaign_id = $1", campaign_id
    )
    assert row["winner"] == "B" and row["decided_by"].startswith("user:")
    audited = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'campaign.ab_winner' AND target_id = $1",
        str(campaign_id),
    )
    assert audited == 1
    await db.execute("UPDATE campaigns SET status = 'completed' WHERE id = $1", campaign_id)
