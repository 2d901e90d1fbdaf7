"""Chaos cases of issue 11, each with every service as its own process (tests/e2e/harness.py).

Each case asserts 0 duplicates at the sink, exact counts, and the final status, and prints
the recipients that ended `unknown` and the time the campaign took (run with `-s`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from libs.common import db
from libs.common.embedded import EmbeddedBroker, create_database, free_port
from tests.e2e.harness import ThrowawayPostgres, plain_campaign, start_stack

pytestmark = pytest.mark.timeout(600)

# 5,000 by default: at 250/s the campaign lasts about 20 s without faults.
OUTAGE_RECIPIENTS = int(os.environ.get("MAILFLEET_E2E_CHAOS_RECIPIENTS", "5000"))
OUTAGE_SECONDS = 20.0


@pytest.fixture
async def crashable_postgres() -> AsyncIterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    await asyncio.to_thread(server.init)
    yield server
    await asyncio.to_thread(server.remove)


async def readyz(port: int) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code


async def test_postgres_crashed_for_20_seconds_mid_campaign_no_service_exits_nobody_unknown(
    crashable_postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    """Issue 11 item 4. Before: every service exited (the supervisor restarted them) and
    recipients whose result the dispatcher could not write ended `unknown`."""
    dsn = await create_database(crashable_postgres.admin_dsn, "mailfleet_chaos")
    await db.migrate(dsn)
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    bootstrap = broker.start()
    ops_port = free_port()
    stack = await start_stack(
        dsn,
        bootstrap,
        tmp_path / "logs",
        dispatchers=2,
        keep_messages=0,
        metrics_ports={"dispatcher-1": ops_port},
        env={
            "MAILFLEET_SINK_RATE_PER_SEC": str(OUTAGE_RECIPIENTS // 20),
            "MAILFLEET_BATCH_SIZE": "100",
            "MAILFLEET_DB_POOL_SIZE": "4",
        },
    )
    api = stack.client()
    try:
        campaign_id = await plain_campaign(api, "pg-chaos", OUTAGE_RECIPIENTS)
        starts = {name: child.starts for name, child in stack.supervisor.children.items()}
        await api.schedule(campaign_id)
        began = time.monotonic()

        def received() -> dict[str, int]:
            return {e: n for (c, e), n in stack.sink.state.received.items() if c == campaign_id}

        deadline = time.monotonic() + 120
        while len(received()) < OUTAGE_RECIPIENTS // 5:
            assert time.monotonic() < deadline, "sending did not start"
            await asyncio.sleep(0.1)  # the sink is in this process: nothing to wait on
        # Accepts that land while the database is down: their results cannot be written.
        served = stack.sink.state.faults_served
        stack.sink.inject_fault(202, count=4, delay_s=3.0)
        while stack.sink.state.faults_served < served + 2:
            assert time.monotonic() < deadline, "no send reached the sink"
            await asyncio.sleep(0.02)
        await asyncio.to_thread(crashable_postgres.crash)
        crashed_at = time.monotonic()
        # The outage's length is the fault itself; /readyz is looked at while it lasts.
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        ready_during_outage = await readyz(ops_port)
        api_during_outage = (await api.http.get(f"/campaigns/{campaign_id}")).status_code
        await asyncio.sleep(OUTAGE_SECONDS - (time.monotonic() - crashed_at))
        assert len(received()) < OUTAGE_RECIPIENTS, "the crash came too late to prove anything"
        await asyncio.to_thread(crashable_postgres.start)

        done = await api.wait_campaign(campaign_id, timeout=300)
        took = time.monotonic() - began
        ready_after = await readyz(ops_port)
        restarts = {
            name: child.starts - starts[name] for name, child in stack.supervisor.children.items()
        }
        got = received()
    finally:
        await api.close()
        await stack.stop()
        broker.stop()

    stats = done["stats"]
    print(  # noqa: T201 - the figures the issue asks for
        f"\nchaos postgres-crash: recipients={OUTAGE_RECIPIENTS} outage={OUTAGE_SECONDS:.0f}s "
        f"unknown={stats['unknown']} time_to_complete={took:.1f}s restarts={restarts}"
    )
    assert restarts == dict.fromkeys(restarts, 0), f"a service exited: {restarts}"
    assert ready_during_outage == 503
    assert api_during_outage == 503  # a retryable answer, not an internal error
    assert ready_after == 200
    assert done["status"] == "completed", done
    assert max(got.values()) == 1, "an address was mailed twice"
    assert stats["unknown"] == 0, stats
    assert stats["sent"] == len(got) == OUTAGE_RECIPIENTS, stats
    total = sum(stats[k] for k in ("sent", "unknown", "failed", "suppressed", "cancelled"))
    assert total == OUTAGE_RECIPIENTS and stats["pending"] == 0, stats
