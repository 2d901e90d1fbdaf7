"""Issue 11 item 2: two dispatchers on a slow SMTP relay (aiosmtpd, 50 ms a message, 8
connections each); a third joins mid-batch and forces a rebalance. No address may arrive
twice, no batch may be finished by two owners (each `batch finished` log line names one
owner's fenced `finish`), and nobody ends `unknown`: the batch's new owner waits while the
former owner's lease is renewed, then replays its result.

MAILFLEET_E2E_LEDGER_SMTP_RECIPIENTS sets the campaign size (2,400 by default).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import asyncpg
import orjson
import pytest

from libs.common.settings import Settings
from libs.common.supervisor import ChildSpec
from services.dispatcher.tests.support import SlowRelay, slow_relay_server
from tests.e2e.harness import start_stack
from tests.e2e.test_chaos import (
    assert_ledger_counts_reconcile,
    report_ledger_case,
    start_provider_campaign,
    wait_finished,
)
from tests.e2e.test_dispatcher_faults import wait_until

pytestmark = pytest.mark.timeout(400)

SMTP_RECIPIENTS = int(os.environ.get("MAILFLEET_E2E_LEDGER_SMTP_RECIPIENTS", "2400"))
WAIT_S = max(150.0, SMTP_RECIPIENTS / 100)


@pytest.fixture(scope="module")
def slow_relay() -> Iterator[tuple[int, SlowRelay]]:
    with slow_relay_server() as server:
        yield server


async def test_a_dispatcher_joining_mid_batch_on_a_slow_relay_sends_nobody_twice(
    settings: Settings,
    pool: asyncpg.Pool,
    slow_relay: tuple[int, SlowRelay],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port, relay = slow_relay
    log_dir = tmp_path_factory.mktemp("chaos-ledger-smtp-logs")
    stack = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        log_dir,
        dispatchers=2,
        keep_messages=0,
        env={
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_MAX_CONNECTIONS": "8",
            # The test relay speaks plain SMTP on loopback (TLS is the default).
            "SMTP_TLS": "none",
            "MAILFLEET_BATCH_SIZE": "200",
            "MAILFLEET_LEDGER_LEASE_S": "8",
        },
    )
    started = time.monotonic()
    try:
        campaign_id, expected = await start_provider_campaign(
            stack, SMTP_RECIPIENTS, seed=64, provider="smtp"
        )
        await wait_until(lambda: len(relay.received) > SMTP_RECIPIENTS // 5, 90, "sending")
        await stack.supervisor.start([ChildSpec("dispatcher-3", "dispatcher")])
        assert len(relay.received) < SMTP_RECIPIENTS, "joined too late to prove anything"
        stats = await wait_finished(pool, campaign_id, WAIT_S)
        report_ledger_case("slow-relay-rebalance", campaign_id, stats, time.monotonic() - started)
    finally:
        await stack.stop()
    assert max(relay.received.values()) == 1, "an address arrived twice"
    assert set(relay.received) == expected
    errors = await pool.fetch(
        "SELECT DISTINCT error FROM deliveries WHERE campaign_id = $1 AND status <> 'sent'",
        uuid.UUID(campaign_id),
    )
    assert stats["status"] == "completed"
    assert stats["sent"] == SMTP_RECIPIENTS and stats["unknown"] == 0, (stats, errors)
    assert_ledger_counts_reconcile(stats, SMTP_RECIPIENTS)
    finished = Counter(
        record["batch_id"]
        for path in log_dir.glob("dispatcher-*.log")
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("{")
        and (record := orjson.loads(line)).get("event") == "batch finished"
        # Only this campaign's: the shared database may hold another test's campaign still
        # sending, whose batches these dispatchers take too.
        and str(record.get("batch_id", "")).startswith(f"{campaign_id}:")
    )
    assert finished and max(finished.values()) == 1, "a batch was finished by two owners"
    batches = await pool.fetchval(
        "SELECT count(*) FROM send_ledger WHERE campaign_id = $1 AND state = 'done'",
        uuid.UUID(campaign_id),
    )
    assert len(finished) == batches
