"""The whole system as separate processes, for end-to-end tests and benchmarks.

`start_stack` runs api, edge, importer, scheduler, dispatcher(s) and tracker with the
supervisor that `mailfleet dev` uses, against a given broker and database, sending to an
in-process sink (a SendGrid v3-compatible server) so that tests can count what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller

from libs.common.cli import generate_key
from libs.common.embedded import free_port, wait_for_port
from libs.common.events import Topic
from libs.common.supervisor import ChildSpec, Supervisor
from libs.mail.sink import SinkHandle, start_sink

TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class RunningStack:
    supervisor: Supervisor
    sink: SinkHandle
    api_url: str
    api_key: str
    edge_url: str = ""

    def client(self) -> ApiClient:
        return ApiClient(self.api_url, self.api_key)

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.sink.stop()


async def start_stack(
    database_url: str,
    kafka_bootstrap: str,
    log_dir: Path,
    *,
    dispatchers: int = 1,
    env: Mapping[str, str] | None = None,
    keep_messages: int | None = None,
    metrics_ports: Mapping[str, int] | None = None,
    extra_children: Sequence[str] = (),
    message_dispatchers: int = 0,
) -> RunningStack:
    """`metrics_ports` maps child names ("importer", "dispatcher-1", ...) to the
    MAILFLEET_METRICS_PORT each serves /metrics on (none by default). `extra_children`
    names services started besides the usual ones (e.g. "bounces"). `message_dispatchers`:
    dispatchers of their own for transactional messages (the others then send batches only)."""
    sink = await start_sink(keep_messages=keep_messages)
    api_port, edge_port = free_port(), free_port()
    api_key = generate_key()
    base_env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MAILFLEET_API_PORT": str(api_port),
        "MAILFLEET_EDGE_PORT": str(edge_port),
        "MAILFLEET_BOOTSTRAP_API_KEY": api_key,
        "MAILFLEET_SECRET_KEY": "e2e-secret",
        "MAILFLEET_DEFAULT_PROVIDER": "sink",
        "MAILFLEET_SINK_URL": sink.url,
        "MAILFLEET_SCHEDULER_TICK_SECONDS": "0.2",
        "MAILFLEET_CHILD": "1",
        # Its own dispatcher group per stack: Tansu holds a group's joins for long after an
        # earlier stack's members were killed (a later stack then received no batch at all).
        "MAILFLEET_DISPATCHER_GROUP": f"dispatcher-{uuid.uuid4().hex[:8]}",
        # Tansu holds a consumer's first join for half its session timeout (3 s at the
        # default 6 s): every service start, restart and rebalance of a stack waits that.
        "MAILFLEET_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "MAILFLEET_KAFKA_HEARTBEAT_MS": "500",
        **(env or {}),
    }
    # A stack starts quiet: no earlier test's campaign left for its scheduler to re-emit,
    await settle_earlier_campaigns(database_url)
    # ... and its dispatcher group starting where the topics end now: a new group would
    # otherwise begin at the first batch and message of the test session and work through
    # every earlier test's (replays, and batches whose test faked their ledger rows), late
    # tests minutes behind.
    dispatcher_group = base_env["MAILFLEET_DISPATCHER_GROUP"]
    await start_group_at_end(kafka_bootstrap, dispatcher_group, Topic.BATCH_READY)
    await start_group_at_end(
        kafka_bootstrap, f"{dispatcher_group}.messages", Topic.MESSAGE_REQUESTED
    )
    services = ("api", "edge", "importer", "scheduler", "tracker")
    specs = [ChildSpec(name, name) for name in services]
    specs += [ChildSpec(f"dispatcher-{n + 1}", "dispatcher") for n in range(dispatchers)]
    if message_dispatchers:
        for spec in specs[len(services) :]:
            spec.env["MAILFLEET_DISPATCHER_LANES"] = "batches"
        specs += [
            ChildSpec(
                f"dispatcher-tx-{n + 1}", "dispatcher", {"MAILFLEET_DISPATCHER_LANES": "messages"}
            )
            for n in range(message_dispatchers)
        ]
    specs += [ChildSpec(name, name) for name in extra_children]
    for spec in specs:
        if metrics_ports and spec.name in metrics_ports:
            spec.env["MAILFLEET_METRICS_PORT"] = str(metrics_ports[spec.name])
    supervisor = Supervisor(base_env, log_dir)
    await supervisor.start(specs)
    try:
        for port in (api_port, edge_port):
            await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60)
    except TimeoutError:
        await supervisor.stop()
        await sink.stop()
        raise RuntimeError("API or edge did not start:\n" + supervisor.tail_logs()) from None
    return RunningStack(
        supervisor,
        sink,
        f"http://127.0.0.1:{api_port}",
        api_key,
        edge_url=f"http://127.0.0.1:{edge_port}",
    )


async def start_group_at_end(bootstrap: str, group_id: str, topic: Topic) -> None:
    """Commit, for a consumer group that has not read yet, the present end of every partition
    of `topic`. The end is the high watermark of a fetch: Tansu's end-offset answers
    undercount (machine-notes), and a group that starts early only reads a few events again."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
        fetch_max_wait_ms=50, max_partition_fetch_bytes=1024,
    )  # fmt: skip
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's metadata, for the partition count
        partitions = [
            TopicPartition(topic.value, p) for p in consumer.partitions_for_topic(topic.value) or ()
        ]
        if not partitions:
            return  # the services create the topic: there is no history to skip
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 10
        while len(ends) < len(partitions) and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)
            ends.update(
                (tp, end) for tp in partitions if (end := consumer.highwater(tp)) is not None
            )
        if ends:
            await consumer.commit(ends)
    finally:
        await consumer.stop()


