"""Does faust-streaming do what the reputation guard needs on the local broker (Tansu)?

Not a project dependency: install it beside the project, in a folder of its own, first:

    .venv/bin/pip install -q --target /tmp/faustlib --no-deps faust-streaming==0.15.3 \
        mode-streaming==0.7.1 venusian==3.1.0 croniter==5.0.1 pytz==2026.6 \
        intervaltree==3.2.1 terminaltables==3.1.10 aiohttp-cors==0.8.1 colorlog==6.12.0 \
        click==8.3.3 six==1.17.0
    FAUST_LIB=/tmp/faustlib .venv/bin/python bench/experiments/faust_on_tansu.py

(faust-streaming 0.15.3 wants click<8.4; requirements.lock pins click 8.5.1, hence the
separate folder.) A sole worker counts 200 records in a plain table and in a tumbling
windowed table, is SIGKILLed, restarts, and counts 200 more: at-least-once processing with
a table recovered from its changelog must show >= 400 in both. It prints the time to the
first record after each start and the counts after the restart (docs/design.md, "Reputation
guard", has the figures measured on the project's machine).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from libs.common.embedded import EmbeddedBroker

FAUST_LIB = os.environ.get("FAUST_LIB", "/tmp/faustlib")

WORKER = """
import sys, time
sys.path.insert(0, {lib!r})
import faust
from datetime import timedelta
T0 = time.monotonic()
app = faust.App("guardbench", broker="kafka://{boot}", store="memory://", web_enabled=False,
    broker_session_timeout=6.0, broker_heartbeat_interval=1.0, stream_wait_empty=False,
    topic_partitions=4, processing_guarantee="at_least_once", datadir={datadir!r})
topic = app.topic("records", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=4)
windowed = app.Table("windowed", default=int, partitions=4).tumbling(
    3600, expires=timedelta(hours=2))
n = 0
@app.agent(topic)
async def fold(stream):
    global n
    async for _ in stream:
        n += 1
        counts["c"] += 1
        windowed["c"] += 1
        if n == 1:
            print(f"FIRST {{time.monotonic() - T0:.2f}} s", flush=True)
        if n % 100 == 0:
            print(f"COUNTS {{n}} {{counts['c']}} {{windowed['c'].now()}}", flush=True)
app.main()
"""


async def _create_topic(boot: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("records", 4, 1)])
    finally:
        await admin.close()


async def _produce(boot: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=boot, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(n):
            await producer.send("records", json.dumps({"i": i}).encode(), key=str(i % 7).encode())
        await producer.flush()
    finally:
        await producer.stop()


def _start(script: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, str(script), "worker", "--without-web", "-l", "warn"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text(errors="replace").splitlines() if text in line]
        if lines:
            return lines[-1]
        time.sleep(0.2)
    return f"(no {text!r} within {timeout:.0f} s)"


def main() -> None:
    broker = EmbeddedBroker()
    boot = broker.start()
    work = Path(tempfile.mkdtemp(prefix="faust-bench-"))
    script = work / "worker.py"
    script.write_text(WORKER.format(lib=FAUST_LIB, boot=boot, datadir=str(work / "data")))
    try:
        asyncio.run(_create_topic(boot))
        first = _start(script, work / "first.log")
        asyncio.run(_produce(boot, 200))
        print("first start:", _wait_for(work / "first.log", "FIRST", 60))
        print("first start:", _wait_for(work / "first.log", "COUNTS 200", 60))
        first.kill()  # SIGKILL: no clean leave, no final commit
        first.wait(20)
        second = _start(script, work / "second.log")
        asyncio.run(_produce(boot, 200))
        print("after SIGKILL:", _wait_for(work / "second.log", "FIRST", 180))
        print("after SIGKILL:", _wait_for(work / "second.log", "COUNTS 200", 60))
        print("(COUNTS <records this run> <plain table> <windowed table>; >= 400 expected)")
        second.terminate()
        second.wait(30)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
