"""A background service stops within its shutdown budget, whatever hangs (CI, session 7:
a dispatcher outlived a rolling deploy's grace period, and nothing said where it hung)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from libs.common.service import SHUTDOWN_OVERRUN_EXIT_CODE
from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[3]

# A service whose main ignores the stop event, waiting inside a coroutine of its own.
_WAITS_FOR_EVER = """
import asyncio
from libs.common.service import run_service
from libs.common.settings import Settings

async def wait_for_ever() -> None:
    await asyncio.Event().wait()

async def never_stops(ctx) -> None:
    await wait_for_ever()

asyncio.run(run_service("stuck", never_stops, Settings()))
"""
# A service whose shutdown blocks its event loop (a synchronous call that never returns).
_BLOCKS_ITS_LOOP = """
import asyncio, time
from libs.common.service import run_service
from libs.common.settings import Settings

def block_for_ever() -> None:
    time.sleep(3600)

async def never_stops(ctx) -> None:
    await ctx.stop.wait()
    block_for_ever()

asyncio.run(run_service("stuck", never_stops, Settings()))
"""


@pytest.mark.parametrize(
    ("service", "says"),
    [
        (_WAITS_FOR_EVER, ["never_stops", "wait_for_ever"]),
        (_BLOCKS_ITS_LOOP, ["event loop blocked", "block_for_ever"]),
    ],
    ids=["awaiting", "blocked-loop"],
)
async def test_a_service_that_hangs_on_stop_exits_after_its_budget_saying_where(
    settings: Settings, service: str, says: list[str]
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "MAILFLEET_SHUTDOWN_BUDGET_S": "1",
    }
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-c", service, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert service.stdout is not None
    output = b""
    try:
        async with asyncio.timeout(60):
            while b"service started" not in output:
                line = await service.stdout.readline()
                assert line, f"the service ended before it started:\n{output.decode()}"
                output += line
        service.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            output += await service.stdout.read()
            code = await service.wait()
    finally:
        if service.returncode is None:
            service.kill()
            await service.wait()
    text = output.decode()
    assert code == SHUTDOWN_OVERRUN_EXIT_CODE, text
    assert "shutdown overran its budget" in text
    assert all(part in text for part in says), f"the log does not say where:\n{text}"
