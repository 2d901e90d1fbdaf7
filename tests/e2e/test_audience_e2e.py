"""Issue 15 item 2, end to end: a campaign to two overlapping lists minus a segment. The sink
receives exactly the expected set of addresses, once each.

Every service as its own process (tests/e2e/harness.py). Two lists imported by CSV that
share a hundred addresses; a segment (city = Pune) that matches some people through their
row on one list only (the exclusion is by address); one address suppressed, and rows that
are not confirmed (double opt-in: never mailed from that row, still mailed from an active
row on the other list).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from libs.common.settings import Settings
from tests.e2e.harness import RunningStack, start_stack


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[RunningStack]:
    running = await start_stack(
        settings.database_url, settings.kafka_bootstrap_servers, tmp_path / "logs"
    )
    yield running
    await running.stop()


def _csv(rows: dict[str, str]) -> bytes:
    return ("email,city\n" + "".join(f"{e},{c}\n" for e, c in rows.items())).encode()


async def test_two_overlapping_lists_minus_a_segment(
    stack: RunningStack, pool: asyncpg.Pool
) -> None:
    tag = uuid.uuid4().hex[:6]
    people = [f"p{i}-{tag}@aud.example.com" for i in range(300)]
    # List A: people 0-199; list B: people 100-299 (100 on both). Pune: every 7th on A, every
    # 5th on B (so some of the shared people are Pune on one list only).
    on_a = {e: ("Pune" if i % 7 == 0 else "Oslo") for i, e in enumerate(people[:200])}
    on_b = {e: ("Pune" if i % 5 == 0 else "Lima") for i, e in enumerate(people[100:], 100)}
    api = stack.client()
    try:
        list_a, list_b = await api.create_list(f"a {tag}"), await api.create_list(f"b {tag}")
        for list_id, rows in ((list_a, on_a), (list_b, on_b)):
            job = await api.wait_import(await api.import_csv(list_id, _csv(rows)))
            assert job["rows_imported"] == len(rows), job
        # Not confirmed: person 10 (A only), person 151 on A (active on B), person 251 (B only).
        unconfirmed = [(list_a, people[10]), (list_a, people[151]), (list_b, people[251])]
        for list_id, email in unconfirmed:
            await pool.execute(
                "UPDATE recipients SET status = 'unconfirmed' WHERE list_id = $1 AND email = $2",
                uuid.UUID(list_id),
                email,
            )
        suppressed = people[11]
        await pool.execute(
            "INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')", suppressed
        )
        segment = await api._json(
            "POST",
            "/segments",
            201,
            json={"name": f"pune {tag}", "filter": {"field": "city", "op": "eq", "value": "Pune"}},
        )
        campaign_id = await api.create_campaign(
            name=f"audience {tag}",
            subject="Hi from {{ city }}",
            html="<p>{{ city }}</p>",
            from_email="news@example.com",
            audience={"lists": [list_a, list_b], "exclude_segments": [segment["id"]]},
        )
        await api.schedule(campaign_id)
        done = await api.wait_campaign(campaign_id, timeout=180)
    finally:
        await api.close()

    pune = {e for e, c in (*on_a.items(), *on_b.items()) if c == "Pune"}
    inactive = {people[10], people[251]}  # people[151] is still active on B
    audience = (set(on_a) | set(on_b)) - pune - inactive
    expected = audience - {suppressed}
    assert people[151] in expected and suppressed in audience  # the cases are present
    got = stack.sink.state.received_in(campaign_id)
    assert set(got) == expected
    assert set(got.values()) == {1}
    assert done["status"] == "completed", done
    assert done["audience_planned"]["total"] == len(audience)
    assert done["audience_planned"]["suppressed"] == 1
    assert done["stats"]["sent"] == len(expected)
