"""The dispatcher under faults, with every service as its own process (tests/e2e/harness.py).

- SIGKILL a dispatcher mid-campaign; the supervisor restarts it: every address is received
  exactly once or reported `unknown`, the campaign completes, the counts reconcile.
- Two dispatchers, one killed for good: the other takes over its partitions.
- Pause stops sending in every dispatcher within 2 s, resume sends the rest once; cancel
  reports the rest `cancelled`.
- A sink rate limit is held within 5 %.

MAILFLEET_E2E_FAULT_RECIPIENTS sets the campaign size (10,000 by default; 50,000 for the
full check of issue 4).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from libs.common.settings import Settings
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_campaign_e2e import make_csv

RECIPIENTS = int(os.environ.get("MAILFLEET_E2E_FAULT_RECIPIENTS", "10000"))
# Slow enough that a kill or a pause lands mid-campaign, fast enough for CI.
RATE = max(2000, RECIPIENTS // 5)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningStack]:
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("fault-logs"),
        dispatchers=2,
        keep_messages=0,
        env={
            "MAILFLEET_SINK_RATE_PER_SEC": str(RATE),
            # A killed dispatcher's `sending` rows are settled soon after its partitions move.
            "MAILFLEET_LEDGER_TAKEOVER_WAIT_S": "8",
        },
    )
    yield running
    await running.stop()


async def control(stack: RunningStack, campaign_id: str, action: str) -> None:
    """`POST /api/v1/campaigns/{id}/{action}`, as an admin would."""
    api = stack.client()
    try:
        body = await api.control(campaign_id, action)
    finally:
        await api.close()
    assert (
        body["status"]
        == {"pause": "paused", "resume": "in_progress", "cancel": "cancelled"}[action]
    )


async def start_campaign(stack: RunningStack, recipients: int, seed: int) -> tuple[str, set[str]]:
    content, expected, _, _ = make_csv(recipients, seed=seed)
    api = stack.client()
    try:
        list_id = await api.create_list(f"faults-{seed}")
        job = await api.wait_import(await api.import_csv(list_id, content))
        assert job["status"] == "completed", job
        campaign_id = await api.create_campaign(
            name=f"faults-{seed}",
            subject="Hello {{ first_name }}",
            html="<p>Hi {{ first_name }} from {{ city }}</p>",
            from_email="news@example.com",
            list_id=list_id,
        )
        await api.schedule(campaign_id)
    finally:
        await api.close()
    return campaign_id, expected


def received(stack: RunningStack, campaign_id: str) -> dict[str, int]:
    return stack.sink.state.received_in(campaign_id)


async def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)


async def wait_accounted(pool: asyncpg.Pool, campaign_id: str, timeout: float) -> asyncpg.Record:
    """The campaign's stats once every batch of its plan came back."""
    deadline = time.monotonic() + timeout
    while True:
        row = await pool.fetchrow(
            "SELECT * FROM campaign_stats WHERE campaign_id = $1", uuid.UUID(campaign_id)
        )
        if row is not None and row["batches_done"] >= row["batches_total"] > 0:
            return row
        assert time.monotonic() < deadline, f"campaign not accounted for: {row}"
        await asyncio.sleep(0.2)


async def statuses_by_email(pool: asyncpg.Pool, campaign_id: str) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT lower(email) AS email, status FROM deliveries WHERE campaign_id = $1",
        uuid.UUID(campaign_id),
    )
    return {r["email"]: r["status"] for r in rows}


async def assert_exactly_once_or_unknown(
    stack: RunningStack, pool: asyncpg.Pool, campaign_id: str, expected: set[str]
) -> None:
    api = stack.client()
    try:
        done = await api.wait_campaign(campaign_id, timeout=120)
    finally:
        await api.close()
    assert done["status"] == "completed", done
    got = received(stack, campaign_id)
    assert max(got.values()) == 1, "an address received the campaign twice"
    assert set(got) <= expected
    statuses = await statuses_by_email(pool, campaign_id)
    assert set(statuses) == expected
    missing = expected - set(got)
    assert all(statuses[e] == "unknown" for e in missing), "an address was never sent"
    assert all(statuses[e] in ("sent", "unknown") for e in got)
    stats = done["stats"]
    # Shown with `pytest -s`: the figure issue 11 item 12 asks for (unknown after a kill).
    print(f"\n{campaign_id}: sent={stats['sent']} unknown={stats['unknown']}")
    assert stats["sent"] + stats["unknown"] == RECIPIENTS and stats["pending"] == 0, stats
    assert stats["sent"] == sum(1 for s in statuses.values() if s == "sent")


