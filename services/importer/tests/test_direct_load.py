"""The fast path into an empty list, against the real PostgreSQL: many batches, merge
fields a later batch turns into text, a recipient added during the load, and the list
lock that replaced the foreign key."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from libs.common.blobs import BlobStore, blob_ref
from libs.common.events import ImportProgress, ImportRequested
from services.importer import prepare, reader
from services.importer.job import Importer
from services.importer.repository import ImportRepository, JobState, ListSession


async def _new_list(pool: asyncpg.Pool) -> uuid.UUID:
    return uuid.UUID(str(await pool.fetchval("INSERT INTO lists (name) VALUES ('t') RETURNING id")))


async def _import(pool: asyncpg.Pool, list_id: uuid.UUID, data: bytes) -> JobState:
    blobs = BlobStore(pool)

    async def chunks() -> Any:
        yield data

    blob_id = await blobs.write("people.csv", "text/csv", chunks(), max_bytes=len(data) + 1)
    published: list[ImportProgress] = []

    async def publish(event: ImportProgress, final: bool) -> None:
        published.append(event)

    importer = Importer(ImportRepository(pool), blobs, publish)
    request = ImportRequested(import_id=uuid.uuid4(), list_id=list_id, file_ref=blob_ref(blob_id))
    state = await importer.handle(request)
    assert published and published[-1].status == state.status
    return state


async def _fields(pool: asyncpg.Pool, list_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = await pool.fetch("SELECT email, fields FROM recipients WHERE list_id = $1", list_id)
    return {r["email"]: r["fields"] for r in rows}


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 KiB blocks: a file of a few thousand rows arrives in dozens of batches.
    monkeypatch.setattr(reader, "CSV_BLOCK_BYTES", 2048)


@pytest.mark.usefixtures("small_batches")
async def test_many_batches_dedupe_across_batches_and_retype_late_text(pool: asyncpg.Pool) -> None:
    rows = [f"user{i}@example.com,{i},true" for i in range(3000)]
    rows += [f"USER{i}@Example.com,{i},false" for i in range(0, 3000, 10)]  # 300 duplicates
    rows += ["late@example.com,n/a,maybe"]  # the codes and flags are text after all
    list_id = await _new_list(pool)
    state = await _import(pool, list_id, ("email,code,flag\n" + "\n".join(rows) + "\n").encode())

    assert state.status == "completed", state.error
    assert (state.rows_total, state.rows_imported, state.rows_duplicate) == (3301, 3001, 300)
    stored = await _fields(pool, list_id)
    assert len(stored) == 3001
    assert stored["user7@example.com"] == {"code": "7", "flag": "true"}  # first row wins
    assert stored["user10@example.com"] == {"code": "10", "flag": "true"}
    assert stored["late@example.com"] == {"code": "n/a", "flag": "maybe"}
    assert all(isinstance(f["code"], str) and isinstance(f["flag"], str) for f in stored.values())


@pytest.mark.usefixtures("small_batches")
async def test_rows_reach_the_list_in_address_order_run_by_run(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Address order is what makes the unique index cheap to fill (prepare.py); the file
    # here is in reverse address order, so file order would be all descents.
    monkeypatch.setattr(prepare, "RUN_ROWS", 500)
    rows = [f"p{i:05d}@example.com,{i}" for i in reversed(range(2000))]
    rows.insert(1000, "P01999@EXAMPLE.COM,dupe")  # a later run repeats the first row's address
    list_id = await _new_list(pool)
    state = await _import(pool, list_id, ("email,n\n" + "\n".join(rows) + "\n").encode())

    assert (state.rows_imported, state.rows_duplicate) == (2000, 1), state
    by_id = await pool.fetch(
        "SELECT email, fields FROM recipients WHERE list_id = $1 ORDER BY id", list_id
    )
    emails = [r["email"] for r in by_id]
    descents = sum(1 for a, b in zip(emails, emails[1:], strict=False) if a > b)
    assert descents == 3  # four runs of 500 kept rows, each sorted
    assert sorted(emails) == [f"p{i:05d}@example.com" for i in range(2000)]
    # The first row wins ("dupe" makes the column text for all).
    assert by_id[emails.index("p01999@example.com")]["fields"] == {"n": "1999"}


@pytest.mark.usefixtures("small_batches")
async def test_a_run_ends_at_its_byte_bound_before_its_row_bound(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file of hundreds of columns must not make one run of 250k rows (an Arrow string
    # array holds 2 GiB at most): here every read batch is a run of its own.
    monkeypatch.setattr(prepare, "RUN_ROWS", 10**9)
    monkeypatch.setattr(prepare, "RUN_FIELD_BYTES", 1)
    rows = [f"q{i:05d}@example.com,{i}" for i in reversed(range(2000))]
    list_id = await _new_list(pool)
    state = await _import(pool, list_id, ("email,n\n" + "\n".join(rows) + "\n").encode())

    assert state.rows_imported == 2000, state
    emails = [
        r["email"]
        for r in await pool.fetch(
            "SELECT email FROM recipients WHERE list_id = $1 ORDER BY id", list_id
        )
    ]
    descents = sum(1 for a, b in zip(emails, emails[1:], strict=False) if a > b)
    assert descents >= 10  # 2 KiB batches of ~90 rows: one run each, not one run in all


@pytest.mark.usefixtures("small_batches")
async def test_numbers_stay_numbers_when_the_whole_file_agrees(pool: asyncpg.Pool) -> None:
    rows = [f"n{i}@example.com,{i}" for i in range(2000)]
    list_id = await _new_list(pool)
    state = await _import(pool, list_id, ("email,age\n" + "\n".join(rows) + "\n").encode())
    assert state.rows_imported == 2000
    stored = await _fields(pool, list_id)
    assert stored["n1999@example.com"] == {"age": 1999}


async def test_a_recipient_added_during_the_load_falls_back_to_the_upsert(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    list_id = await _new_list(pool)
    # The API adds bob (committed, on its own connection) just after the importer found
    # the list empty: the COPY into `recipients` then meets bob's row.
    original = ListSession.list_is_empty

    async def empty_then_added(session: ListSession) -> bool:
        empty = await original(session)
        await pool.execute(
            "INSERT INTO recipients (list_id, email, fields) VALUES ($1, 'bob@example.com', $2)",
            list_id,
            {"source": "api"},
        )
        return empty

    monkeypatch.setattr(ListSession, "list_is_empty", empty_then_added)
    data = b"email,first_name\nann@example.com,Ann\nbob@example.com,Bob\nann@example.com,A2\n"
    state = await _import(pool, list_id, data)

    assert state.status == "completed", state.error
    assert (state.rows_imported, state.rows_updated, state.rows_duplicate) == (1, 1, 1)
    assert await _fields(pool, list_id) == {
        "ann@example.com": {"first_name": "Ann"},
        "bob@example.com": {"source": "api", "first_name": "Bob"},
    }


async def test_a_list_being_imported_cannot_be_deleted_until_the_import_ends(
    pool: asyncpg.Pool,
) -> None:
    list_id = await _new_list(pool)
    await pool.execute(
        "INSERT INTO recipients (list_id, email) VALUES ($1, 'kept@example.com')", list_id
    )
    repository = ImportRepository(pool)
    import_id = uuid.uuid4()
    await repository.open_job(import_id, list_id)
    async with repository.list_locked(import_id, list_id) as session:
        assert await session.lock_list()
        async with pool.acquire() as other, other.transaction():
            await other.execute("SET LOCAL lock_timeout = '200ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await other.execute("DELETE FROM lists WHERE id = $1", list_id)
    # Once the import's transaction ends, the list goes, and its recipients with it.
    await pool.execute("DELETE FROM lists WHERE id = $1", list_id)
    assert await pool.fetchval("SELECT count(*) FROM recipients WHERE list_id = $1", list_id) == 0


async def test_an_import_into_a_deleted_list_fails_clearly(pool: asyncpg.Pool) -> None:
    list_id = await _new_list(pool)
    await pool.execute("DELETE FROM lists WHERE id = $1", list_id)
    state = await _import(pool, list_id, b"email\nann@example.com\n")
    assert state.status == "failed"
    assert state.error == f"list {list_id} does not exist"
    assert await _fields(pool, list_id) == {}


async def test_suppressed_addresses_are_removed(pool: asyncpg.Pool) -> None:
    gone = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    await pool.execute("INSERT INTO suppressions (email, reason) VALUES ($1, 'bounce')", gone)
    list_id = await _new_list(pool)
    state = await _import(pool, list_id, f"email\nkept@example.com\n{gone}\n{gone}\n".encode())
    assert (state.rows_imported, state.rows_suppressed, state.rows_duplicate) == (1, 1, 1)
    assert list(await _fields(pool, list_id)) == ["kept@example.com"]


async def test_a_rejected_row_with_a_bare_carriage_return_is_kept(pool: asyncpg.Pool) -> None:
    list_id = await _new_list(pool)
    state = await _import(pool, list_id, b'email\n"bad\rvalue"\nok@example.com\n')
    assert state.status == "completed", state.error
    assert (state.rows_imported, state.rows_rejected) == (1, 1)
    raw = await pool.fetchval(
        "SELECT raw FROM import_rejections WHERE import_id = $1 AND line = 2", state.import_id
    )
    assert "\r" in raw


async def test_rows_carry_the_import_that_inserted_them(pool: asyncpg.Pool) -> None:
    """What services/automations enrols on `import.completed`: the rows an import inserted
    (by COPY into an empty list, by the upsert into a list with rows), not those it only
    updated, nor those added otherwise."""
    list_id = await _new_list(pool)
    await pool.execute(
        "INSERT INTO recipients (list_id, email) VALUES ($1, 'by-api@example.com')", list_id
    )
    first = await _import(pool, list_id, b"email\na@example.com\nb@example.com\n")
    second = await _import(pool, list_id, b"email\nb@example.com\nc@example.com\n")
    assert (first.rows_imported, second.rows_imported, second.rows_updated) == (2, 1, 1)
    rows = await pool.fetch("SELECT email, import_id FROM recipients WHERE list_id = $1", list_id)
    by_email = {r["email"]: r["import_id"] for r in rows}
    assert by_email == {
        "by-api@example.com": None,
        "a@example.com": first.import_id,
        "b@example.com": first.import_id,
        "c@example.com": second.import_id,
    }
    # Empty list: the direct COPY path.
    fresh = await _new_list(pool)
    copied = await _import(pool, fresh, b"email\nd@example.com\n")
    assert (
        await pool.fetchval("SELECT import_id FROM recipients WHERE list_id = $1", fresh)
        == copied.import_id
    )
    # Outside an import's transaction the default is NULL again on the same connection.
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO recipients (list_id, email) VALUES ($1, 'e@example.com')", fresh
        )
        assert (
            await conn.fetchval("SELECT import_id FROM recipients WHERE email = 'e@example.com'")
            is None
        )
