"""PostgreSQL adapter of the importer: import jobs, and the one-transaction data load.

The rows arrive validated, deduplicated and encoded for binary COPY (`prepare`). Into a
list with no recipients yet (the usual first import) they are COPYed straight into
`recipients`; otherwise, or when a recipient added meanwhile collides, into a temporary
table, merged by one upsert that skips suppressed addresses and counts each outcome.

It runs in a savepoint inside a transaction holding the list's advisory lock: a failed
load rolls back to the savepoint, the job is marked failed under the same lock, and the
list is left as it was.

Rejected rows go to `import_rejections` with their original cells as one CSV record;
line 1 holds the file's header (reason `header`) when anything was rejected, so that the
API can return the rejected rows under their own columns.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from libs.common import suppressions
from services.importer.reader import csv_record

# Advisory locks are two int4s: this class says "importer, per list" (objid: the list).
_LIST_LOCK_CLASS = 0x494D50  # "IMP"
# A merge of millions of rows may run longer than the pool's default command timeout.
_LOAD_TIMEOUT_S = 3600.0
# Memory for sorting the staged rows by address (1M rows take ~100 MB), for the load's
# transaction only; beyond it PostgreSQL sorts in temporary files, slower but bounded.
_SORT_MEMORY = "256MB"


FINAL_STATUSES = ("completed", "failed")
HEADER_LINE = 1
HEADER_REASON = "header"


@dataclass(frozen=True)
class JobState:
    import_id: UUID
    list_id: UUID
    status: str
    rows_total: int = 0
    rows_imported: int = 0
    rows_updated: int = 0
    rows_rejected: int = 0
    rows_duplicate: int = 0
    rows_suppressed: int = 0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class LoadCounts:
    rows_total: int
    rows_imported: int
    rows_updated: int
    rows_rejected: int
    rows_duplicate: int
    rows_suppressed: int


# A connection of the pool (its proxy type) or a plain one.
Connection = asyncpg.Connection | PoolConnectionProxy


def _job(record: asyncpg.Record) -> JobState:
    return JobState(
        import_id=record["id"],
        list_id=record["list_id"],
        status=record["status"],
        rows_total=record["rows_total"],
        rows_imported=record["rows_imported"],
        rows_updated=record["rows_updated"],
        rows_rejected=record["rows_rejected"],
        rows_duplicate=record["rows_duplicate"],
        rows_suppressed=record["rows_suppressed"],
        error=record["error"],
    )


class ImportRepository:
    def __init__(self, pool: asyncpg.Pool, erasure_key: bytes | None = None) -> None:
        self.pool = pool
        # Erased people are refused by their keyed hash (libs/common/suppressions.py).
        self.erasure_key = erasure_key

    async def open_job(self, import_id: UUID, list_id: UUID) -> JobState:
        """The job's row, created `queued` on first sight of the request."""
        await self.pool.execute(
            "INSERT INTO import_jobs (id, list_id, status) VALUES ($1, $2, 'queued')"
            " ON CONFLICT (id) DO NOTHING",
            import_id,
            list_id,
        )
        return await self.job(import_id)

    async def job(self, import_id: UUID) -> JobState:
        record = await self.pool.fetchrow("SELECT * FROM import_jobs WHERE id = $1", import_id)
        assert record is not None, "open_job creates the row first"
        return _job(record)

    async def mark_running(self, import_id: UUID) -> None:
        # Not on the locked connection: its transaction would hold the job's row lock and
        # block every progress update until the end.
        await self.pool.execute(
            "UPDATE import_jobs SET status = 'running', started_at = clock_timestamp(), error = NULL"
            " WHERE id = $1",
            import_id,
        )

    async def record_progress(self, import_id: UUID, rows_read: int, rows_rejected: int) -> None:
        """Rows processed so far, on its own connection: the load's transaction is open."""
        await self.pool.execute(
            "UPDATE import_jobs SET status = 'running', rows_total = $2, rows_rejected = $3"
            " WHERE id = $1 AND status IN ('queued', 'running')",
            import_id,
            rows_read,
            rows_rejected,
        )

    @asynccontextmanager
    async def list_locked(self, import_id: UUID, list_id: UUID) -> AsyncIterator[ListSession]:
        """Hold the list's lock for one import: nothing else imports into it meanwhile."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _LIST_LOCK_CLASS, str(list_id)
            )
            # Not waiting for the WAL flush at commit is safe here: the job is reported
            # completed only after the commit returns, and a crash that loses the commit
            # loses the job's 'completed' row with it, so the request (its offset not yet
            # committed) is redelivered and the import runs again. Saves a flush of the
            # load's WAL on the import's critical path.
            await conn.execute("SET LOCAL synchronous_commit = off")
            # Rows this import inserts carry its id (the column's default reads it): what
            # services/automations enrols on `import.completed` (migration 0029).
            await conn.execute("SELECT set_config('mailfleet.import_id', $1, true)", str(import_id))
            yield ListSession(conn, import_id, list_id, self.erasure_key)


class ListSession:
    """One import's work under the list lock: check, load (in a savepoint), finish."""

    def __init__(
        self, conn: Connection, import_id: UUID, list_id: UUID, erasure_key: bytes | None = None
    ) -> None:
        self.conn = conn
        self.import_id = import_id
        self.list_id = list_id
        self.erasure_key = erasure_key

    async def job(self) -> JobState:
        # Re-read under the lock: another importer may have finished it while we waited.
        record = await self.conn.fetchrow("SELECT * FROM import_jobs WHERE id = $1", self.import_id)
        assert record is not None
        return _job(record)

    async def lock_list(self) -> bool:
        """Lock the list's row until the import commits; False when there is no list.

        `recipients` has no foreign key to `lists` (migration 0008): this is the lock the
        key took for every row, taken once. The list cannot be deleted under the load."""
        found = await self.conn.fetchval(
            "SELECT 1 FROM lists WHERE id = $1 FOR KEY SHARE", self.list_id
        )
        return bool(found)

    async def list_is_empty(self) -> bool:
        return not await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM recipients WHERE list_id = $1)", self.list_id
        )

    @asynccontextmanager
    async def load(self) -> AsyncIterator[Loader]:
        """A savepoint around the data load: leaving by an exception undoes all of it."""
        async with self.conn.transaction():
            yield Loader(self.conn, self.import_id, self.list_id, self.erasure_key)

    async def record_consent(self, basis: str, source: str) -> None:
        """The consent basis the import states for its rows: one record for the import."""
        await self.conn.execute(
            "INSERT INTO consents (list_id, import_id, basis, source, status, event_id)"
            " VALUES ($1, $2, $3, $4, 'given', $5) ON CONFLICT (event_id) DO NOTHING",
            self.list_id,
            self.import_id,
            basis,
            source,
            f"import:{self.import_id}",
        )

    async def finish(self, counts: LoadCounts) -> JobState:
        record = await self.conn.fetchrow(
            "UPDATE import_jobs SET status = 'completed', finished_at = clock_timestamp(), error = NULL,"
            " rows_total = $2, rows_imported = $3, rows_updated = $4, rows_rejected = $5,"
            " rows_duplicate = $6, rows_suppressed = $7"
            " WHERE id = $1 RETURNING *",
            self.import_id,
            counts.rows_total,
            counts.rows_imported,
            counts.rows_updated,
            counts.rows_rejected,
            counts.rows_duplicate,
            counts.rows_suppressed,
        )
        assert record is not None
        return _job(record)

    async def fail(self, error: str, rows_total: int, rows_rejected: int) -> JobState:
        # The counts of a failed import describe what was read before it failed; nothing
        # of it is kept, so imported/updated stay zero.
        record = await self.conn.fetchrow(
            "UPDATE import_jobs SET status = 'failed', finished_at = clock_timestamp(), error = $2,"
            " rows_total = $3, rows_rejected = $4, rows_imported = 0, rows_updated = 0,"
            " rows_duplicate = 0, rows_suppressed = 0"
            " WHERE id = $1 RETURNING *",
            self.import_id,
            error,
            rows_total,
            rows_rejected,
        )
        assert record is not None
        return _job(record)