async def test_a_dispatcher_killed_mid_campaign_and_restarted_sends_nobody_twice(
    stack: RunningStack, pool: asyncpg.Pool
) -> None:
    campaign_id, expected = await start_campaign(stack, RECIPIENTS, seed=11)
    await wait_until(
        lambda: len(received(stack, campaign_id)) > RECIPIENTS // 5, 60, "sending to start"
    )
    restarts = stack.supervisor.children["dispatcher-1"].starts
    stack.supervisor.kill("dispatcher-1")
    await wait_until(
        lambda: stack.supervisor.children["dispatcher-1"].starts > restarts, 10, "the restart"
    )
    assert len(received(stack, campaign_id)) < RECIPIENTS, "killed too late to prove anything"
    await assert_exactly_once_or_unknown(stack, pool, campaign_id, expected)


async def test_pause_stops_every_dispatcher_within_two_seconds_and_resume_sends_the_rest(
    stack: RunningStack, pool: asyncpg.Pool
) -> None:
    campaign_id, expected = await start_campaign(stack, RECIPIENTS, seed=12)
    await wait_until(
        lambda: len(received(stack, campaign_id)) > RECIPIENTS // 10, 60, "sending to start"
    )
    await control(stack, campaign_id, "pause")
    await asyncio.sleep(2.0)  # the allowed delay: what arrives after it is a failure
    at_pause = len(received(stack, campaign_id))
    await asyncio.sleep(1.5)
    assert len(received(stack, campaign_id)) == at_pause, "a dispatcher kept sending"
    assert at_pause < RECIPIENTS

    await control(stack, campaign_id, "resume")
    await assert_exactly_once_or_unknown(stack, pool, campaign_id, expected)
    assert set(received(stack, campaign_id)) == expected  # nobody killed: nothing unknown


async def test_cancel_reports_the_rest_cancelled_and_the_counts_reconcile(
    stack: RunningStack, pool: asyncpg.Pool
) -> None:
    campaign_id, expected = await start_campaign(stack, RECIPIENTS, seed=13)
    await wait_until(
        lambda: len(received(stack, campaign_id)) > RECIPIENTS // 10, 60, "sending to start"
    )
    await control(stack, campaign_id, "cancel")
    stats = await wait_accounted(pool, campaign_id, 60)
    got = received(stack, campaign_id)
    assert max(got.values()) == 1
    assert stats["cancelled"] > 0
    assert stats["sent"] + stats["cancelled"] == RECIPIENTS, dict(stats)
    assert stats["sent"] == len(got)
    statuses = await statuses_by_email(pool, campaign_id)
    assert {e for e, s in statuses.items() if s == "sent"} == set(got)
    status = await pool.fetchval(
        "SELECT status FROM campaigns WHERE id = $1", uuid.UUID(campaign_id)
    )
    assert status == "cancelled"


async def test_two_dispatchers_one_killed_for_good_the_other_takes_over(
    stack: RunningStack, pool: asyncpg.Pool
) -> None:
    campaign_id, expected = await start_campaign(stack, RECIPIENTS, seed=14)
    await wait_until(
        lambda: len(received(stack, campaign_id)) > RECIPIENTS // 5, 60, "sending to start"
    )
    stack.supervisor.restart = False  # dispatcher-1 stays dead
    try:
        stack.supervisor.kill("dispatcher-2")
        assert len(received(stack, campaign_id)) < RECIPIENTS, "killed too late"
        await assert_exactly_once_or_unknown(stack, pool, campaign_id, expected)
        assert stack.supervisor.alive()["dispatcher-2"] is False
    finally:
        stack.supervisor.restart = True
