"""The importer end to end: blob in Postgres, ImportRequested on the real broker, the
service's main loop, and the resulting recipients, counts and rejections."""

from __future__ import annotations

import asyncio
import gzip
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.common.blobs import BlobStore, blob_ref
from libs.common.events import (
    ColumnMapping,
    ConsentStatement,
    ImportProgress,
    ImportRequested,
    Topic,
)
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.importer.app import main
from services.importer.tests.files import xlsx

DEADLINE_S = 30.0


class Harness:
    def __init__(self, pool: asyncpg.Pool, producer: EventProducer) -> None:
        self.pool = pool
        self.producer = producer
        self.blobs = BlobStore(pool)

    async def new_list(self, emails: Iterable[str] = ()) -> uuid.UUID:
        list_id = uuid.uuid4()
        await self.pool.execute("INSERT INTO lists (id, name) VALUES ($1, 'test')", list_id)
        for email in emails:
            await self.pool.execute(
                "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3)",
                list_id,
                email,
                {"first_name": "Before"},
            )
        return list_id

    async def request(
        self,
        list_id: uuid.UUID,
        data: bytes,
        filename: str = "people.csv",
        email_column: str | None = None,
        import_id: uuid.UUID | None = None,
    ) -> ImportRequested:
        async def chunks() -> AsyncIterator[bytes]:
            yield data

        blob_id = await self.blobs.write(filename, None, chunks(), max_bytes=len(data) + 1)
        event = ImportRequested(
            import_id=import_id or uuid.uuid4(),
            list_id=list_id,
            file_ref=blob_ref(blob_id),
            filename=filename,
            mapping=ColumnMapping(email=email_column),
        )
        await self.producer.send(Topic.IMPORT_REQUESTED, str(list_id), event)
        return event

    async def finished(self, import_id: uuid.UUID) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            row = await self.pool.fetchrow("SELECT * FROM import_jobs WHERE id = $1", import_id)
            if row is not None and row["status"] in ("completed", "failed"):
                return dict(row)
            await asyncio.sleep(0.05)
        raise AssertionError(f"import {import_id} did not finish within {DEADLINE_S} s")

    async def run(self, list_id: uuid.UUID, data: bytes, **kwargs: Any) -> dict[str, Any]:
        event = await self.request(list_id, data, **kwargs)
        return await self.finished(event.import_id)

    async def recipients(self, list_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT email, fields FROM recipients WHERE list_id = $1", list_id
        )
        return {r["email"]: r["fields"] for r in rows}

    async def rejections(self, import_id: uuid.UUID) -> list[tuple[int, str, str]]:
        rows = await self.pool.fetch(
            "SELECT line, reason, raw FROM import_rejections WHERE import_id = $1 ORDER BY line",
            import_id,
        )
        return [(r["line"], r["reason"], r["raw"]) for r in rows]


@pytest.fixture(scope="module")
async def harness(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Harness]:
    producer = EventProducer(settings)
    await producer.start()
    ctx = ServiceContext("importer", settings, pool, producer, asyncio.Event())
    # A group of its own: earlier test modules' offsets must not hide this module's events.
    service = asyncio.create_task(main(ctx, group_id=f"importer-test-{uuid.uuid4().hex[:8]}"))
    try:
        yield Harness(pool, producer)
    finally:
        ctx.stop.set()
        await asyncio.wait_for(service, 20)
        await producer.stop()


def _counts(job: dict[str, Any]) -> dict[str, int]:
    names = ("total", "imported", "updated", "rejected", "duplicate", "suppressed")
    return {name: job[f"rows_{name}"] for name in names}


