"""Personal data is kept no longer than needed: an uploaded file goes when its import
finishes (only the rejected rows stay), and rejected rows go after the retention period."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.common.blobs import parse_ref
from libs.common.settings import Settings
from services.importer.retention import sweep
from services.importer.tests.test_service import Harness, harness  # noqa: F401 (fixture)

DAY = timedelta(days=1)
DEADLINE_S = 30.0


async def _deleted(pool: asyncpg.Pool, blob_id: uuid.UUID) -> bool:
    """Waits for the blob to go: the importer deletes it just after it records the end."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if not await pool.fetchval("SELECT count(*) FROM blobs WHERE id = $1", blob_id):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_upload_is_deleted_when_its_import_finishes(
    harness: Harness,  # noqa: F811
    pool: asyncpg.Pool,
) -> None:
    list_id = await harness.new_list()
    event = await harness.request(list_id, b"email,name\nok@example.com,A\nnot-an-address,B\n")
    job = await harness.finished(event.import_id)
    assert (job["status"], job["rows_imported"], job["rows_rejected"]) == ("completed", 1, 1)
    blob_id = parse_ref(event.file_ref)
    assert await _deleted(pool, blob_id)
    assert await pool.fetchval("SELECT count(*) FROM blob_chunks WHERE blob_id = $1", blob_id) == 0
    rejected = await harness.rejections(event.import_id)
    assert [r[2] for r in rejected] == ["email,name", "not-an-address,B"]


async def test_a_failed_import_deletes_its_upload_too(
    harness: Harness,  # noqa: F811
    pool: asyncpg.Pool,
) -> None:
    list_id = await harness.new_list()
    event = await harness.request(list_id, b"no address column here\n1\n")
    assert (await harness.finished(event.import_id))["status"] == "failed"
    assert await _deleted(pool, parse_ref(event.file_ref))


async def _finished_import(pool: asyncpg.Pool, finished_at: datetime) -> uuid.UUID:
    import_id, list_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO lists (id, name) VALUES ($1, 'retention')", list_id)
    await pool.execute(
        "INSERT INTO import_jobs (id, list_id, status, finished_at)"
        " VALUES ($1, $2, 'completed', $3)",
        import_id,
        list_id,
        finished_at,
    )
    await pool.execute(
        "INSERT INTO import_rejections (import_id, line, reason, raw) VALUES"
        " ($1, 1, 'header', 'email'), ($1, 2, 'invalid email', 'x')",
        import_id,
    )
    blob_id = await pool.fetchval(
        "INSERT INTO blobs (filename, complete) VALUES ('f.csv', true) RETURNING id"
    )
    await pool.execute(
        "INSERT INTO import_requests (id, list_id, blob_id, filename) VALUES ($1, $2, $3, 'f')",
        import_id,
        list_id,
        blob_id,
    )
    return import_id


async def _rejections(pool: asyncpg.Pool, import_id: uuid.UUID) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM import_rejections WHERE import_id = $1", import_id
    )
    return count


async def test_sweep_enforces_the_retention_setting(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    old = await _finished_import(pool, now - 31 * DAY)
    recent = await _finished_import(pool, now - 29 * DAY)
    abandoned = await pool.fetchval(
        "INSERT INTO blobs (filename, complete, created_at) VALUES ('cut.csv', false, $1)"
        " RETURNING id",
        now - 2 * DAY,
    )
    uploading = await pool.fetchval(
        "INSERT INTO blobs (filename, complete) VALUES ('now.csv', false) RETURNING id"
    )
    result = await sweep(pool, timedelta(days=30), now)
    assert result.rejections_deleted >= 2
    assert await _rejections(pool, old) == 0
    assert await _rejections(pool, recent) == 2
    # Files of finished imports (left by a crash between finish and delete) and cut-off
    # uploads go; an upload in progress stays.
    left = {r["id"] for r in await pool.fetch("SELECT id FROM blobs")}
    assert abandoned not in left and uploading in left
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM import_requests WHERE id = ANY($1::uuid[]) AND blob_id IS NOT NULL",
            [old, recent],
        )
        == 0
    )
    again = await sweep(pool, timedelta(days=30), now)
    assert again.rejections_deleted == 0


def test_retention_is_a_bounded_setting() -> None:
    assert Settings().import_rejections_retention_days == 30
    configured = Settings(MAILFLEET_IMPORT_REJECTIONS_RETENTION_DAYS=7)  # type: ignore[call-arg]
    assert configured.import_rejections_retention_days == 7
    with pytest.raises(ValueError):
        Settings(MAILFLEET_IMPORT_REJECTIONS_RETENTION_DAYS=0)  # type: ignore[call-arg]
