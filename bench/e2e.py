"""End-to-end benchmark: one campaign through the whole system to the local sink.

    .venv/bin/python bench/e2e.py --recipients 200000 [--dispatchers 2] [--provider smtp]

Starts its own broker (Tansu) and a fresh database (the machine's PostgreSQL, or an
embedded one), runs every service as its own process, imports the audience from a CSV
through the API, sends the campaign, and prints emails/s end to end and per stage (from
the timestamps each stage writes in PostgreSQL), and the CPU seconds each process used per
email. Baselines, measured in the same run against a sink of the same kind:

- the ceiling: the same recipients posted straight to the sink as SendGrid requests of
  1,000 personalizations, no Kafka, no database;
- the peer: the architecture mailfleet replaces, Celery workers (one per core) on a Redis
  of their own (the machine's redis-server), each task sending a 200-recipient batch of the
  same CSV through the `sendgrid` client after a status check in Redis
  (`bench/peer/celery_sendgrid.py`, in `.venv-celery`: `make bench-celery`; skipped with a
  message when that is missing, or with `--no-peer`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.infra import (  # noqa: E402
    BenchInfrastructure,
    machine,
    peak_rss,
    print_footprint,
    table_bytes,
)
from libs.common.embedded import free_port, wait_for_port  # noqa: E402
from libs.mail.sink import start_sink  # noqa: E402
from tests.e2e.harness import start_stack  # noqa: E402

BASELINE_MAX_RECIPIENTS = 1_000_000
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024


def make_csv(n: int) -> bytes:
    lines = ["email,first_name,city"]
    lines += [f"user{i}@bench{i % 97}.example.com,Name{i},City{i % 13}" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


async def sink_baseline(n: int, concurrency: int = 8) -> float:
    """emails/s of bare SendGrid-style posts (1,000 personalizations each) to a fresh sink."""
    sink = await start_sink(keep_messages=1000)
    try:
        requests = [
            {
                "personalizations": [
                    {
                        "to": [{"email": f"user{i}@bench.example.com"}],
                        "substitutions": {"-n-": f"N{i}"},
                    }
                    for i in range(start, min(start + 1000, n))
                ],
                "from": {"email": "news@example.com"},
                "subject": "Hello -n-",
                "content": [{"type": "text/html", "value": "<p>Hi -n-</p>"}],
            }
            for start in range(0, n, 1000)
        ]
        queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as http:

            async def worker() -> None:
                while not queue.empty():
                    payload = queue.get_nowait()
                    async with http.post(f"{sink.url}/v3/mail/send", json=payload) as resp:
                        assert resp.status == 202, await resp.text()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        assert sink.stats()["messages"] == n
        return n / elapsed
    finally:
        await sink.stop()


async def smtp_baseline(port: int, n: int, connections: int = 8) -> float:
    """msg/s of bare aiosmtplib (fixed small messages) to the same aiosmtpd sink."""
    from email.message import EmailMessage

    import aiosmtplib

    todo = iter(range(n))

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await client.connect()
        for i in todo:
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = (
                "a@example.com",
                f"b{i}@x.example",
                "Hi",
            )
            message.set_content("hello")
            message.add_alternative("<p>hello</p>", subtype="html")
            await client.send_message(message)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return n / (time.perf_counter() - started)


ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-celery" / "bin" / "python"
REDIS_SERVER = "/usr/bin/redis-server"
IDLE_SAMPLE_S = 5.0


async def celery_peer(csv_path: Path, n: int) -> tuple[float | None, str]:
    """emails/s of the Celery + sendgrid-client peer on a fresh sink, or (None, why not)."""
    if not PEER_PYTHON.exists():
        return None, f"skipped: {PEER_PYTHON.parent.parent.name} is missing (make bench-celery)"
    if not Path(REDIS_SERVER).exists():
        return None, f"skipped: {REDIS_SERVER} is missing (apt-get install redis-server)"
    port = free_port()
    redis_server = await asyncio.create_subprocess_exec(
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    sink = await start_sink(keep_messages=1000)
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30)
        url = f"redis://127.0.0.1:{port}/0"
        driver = await asyncio.create_subprocess_exec(
            str(PEER_PYTHON), str(ROOT / "bench" / "peer" / "celery_sendgrid.py"),
            "--redis-url", url, "--sink-url", sink.url, "--csv", str(csv_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PEER_REDIS_URL": url, "PEER_SINK_URL": sink.url},
        )  # fmt: skip
        out, err = await driver.communicate()
        if driver.returncode != 0:
            raise RuntimeError(f"the Celery peer failed:\n{err.decode()[-3000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        stats = sink.stats()
        # The same check as mailfleet's run: every recipient once.
        assert stats["messages"] == n and stats["duplicates"] == 0, stats
        return float(result["emails_per_s"]), f"{result['workers']} Celery workers"
    finally:
        await sink.stop()
        redis_server.terminate()
        await redis_server.wait()


class CountingSmtpHandler:
    """aiosmtpd handler that parses nothing and counts every accepted recipient."""

    def __init__(self) -> None:
        self.received: collections.Counter[str] = collections.Counter()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
        for rcpt in envelope.rcpt_tos:
            self.received[rcpt.lower()] += 1
        return "250 OK"


class CpuMeter:
    """CPU seconds (user + system) each part of the run used between `start` and `stop`:
    every service process, the broker, the PostgreSQL backends of the run's database, and
    this process (the sink, the API client). Wall time on a shared machine says little;
    CPU seconds per recipient say where the work goes."""

    def __init__(self, processes: dict[str, int], database: str) -> None:
        self._pids = processes
        self._database = database
        self._start: dict[str, float] = {}
        self._seen_pg: dict[int, float] = {}

    def _postgres(self) -> dict[int, float]:
        used = {}
        for proc in psutil.process_iter(["cmdline", "name"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if cmd.startswith("postgres:") and f" {self._database} " in cmd:
                    t = proc.cpu_times()
                    used[proc.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return used

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, pid in self._pids.items():
            try:
                t = psutil.Process(pid).cpu_times()
                out[name] = t.user + t.system
            except psutil.NoSuchProcess:
                out[name] = 0.0
        return out

    def start(self) -> None:
        self._start = self._sample()
        self._seen_pg = self._postgres()

    def stop(self) -> dict[str, float]:
        now = self._sample()
        used = {name: now[name] - self._start.get(name, 0.0) for name in now}
        pg = self._postgres()
        # A backend that ended meanwhile is not counted (pools keep theirs for the run).
        used["postgresql (backends)"] = sum(
            t - self._seen_pg.get(pid, 0.0) for pid, t in pg.items()
        )
        return used


async def stage_report(
    dsn: str, campaign_id: str, import_id: str
) -> list[tuple[str, float, float]]:
    """(stage, seconds, rows/s) from the timestamps each service writes."""
    conn = await asyncpg.connect(dsn)
    try:
        cid = uuid.UUID(campaign_id)
        imp = await conn.fetchrow(
            "SELECT rows_total, started_at, finished_at FROM import_jobs WHERE id = $1",
            uuid.UUID(import_id),
        )
        camp = await conn.fetchrow(
            "SELECT started_at, finished_at FROM campaigns WHERE id = $1", cid
        )
        emit = await conn.fetchrow(
            "SELECT max(last_emitted_at) AS last FROM batch_plans WHERE campaign_id = $1", cid
        )
        send = await conn.fetchrow(
            "SELECT min(started_at) AS first, max(finished_at) AS last FROM send_ledger WHERE campaign_id = $1",
            cid,
        )
        fold = await conn.fetchrow(
            "SELECT min(folded_at) AS first, max(folded_at) AS last, sum(recipients) AS n FROM tracker_batches WHERE campaign_id = $1",
            cid,
        )
    finally:
        await conn.close()
    n = int(fold["n"] or 0)

    def span(a: object, b: object) -> float:
        return max((b - a).total_seconds(), 1e-6)  # type: ignore[operator]

    rows = [
        (
            "import (parse, validate, COPY)",
            span(imp["started_at"], imp["finished_at"]),
            imp["rows_total"],
        ),
        ("scheduler (plan + emit batch.ready)", span(camp["started_at"], emit["last"]), n),
        ("  of which: campaign start -> first send", span(camp["started_at"], send["first"]), 0),
        ("dispatcher (render + send, all instances)", span(send["first"], send["last"]), n),
        ("tracker (fold results into PostgreSQL)", span(fold["first"], fold["last"]), n),
        ("campaign start -> completed", span(camp["started_at"], camp["finished_at"]), n),
    ]
    return [(name, secs, count / secs) for name, secs, count in rows]


async def run(recipients: int, dispatchers: int, provider: str, peer: bool) -> None:
    print(f"machine: {machine()}")
    print(f"recipients: {recipients:,}, dispatchers: {dispatchers}, provider: {provider}")
    work = Path(tempfile.mkdtemp(prefix="mailfleet-bench-"))
    infra = BenchInfrastructure(work)
    bootstrap, dsn = await infra.start()

    # The ceiling is a rate: a million posts measure it as well as ten, and ten million
    # prepared requests would hold ~5 GB in this process.
    baseline = await sink_baseline(min(recipients, BASELINE_MAX_RECIPIENTS))
    baseline_name = "baseline: bare posts to the sink"
    csv = make_csv(recipients)
    peer_rate: float | None = None
    peer_note = "skipped: --no-peer"
    if provider != "sink":
        peer_note = "skipped: the peer sends through the SendGrid API (--provider sink)"
    elif peer:
        csv_path = work / "recipients.csv"
        csv_path.write_bytes(csv)
        peer_rate, peer_note = await celery_peer(csv_path, recipients)
    env = {"MAILFLEET_LOG_LEVEL": "WARNING"}
    if len(csv) > DEFAULT_MAX_UPLOAD_BYTES:
        # 10M rows are ~450 MB: above the default upload limit, which is a setting.
        env["MAILFLEET_MAX_UPLOAD_BYTES"] = str(len(csv) + 1024 * 1024)
    smtp_handler, controller = None, None
    if provider == "smtp":
        from aiosmtpd.controller import Controller

        smtp_handler = CountingSmtpHandler()
        controller = Controller(smtp_handler, hostname="127.0.0.1", port=free_port())
        controller.start()
        env.update(
            {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(controller.port), "SMTP_TLS": "none"}
        )
        baseline_n = min(recipients, 3000)
        baseline = await smtp_baseline(controller.port, baseline_n)
        smtp_handler.received.clear()
        baseline_name = "baseline: bare aiosmtplib to the same aiosmtpd"
    tracker_metrics = free_port()
    stack = await start_stack(
        dsn,
        bootstrap,
        work / "logs",
        dispatchers=dispatchers,
        keep_messages=1000,
        env=env,
        metrics_ports={"tracker": tracker_metrics},
    )
    api = stack.client()
    try:
        list_id = await api.create_list("bench")
        import_id = await api.import_csv(list_id, csv)
        job = await api.wait_import(import_id, timeout=600)
        assert job["rows_imported"] == recipients, job
        campaign_id = await api.create_campaign(
            name="bench",
            subject="Hello {{ first_name }}",
            html="<p>Hi {{ first_name }} from {{ city }}</p>",
            from_email="news@example.com",
            provider=provider,
            list_id=list_id,
        )
        processes = {
            name: child.process.pid
            for name, child in stack.supervisor.children.items()
            if child.process is not None
        }
        if infra.broker.process is not None:
            processes["broker (tansu)"] = infra.broker.process.pid
        processes["bench process (sink, API client)"] = os.getpid()
        meter = CpuMeter(processes, dsn.rsplit("/", 1)[-1].split("?")[0])
        # What the stack burns idle (polls, heartbeats, lease and status refreshes) grows
        # with the run's length, not with its emails: measured first, shown apart.
        meter.start()
        await asyncio.sleep(IDLE_SAMPLE_S)
        idle = {name: secs / IDLE_SAMPLE_S for name, secs in meter.stop().items()}
        meter.start()
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        await api.schedule(campaign_id)
        done = await api.wait_campaign(campaign_id, timeout=1800)
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
        load_after = os.getloadavg()[0]
        assert done["status"] == "completed", done
        if smtp_handler is not None:
            got = smtp_handler.received
            assert len(got) == recipients and max(got.values()) == 1, (len(got), done["stats"])
        else:
            stats = stack.sink.stats()
            assert stats["duplicates"] == 0 and stats["messages"] == recipients, stats
        print()
        print(f"{'stage':45} {'seconds':>9} {'rows/s':>10}")
        for name, secs, rate in await stage_report(dsn, campaign_id, import_id):
            print(f"{name:45} {secs:9.2f} {f'{rate:,.0f}' if rate else '':>10}")
        print(
            f"{'end to end (schedule request -> completed)':45} {elapsed:9.2f} {recipients / elapsed:10,.0f}"
        )
        print(f"{baseline_name:45} {'':>9} {baseline:10,.0f}")
        peer_name = "peer: Celery + Redis + sendgrid client"
        if peer_rate is not None:
            print(f"{peer_name:45} {recipients / peer_rate:9.2f} {peer_rate:10,.0f}")
        else:
            print(f"{peer_name:45} {peer_note}")
        print(
            f"\n{'CPU, schedule -> completed':45} {'seconds':>9} {'us/email':>10}"
            f" {'idle/s':>8} {'net us/email':>13}"
        )
        net: dict[str, float] = {}
        for name, secs in sorted(cpu.items(), key=lambda kv: -kv[1]):
            net[name] = max(0.0, secs - idle.get(name, 0.0) * elapsed)
            if secs >= 0.05:
                print(
                    f"{name:45} {secs:9.2f} {secs / recipients * 1e6:10.1f}"
                    f" {idle.get(name, 0.0):8.3f} {net[name] / recipients * 1e6:13.1f}"
                )
        total, total_net = sum(cpu.values()), sum(net.values())
        print(
            f"{'total':45} {total:9.2f} {total / recipients * 1e6:10.1f}"
            f" {sum(idle.values()):8.3f} {total_net / recipients * 1e6:13.1f}"
        )
        print("(net: less the CPU the same process used per second while idle, before the run)")
        print(f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after")
        print(await tracker_folds(tracker_metrics))
        rate = recipients / elapsed
        print(
            f"\nend-to-end emails/s = {rate:,.0f} "
            f"({rate / baseline:.0%} of the bare-post ceiling"
            + (f", {rate / peer_rate:.2f}x the Celery peer ({peer_note})" if peer_rate else "")
            + ")"
        )
        print_footprint(peak_rss(stack.supervisor.pids()), await table_bytes(dsn), recipients)
    finally:
        await api.close()
        await stack.stop()
        if controller is not None:
            controller.stop()
        await infra.drop_database()
        infra.stop()


async def tracker_folds(port: int) -> str:
    """How many transactions the tracker folded the results in (fewer, larger folds cost
    less per email), from its /metrics."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as answer:
            text = await answer.text()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    folds = sum(
        s.value
        for s in samples
        if s.name == "mailfleet_tracker_fold_seconds_count"
        and s.labels.get("topic") == "delivery.result"
    )
    batches = sum(s.value for s in samples if s.name == "mailfleet_tracker_batches_folded_total")
    per_fold = batches / folds if folds else 0.0
    return f"tracker: {batches:,.0f} batch results in {folds:,.0f} folds ({per_fold:.1f} per fold)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--provider", choices=["sink", "smtp"], default="sink")
    parser.add_argument(
        "--no-peer", dest="peer", action="store_false", help="skip the Celery peer baseline"
    )
    args = parser.parse_args()
    asyncio.run(run(args.recipients, args.dispatchers, args.provider, args.peer))


if __name__ == "__main__":
    main()