class Loader:
    """The data load of one import, in the import's transaction.

    Into an empty list, the prepared rows are COPYed straight into `recipients`
    (`copy_recipients`); a recipient added by the API meanwhile, with an address of the
    file, makes that COPY fail with a unique violation, and the caller loads again by
    staging. Into a list with recipients, they are COPYed into a temporary table of the
    same columns and merged by one upsert (`stage`, then `upsert_staged`).
    """

    def __init__(
        self, conn: Connection, import_id: UUID, list_id: UUID, erasure_key: bytes | None = None
    ) -> None:
        self.conn = conn
        self.import_id = import_id
        self.list_id = list_id
        self.erasure_key = erasure_key
        # A name of its own per import: asyncpg caches statements by their text.
        self.staged_table = f"import_rows_{import_id.hex}"

    async def copy_recipients(self, columns: list[str], data: AsyncIterable[bytes]) -> int:
        status = await self.conn.copy_to_table(
            "recipients", source=data, columns=columns, format="binary", timeout=_LOAD_TIMEOUT_S
        )
        return _copied(status)

    async def stage(self, columns: list[str], data: AsyncIterable[bytes]) -> int:
        # Temporary: dropped with the transaction, written without WAL, seen by no one else.
        await self.conn.execute(
            f"CREATE TEMP TABLE {self.staged_table}"
            ' (list_id uuid, email text COLLATE "C", fields jsonb) ON COMMIT DROP'
        )
        status = await self.conn.copy_to_table(
            self.staged_table,
            source=data,
            columns=columns,
            format="binary",
            timeout=_LOAD_TIMEOUT_S,
        )
        return _copied(status)

    async def remove_suppressed(self) -> int:
        """After `copy_recipients`: suppressed addresses are not kept; returns how many
        were loaded and removed."""
        if await self.conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM suppressions)"):
            return await self._remove_erased("recipients", "list_id = $1 AND", self.list_id)
        # Linear in the loaded rows whatever the plan (a probe of the suppressions' key, or
        # a hash of them, per row). The list was loaded a moment ago, so its statistics say
        # it is empty: `email = ANY (ARRAY(SELECT email FROM suppressions))` was then
        # planned as a filter on the list's rows, each compared with the whole array (a
        # 2M-row import with 50k suppressions ran for over six minutes, bench/api_load.py).
        removed = await self.conn.fetchval(
            "WITH gone AS (DELETE FROM recipients r WHERE r.list_id = $1"
            " AND EXISTS (SELECT 1 FROM suppressions s WHERE s.email = r.email)"
            " RETURNING 1) SELECT count(*) FROM gone",
            self.list_id,
            timeout=_LOAD_TIMEOUT_S,
        )
        return int(removed) + await self._remove_erased(
            "recipients", "list_id = $1 AND", self.list_id
        )

    async def _remove_erased(self, table: str, scope: str, *args: object) -> int:
        """Delete the rows of `table` (within `scope`) whose address was erased: its keyed
        hash is in the suppression list (issue 15 item 5). Each row's hash is computed only
        when someone was ever erased."""
        if self.erasure_key is None or not await suppressions.any_erased(self.conn):
            return 0
        k = suppressions.ErasureKey.of(self.erasure_key)
        n = len(args)
        # The bucket first (COST 1 against the token's 1000, so PostgreSQL tests it first):
        # only rows whose bucket holds an erased address pay the HMAC.
        removed = await self.conn.fetchval(
            f"WITH gone AS (DELETE FROM {table} r WHERE {scope}"  # noqa: S608 - constants
            f" mailfleet_erased_bucket(r.email, ${n + 3}) IN (SELECT substr(email, 8, 4)"
            f"  FROM suppressions WHERE {suppressions.ERASED_RANGE_SQL})"
            f" AND mailfleet_erased_token(r.email, ${n + 1}, ${n + 2}, ${n + 3}) IN"
            f"  (SELECT email FROM suppressions WHERE {suppressions.ERASED_RANGE_SQL})"
            " RETURNING 1) SELECT count(*) FROM gone",
            *args,
            k.ipad,
            k.opad,
            k.seed,
            timeout=_LOAD_TIMEOUT_S,
        )
        return int(removed)

    async def upsert_staged(self) -> tuple[int, int, int]:
        """After `stage`: (inserted, updated, suppressed). Existing recipients keep the
        fields the file does not name; suppressed addresses are skipped."""
        erased = await self._remove_erased(self.staged_table, "")
        suppressed = erased + await self.conn.fetchval(
            f"SELECT count(*) FROM {self.staged_table} r"  # noqa: S608
            " WHERE EXISTS (SELECT 1 FROM suppressions s WHERE s.email = r.email)",
            timeout=_LOAD_TIMEOUT_S,
        )
        # In address order: the unique index is then visited page after page, not at
        # random (work_mem: the sort stays in memory).
        await self.conn.execute(f"SET LOCAL work_mem = '{_SORT_MEMORY}'")
        record = await self.conn.fetchrow(
            f"""
            WITH merged AS (
                INSERT INTO recipients (list_id, email, fields)
                SELECT list_id, email, fields FROM {self.staged_table} r
                WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = r.email)
                ORDER BY email
                ON CONFLICT (list_id, email) DO UPDATE
                SET fields = recipients.fields || EXCLUDED.fields, updated_at = now()
                RETURNING (xmax = 0) AS inserted
            )
            SELECT count(*) FILTER (WHERE inserted) AS inserted,
                   count(*) FILTER (WHERE NOT inserted) AS updated
            FROM merged
            """,  # noqa: S608 - the table name is generated
            timeout=_LOAD_TIMEOUT_S,
        )
        assert record is not None
        return int(record["inserted"]), int(record["updated"]), int(suppressed)

    async def retype_as_text(self, keys: list[str], *, staged: bool) -> None:
        """Fields loaded as numbers or booleans in early batches that the whole file makes
        text (a later row was not a number): the JSON values become strings. In the staged
        rows, or in the list (whose rows are all this import's: it was empty)."""
        retyped = "fields = fields || jsonb_build_object($1::text, fields ->> $1)"
        typed = "jsonb_typeof(fields -> $1) IN ('number', 'boolean')"
        for key in keys:
            if staged:
                await self.conn.execute(
                    f"UPDATE {self.staged_table} SET {retyped} WHERE {typed}",  # noqa: S608
                    key,
                    timeout=_LOAD_TIMEOUT_S,
                )
            else:
                await self.conn.execute(
                    f"UPDATE recipients SET {retyped} WHERE list_id = $2 AND {typed}",  # noqa: S608
                    key,
                    self.list_id,
                    timeout=_LOAD_TIMEOUT_S,
                )

    async def add_rejections(self, spool: Path, header: list[str] | None) -> None:
        """The spooled rejections (CSV: import_id, line, reason, raw) and, when there are
        any, the file's header as line 1 (see the module docstring)."""
        await self.conn.copy_to_table(
            "import_rejections",
            source=spool,
            columns=["import_id", "line", "reason", "raw"],
            format="csv",
            timeout=_LOAD_TIMEOUT_S,
        )
        if header is not None:
            await self.conn.execute(
                "INSERT INTO import_rejections (import_id, line, reason, raw)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (import_id, line) DO NOTHING",
                self.import_id,
                HEADER_LINE,
                HEADER_REASON,
                csv_record(header).replace("\x00", ""),
            )


def _copied(status: str) -> int:
    """Rows from a COPY's status ("COPY 1000")."""
    return int(status.rsplit(" ", 1)[-1])