async def settle_earlier_campaigns(database_url: str) -> None:
    """Cancel every campaign an earlier test left unfinished and mark its batches accounted
    for: a new stack's scheduler re-emits every batch not accounted for when it starts, so a
    test would otherwise wait behind batches of other tests' campaigns (paused by a guard,
    or with ledger rows a unit test faked, which a dispatcher refuses five times)."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE campaigns SET status = 'cancelled'"
                " WHERE status IN ('scheduled', 'in_progress', 'paused')"
            )
            await conn.execute(
                "UPDATE batch_plans SET accounted_at = now() WHERE accounted_at IS NULL"
            )
    finally:
        await conn.close()


class ApiClient:
    """The calls an admin makes, as the README shows them with curl."""

    def __init__(self, api_url: str, api_key: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"{api_url}/api/v1",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _json(self, method: str, url: str, expect: int, **kwargs: Any) -> dict[str, Any]:
        response = await self.http.request(method, url, **kwargs)
        assert response.status_code == expect, (
            f"{method} {url}: {response.status_code} {response.text}"
        )
        body: dict[str, Any] = response.json()
        return body

    async def create_list(self, name: str) -> str:
        return str((await self._json("POST", "/lists", 201, json={"name": name}))["id"])

    async def import_csv(self, list_id: str, content: bytes, filename: str = "people.csv") -> str:
        body = await self._json(
            "POST",
            f"/lists/{list_id}/imports",
            202,
            files={"file": (filename, content, "text/csv")},
        )
        return str(body["id"])

    async def wait_import(self, import_id: str, timeout: float = 120) -> dict[str, Any]:
        return await self._wait(f"/imports/{import_id}", {"completed", "failed"}, timeout)

    async def create_campaign(self, **fields: Any) -> str:
        return str((await self._json("POST", "/campaigns", 201, json=fields))["id"])

    async def schedule(self, campaign_id: str, **when: Any) -> dict[str, Any]:
        return await self._json("POST", f"/campaigns/{campaign_id}/schedule", 200, json=when)

    async def control(self, campaign_id: str, action: str) -> dict[str, Any]:
        """pause, resume or cancel."""
        return await self._json("POST", f"/campaigns/{campaign_id}/{action}", 200)

    async def campaign(self, campaign_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/campaigns/{campaign_id}", 200)

    async def wait_campaign(self, campaign_id: str, timeout: float = 300) -> dict[str, Any]:
        return await self._wait(f"/campaigns/{campaign_id}", TERMINAL, timeout)

    async def wait_campaign_status(
        self, campaign_id: str, statuses: set[str], timeout: float = 300
    ) -> dict[str, Any]:
        """The campaign once its status is one of `statuses` (paused, say)."""
        return await self._wait(f"/campaigns/{campaign_id}", statuses, timeout)

    async def _wait(self, url: str, done: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = await self._json("GET", url, 200)
            if body["status"] in done:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} still {body['status']} after {timeout:.0f} s: {body}")
            await asyncio.sleep(0.2)  # polling a remote status: nothing to wait on locally


class ThrowawayPostgres:
    """A PostgreSQL 15 cluster of the test's own, in a temporary folder, that a test may crash.

    `crash()` is `pg_ctl -m immediate stop`: clients see their connections cut, and the next
    start runs crash recovery, as after a power loss. The cluster runs as the `postgres`
    user (initdb refuses root), over TCP on a free port.
    """

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mailfleet-pg-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.port = free_port()

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(  # noqa: S603 - fixed tool paths, no shell
            ["runuser", "-u", "postgres", "--", str(self.BIN / tool), *args],  # noqa: S607
            check=True,
            capture_output=True,
        )

    def init(self) -> str:
        self._as_postgres(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        self.start()
        return self.admin_dsn

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.folder} -F -c max_connections=200"
        self._as_postgres(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "start",
        )

    def crash(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


async def plain_campaign(api: ApiClient, name: str, recipients: int) -> str:
    """A list of `recipients` made-up addresses, imported, and a draft campaign to it."""
    list_id = await api.create_list(name)
    tag = uuid.uuid4().hex[:6]
    csv = "email,first_name\n" + "".join(
        f"p{i}-{tag}@{name}.example.com,P{i}\n" for i in range(recipients)
    )
    job = await api.wait_import(await api.import_csv(list_id, csv.encode()), timeout=600)
    assert job["rows_imported"] == recipients, job
    return await api.create_campaign(
        name=name,
        subject="Hi {{ first_name }}",
        html="<p>x</p>",
        from_email="n@example.com",
        list_id=list_id,
    )


@contextlib.contextmanager
def smtp_server(handler: Any) -> Iterator[int]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 with `handler`; yields its port."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
