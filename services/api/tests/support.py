"""Helpers for the API tests (importable from test modules, unlike conftest)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from libs.common.settings import Settings

# Small, so that the 413 path is cheap to test.
UPLOAD_LIMIT = 4096


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    keys: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@asynccontextmanager
async def running(app: FastAPI, **transport: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and a client that talks to it in process."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, **transport), base_url="http://api.test"
        ) as client:
            yield client


async def find_event(
    settings: Settings,
    topic: str,
    matches: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
) -> tuple[bytes | None, dict[str, Any]]:
    """Read `topic` from the start (no group: nothing to join or commit) until an event
    matches; returns its key and value."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = consumer.partitions_for_topic(topic) or set()
        assignment = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        value = orjson.loads(record.value or b"null")
                    except orjson.JSONDecodeError:
                        continue  # other tests publish malformed events on purpose (DLQ)
                    if isinstance(value, dict) and matches(value):
                        return record.key, value
        raise AssertionError(f"no matching event on {topic} within {timeout} s")
    finally:
        await consumer.stop()


@contextmanager
def live_server(app: FastAPI, what: str = "the app") -> Iterator[str]:
    """`app` served by uvicorn on a free port in a thread (for tools that speak HTTP, like
    schemathesis); yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Without it, each keep-alive request waits ~40 ms for a delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), f"{what} did not start"
        assert time.monotonic() < deadline, f"{what} did not start within 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings of the schemathesis runs: bounded, repeatable, no example store."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