async def test_csv_import_counts_every_row(harness: Harness, pool: asyncpg.Pool) -> None:
    suppressed = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    await pool.execute(
        "INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')", suppressed
    )
    list_id = await harness.new_list()
    csv_text = (
        "\ufeffEMAIL,First Name,Age\n"
        "Ann@Example.com,Ann,31\n"
        "not-an-address,Bad,1\n"
        " ann@example.COM ,Ann again,32\n"
        f"{suppressed.upper()},Gone,40\n"
        ",Nobody,2\n"
        "bob@example.com,Bob,45\n"
        '=HYPERLINK("x"),Evil,3\n'
    )
    job = await harness.run(list_id, csv_text.encode())

    assert job["status"] == "completed", job["error"]
    assert job["error"] is None
    assert _counts(job) == {
        "total": 7,
        "imported": 2,
        "updated": 0,
        "rejected": 3,
        "duplicate": 1,
        "suppressed": 1,
    }
    assert await harness.recipients(list_id) == {
        "ann@example.com": {"first_name": "Ann", "age": 31},
        "bob@example.com": {"first_name": "Bob", "age": 45},
    }
    assert await harness.rejections(job["id"]) == [
        (1, "header", "EMAIL,First Name,Age"),  # the columns, for GET .../rejected
        (3, "invalid email address", "not-an-address,Bad,1"),
        (6, "missing email address", ",Nobody,2"),
        (8, "invalid email address", '"=HYPERLINK(""x"")",Evil,3'),
    ]


async def test_reimport_updates_fields_and_never_adds_a_second_row(harness: Harness) -> None:
    list_id = await harness.new_list(["kept@example.com", "old@example.com"])
    job = await harness.run(
        list_id, b"email;first_name;city\nOLD@example.com;Olga;Oslo\nnew@example.com;Nia;Nice\n"
    )
    assert _counts(job) == {
        "total": 2,
        "imported": 1,
        "updated": 1,
        "rejected": 0,
        "duplicate": 0,
        "suppressed": 0,
    }
    assert await harness.recipients(list_id) == {
        "kept@example.com": {"first_name": "Before"},
        "old@example.com": {"first_name": "Olga", "city": "Oslo"},
        "new@example.com": {"first_name": "Nia", "city": "Nice"},
    }


async def test_mapping_names_the_email_column(harness: Harness) -> None:
    list_id = await harness.new_list()
    job = await harness.run(
        list_id, b"Contact,Email\nc@example.com,ignored\n", email_column="contact"
    )
    assert job["status"] == "completed", job["error"]
    assert await harness.recipients(list_id) == {"c@example.com": {"email": "ignored"}}


async def test_gzip_and_xlsx_uploads(harness: Harness) -> None:
    list_id = await harness.new_list()
    gz = await harness.run(list_id, gzip.compress(b"email\ngz@example.com\n"), filename="a.csv.gz")
    assert gz["status"] == "completed", gz["error"]
    book = xlsx(
        {"Sheet1": [["E-mail", "Name", "Score", "VIP"], ["x@example.com", "Xi Li", 7, True]]}
    )
    xl = await harness.run(list_id, book, filename="people.xlsx")
    assert xl["status"] == "completed", xl["error"]
    recipients = await harness.recipients(list_id)
    assert recipients == {
        "gz@example.com": {},
        "x@example.com": {"name": "Xi Li", "first_name": "Xi", "score": 7, "vip": True},
    }


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "the file is empty"),
        (
            b"name,phone\nAnn,123\n",
            "no email column: found headers 'name', 'phone'; "
            "name the column 'email' or choose it with mapping.email",
        ),
        (bytes(range(256)) * 64, "the file is not a CSV or XLSX file (it holds binary data)"),
        (b"ann@example.com,Ann\nbob@example.com,Bob\n", "the file has no header row"),
        (gzip.compress(b"email\n" + b"a@example.com\n" * 50000)[:300], "gzip"),
        (b"PK\x03\x04not really a zip", "not a valid XLSX workbook"),
    ],
    ids=["empty", "no-email-column", "binary-junk", "no-header", "truncated-gzip", "not-a-zip"],
)
async def test_bad_input_fails_clearly_and_leaves_the_list_alone(
    harness: Harness, data: bytes, error: str
) -> None:
    list_id = await harness.new_list(["before@example.com"])
    job = await harness.run(list_id, data)
    assert job["status"] == "failed"
    assert error in job["error"]
    assert await harness.recipients(list_id) == {"before@example.com": {"first_name": "Before"}}


