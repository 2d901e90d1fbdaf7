"""Shared fixtures: real services started once per test session.

- `kafka_bootstrap`: a Tansu broker over TCP (or $MAILFLEET_TEST_KAFKA).
- `database_url`: a fresh database, migrated, on the machine's PostgreSQL at 127.0.0.1:5432
  (or $MAILFLEET_TEST_DATABASE_URL); an embedded PostgreSQL when neither is reachable.
- `settings`: a Settings object pointing at both.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from libs.common import db
from libs.common.embedded import EmbeddedBroker, EmbeddedPostgres, can_connect, create_database
from libs.common.events import Event, Topic
from libs.common.kafka import ensure_topics
from libs.common.settings import Settings

EventT = TypeVar("EventT", bound=Event)

MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("MAILFLEET_TEST_KAFKA")
    if external:
        yield external
        return
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    yield broker.start()
    broker.stop()


@pytest.fixture(scope="session")
def postgres_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    candidate = os.environ.get("MAILFLEET_TEST_DATABASE_URL", MACHINE_POSTGRES)
    if asyncio.run(can_connect(candidate)):
        yield candidate
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_admin_dsn: str) -> str:
    name = f"mailfleet_test_{uuid.uuid4().hex[:10]}"
    dsn = asyncio.run(create_database(postgres_admin_dsn, name))
    asyncio.run(db.migrate(dsn))
    return dsn


def make_settings(database_url: str, kafka_bootstrap: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka_bootstrap,
        "secret_key": "test-secret",
        # Short group sessions: Tansu holds a consumer's first join for half its session
        # timeout (1.5 s rather than the default's 3 s for each consumer a test starts),
        # and a killed member's partitions move to the others within seconds.
        "kafka_session_timeout_ms": 3000,
        "kafka_heartbeat_interval_ms": 500,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(database_url: str, kafka_bootstrap: str) -> Settings:
    s = make_settings(database_url, kafka_bootstrap)
    asyncio.run(ensure_topics(s))
    return s


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, max_size=5)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent


async def first_events(
    bootstrap: str,
    topic: Topic,
    model: type[EventT],
    matches: Callable[[EventT], bool],
    timeout: float = 30.0,
) -> list[EventT]:
    """Read `topic` from its start (no group) until some events match; those of the first
    fetch that had any (an empty list after `timeout`)."""
    consumer = AIOKafkaConsumer(
        topic.value, bootstrap_servers=bootstrap, group_id=None,
        auto_offset_reset="earliest", fetch_max_wait_ms=50,
    )  # fmt: skip
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found = [
                    e for r in records if matches(e := model.model_validate_json(r.value or b""))
                ]
                if found:
                    return found
        return []
    finally:
        await consumer.stop()
