"""Streamed downloads and uploads hold no pooled database connection while they wait on
a slow client: a handful of slow clients cannot take the whole pool."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.common import db
from libs.common.blobs import CHUNK_BYTES, BlobStore, UploadTooLarge
from services.api.routes.import_rejections import _rejected_csv

ROWS = 5000  # more than one chunk of the download


@pytest.fixture
async def small_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, max_size=2)
    yield pool
    pool.terminate()  # close() would wait for connections a failed test left checked out


def in_use(pool: asyncpg.Pool) -> int:
    return pool.get_size() - pool.get_idle_size()


async def _rejections(pool: asyncpg.Pool) -> uuid.UUID:
    import_id = uuid.uuid4()
    rows = [(import_id, 1, "header", "email,name")] + [
        (import_id, line, "invalid email", f"bad{line},Name {line}") for line in range(2, ROWS + 2)
    ]
    await pool.copy_records_to_table("import_rejections", records=rows)
    return import_id


async def test_a_slow_download_holds_no_connection(small_pool: asyncpg.Pool) -> None:
    import_id = await _rejections(small_pool)
    slow_clients = [_rejected_csv(small_pool, import_id) for _ in range(3)]
    for download in slow_clients:
        # Each client reads a little, then stalls. (Bounded: with a connection held per
        # download, the third would wait for the pool forever.)
        first = await asyncio.wait_for(anext(download), timeout=10)
        assert first.startswith("\ufeffline,reason,email,name")
        second = await asyncio.wait_for(anext(download), timeout=10)
        assert second.startswith("2,invalid email,bad2,")
    assert in_use(small_pool) == 0
    # More stalled downloads than the pool has connections, and the database still answers.
    assert await asyncio.wait_for(small_pool.fetchval("SELECT 1"), timeout=10) == 1
    body = "".join([first, second] + [part async for part in slow_clients[-1]])
    lines = body.splitlines()
    assert len(lines) == ROWS + 1 and lines[-1].startswith(f"{ROWS + 1},invalid email,")
    for download in slow_clients[:-1]:
        await download.aclose()


async def test_a_slow_upload_holds_no_connection(small_pool: asyncpg.Pool) -> None:
    client_sends_more = asyncio.Event()
    waiting = asyncio.Event()

    async def slow_client() -> AsyncIterator[bytes]:
        yield b"a" * (CHUNK_BYTES + 10)
        waiting.set()
        await client_sends_more.wait()
        yield b"b" * 10

    store = BlobStore(small_pool)
    upload = asyncio.create_task(store.write("f.csv", "text/csv", slow_client(), 10 * CHUNK_BYTES))
    await asyncio.wait_for(waiting.wait(), timeout=30)
    assert in_use(small_pool) == 0
    client_sends_more.set()
    blob_id = await asyncio.wait_for(upload, timeout=30)
    assert await store.size(blob_id) == CHUNK_BYTES + 20
    assert b"".join([c async for c in store.read(blob_id)]).endswith(b"a" * 10 + b"b" * 10)


async def test_a_refused_upload_leaves_nothing(small_pool: asyncpg.Pool) -> None:
    async def too_much() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * CHUNK_BYTES

    before = await small_pool.fetchval("SELECT count(*) FROM blobs")
    with pytest.raises(UploadTooLarge):
        await BlobStore(small_pool).write("big.csv", None, too_much(), 2 * CHUNK_BYTES)
    assert await small_pool.fetchval("SELECT count(*) FROM blobs") == before