async def test_a_failure_late_in_the_file_keeps_nothing(harness: Harness) -> None:
    list_id = await harness.new_list()
    data = (
        b"email,name\n"
        + b"".join(f"p{i}@example.com,plain\n".encode() for i in range(30000))
        + b"late@example.com,caf\xe9\n"
    )
    event = await harness.request(list_id, data)
    job = await harness.finished(event.import_id)
    assert job["status"] == "failed"
    assert "not valid utf-8" in job["error"]
    assert await harness.recipients(list_id) == {}
    assert await harness.rejections(event.import_id) == []


async def test_redelivered_request_is_not_imported_twice(
    harness: Harness, settings: Settings
) -> None:
    list_id = await harness.new_list()
    first = await harness.request(list_id, b"email\none@example.com\ntwo@example.com\n")
    job = await harness.finished(first.import_id)
    assert job["rows_imported"] == 2
    # The same request again (as after a crash before the offset commit).
    await harness.producer.send(Topic.IMPORT_REQUESTED, str(list_id), first)
    states = await _events(settings, Topic.IMPORT_COMPLETED, first.import_id, expected=2)
    assert [s.rows_imported for s in states] == [2, 2]
    assert [s.status for s in states] == ["completed", "completed"]
    again = await harness.finished(first.import_id)
    assert (again["rows_imported"], again["rows_updated"]) == (2, 0)
    assert len(await harness.recipients(list_id)) == 2
    # Progress was published while it ran (once: the file is one batch).
    progress = await _events(settings, Topic.IMPORT_PROGRESS, first.import_id, expected=1)
    assert [(p.status, p.rows_total) for p in progress] == [("running", 2)]


async def _events(
    settings: Settings, topic: Topic, import_id: uuid.UUID, expected: int
) -> list[ImportProgress]:
    """Read a topic from the start (no group: nothing to join) until the events are found."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic.value)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = consumer.partitions_for_topic(topic.value) or set()
        consumer.assign([TopicPartition(topic.value, p) for p in partitions])
        await consumer.seek_to_beginning()
        found: list[ImportProgress] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(found) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    event = ImportProgress.model_validate_json(record.value)
                    if event.import_id == import_id:
                        found.append(event)
        return found
    finally:
        await consumer.stop()


async def test_imports_of_one_list_are_serialised(harness: Harness) -> None:
    list_id = await harness.new_list()
    data = b"email,n\n" + b"".join(f"s{i}@example.com,{i}\n".encode() for i in range(2000))
    first = await harness.request(list_id, data)
    second = await harness.request(list_id, data)
    jobs = [await harness.finished(first.import_id), await harness.finished(second.import_id)]
    assert [(j["rows_imported"], j["rows_updated"]) for j in jobs] == [(2000, 0), (0, 2000)]


async def test_an_import_records_the_consent_basis_it_states(
    harness: Harness, pool: asyncpg.Pool
) -> None:
    list_id = await harness.new_list()
    data = b"email\nann@example.com\nbob@example.com\n"

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    blob_id = await harness.blobs.write("people.csv", None, chunks(), max_bytes=len(data) + 1)
    event = ImportRequested(
        import_id=uuid.uuid4(),
        list_id=list_id,
        file_ref=blob_ref(blob_id),
        consent=ConsentStatement(basis="legitimate_interest", source="fair-2030"),
    )
    await harness.producer.send(Topic.IMPORT_REQUESTED, str(list_id), event)
    job = await harness.finished(event.import_id)
    assert job["status"] == "completed", job["error"]
    rows = await pool.fetch("SELECT * FROM consents WHERE list_id = $1", list_id)
    assert [(r["import_id"], r["basis"], r["source"], r["email"]) for r in rows] == [
        (event.import_id, "legitimate_interest", "fair-2030", None)
    ]
