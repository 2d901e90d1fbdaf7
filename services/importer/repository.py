"""PostgreSQL adapter of the importer: import jobs, and the one-transaction data load.

The load COPYs every valid row into a temporary table (CSV written by pyarrow's C++
writer: no Python object per cell), then merges it into `recipients` with one statement
that dedupes within the file, skips suppressed addresses and inserts in address order
(the unique index is then filled left to right instead of at random pages), counting
each outcome server-side. Into a list with no recipients yet (the usual first import)
it is a plain INSERT; otherwise, or when a recipient added meanwhile collides, an upsert.

It runs in a savepoint inside a transaction holding the list's advisory lock: a failed
load rolls back to the savepoint, the job is marked failed under the same lock, and the
list is left as it was.

Rejected rows go to `import_rejections` with their original cells as one CSV record;
line 1 holds the file's header (reason `header`) when anything was rejected, so that the
API can return the rejected rows under their own columns.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pyarrow as pa
import pyarrow.csv as pcsv
from asyncpg.pool import PoolConnectionProxy

from services.importer.reader import csv_record
from services.importer.validation import FieldKind, Rejection, ValidatedBatch

# Advisory locks are two int4s: this class says "importer, per list" (objid: the list).
_LIST_LOCK_CLASS = 0x494D50  # "IMP"
# jsonb_build_object takes at most 100 arguments: build wide rows in slices.
_FIELDS_PER_OBJECT = 40
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
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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
            yield ListSession(conn, import_id, list_id)


class ListSession:
    """One import's work under the list lock: check, load (in a savepoint), finish."""

    def __init__(self, conn: Connection, import_id: UUID, list_id: UUID) -> None:
        self.conn = conn
        self.import_id = import_id
        self.list_id = list_id

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
    async def load(self, field_count: int) -> AsyncIterator[Loader]:
        """A savepoint around the data load: leaving by an exception undoes all of it."""
        async with self.conn.transaction():
            loader = Loader(self.conn, self.import_id, self.list_id, field_count)
            await loader.create_staging()
            yield loader

    @asynccontextmanager
    async def direct_load(self) -> AsyncIterator[DirectLoader]:
        """A savepoint around the fast path (see `DirectLoader`)."""
        async with self.conn.transaction():
            yield DirectLoader(self.conn, self.import_id, self.list_id)

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
    """Stages validated rows and rejections with COPY, then merges them in one statement."""

    def __init__(self, conn: Connection, import_id: UUID, list_id: UUID, field_count: int) -> None:
        self.conn = conn
        self.import_id = import_id
        self.list_id = list_id
        self.field_columns = [f"f{i}" for i in range(field_count)]
        # Names of its own per import: asyncpg caches statements by their text, and a
        # cached description of an earlier, differently shaped table would be stale.
        self.rows_table = f"import_rows_{import_id.hex}"
        self.refused_table = f"import_refused_{import_id.hex}"

    async def create_staging(self) -> None:
        fields = "".join(f", {name} text" for name in self.field_columns)
        # Temporary tables are dropped with the transaction; nothing else can see them.
        await self.conn.execute(
            f"CREATE TEMP TABLE {self.rows_table} (line bigint, email text{fields})"
            f" ON COMMIT DROP; CREATE TEMP TABLE {self.refused_table}"
            " (line bigint, reason text, raw text) ON COMMIT DROP"
        )

    async def add(self, batch: ValidatedBatch) -> None:
        if batch.rows.num_rows:
            await self.conn.copy_to_table(
                self.rows_table,
                source=io.BytesIO(copy_csv(batch.rows)),
                format="csv",
                timeout=_LOAD_TIMEOUT_S,
            )
        if batch.rejections:
            await self._add_rejections(batch.rejections)

    async def add_header(self, header: list[str]) -> None:
        """The file's header, kept with the rejections (see the module docstring)."""
        await self._add_rejections([Rejection(HEADER_LINE, HEADER_REASON, csv_record(header))])

    async def _add_rejections(self, rejections: list[Rejection]) -> None:
        await self.conn.copy_records_to_table(
            self.refused_table,
            records=[(r.line, r.reason, r.raw.replace("\x00", "")) for r in rejections],
            timeout=_LOAD_TIMEOUT_S,
        )

    def _fields_expression(self, keys: list[str], kinds: list[FieldKind]) -> tuple[str, list[Any]]:
        """`jsonb_build_object('first_name', f0, 'age', f1::numeric, ...)`, keys as params."""
        params: list[Any] = []
        pairs: list[str] = []
        for column, key, kind in zip(self.field_columns, keys, kinds, strict=True):
            params.append(key)
            pairs.append(f"${len(params) + 1}::text, {_typed(column, kind)}")
        if not pairs:
            return "'{}'::jsonb", params
        objects = [
            "jsonb_build_object(" + ", ".join(pairs[i : i + _FIELDS_PER_OBJECT]) + ")"
            for i in range(0, len(pairs), _FIELDS_PER_OBJECT)
        ]
        return " || ".join(objects), params

    async def merge(
        self, keys: list[str], kinds: list[FieldKind], rows_total: int, rows_rejected: int
    ) -> LoadCounts:
        """Dedupe (first row of an address wins), skip suppressed, upsert; count each."""
        fields_sql, key_params = self._fields_expression(keys, kinds)
        refused = f"SELECT $1, line, reason, raw FROM {self.refused_table}"  # noqa: S608
        await self.conn.execute(
            "INSERT INTO import_rejections (import_id, line, reason, raw) "
            + refused
            + " ON CONFLICT (import_id, line) DO NOTHING",
            self.import_id,
        )
        # Suppressed addresses are counted apart, so that the insert reads the staged
        # rows once (a CTE read twice is materialised: a second copy of every row).
        suppressed = await self.conn.fetchval(
            f"SELECT count(DISTINCT email) FROM {self.rows_table} r"  # noqa: S608
            " WHERE EXISTS (SELECT 1 FROM suppressions s WHERE s.email = r.email)",
            timeout=_LOAD_TIMEOUT_S,
        )
        valid = await self.conn.fetchval(f"SELECT count(*) FROM {self.rows_table}")  # noqa: S608
        record = None
        if await self._list_is_empty():
            try:
                async with self.conn.transaction():
                    record = await self._insert(fields_sql, key_params, upsert=False)
            except asyncpg.UniqueViolationError:
                record = None  # a recipient was added by the API meanwhile: upsert instead
        if record is None:
            record = await self._insert(fields_sql, key_params, upsert=True)
        inserted, updated = int(record["inserted"]), int(record["updated"])
        distinct = inserted + updated + int(suppressed)
        return LoadCounts(
            rows_total=rows_total,
            rows_imported=inserted,
            rows_updated=updated,
            rows_rejected=rows_rejected,
            rows_duplicate=int(valid) - distinct,
            rows_suppressed=int(suppressed),
        )

    async def _list_is_empty(self) -> bool:
        return not await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM recipients WHERE list_id = $1)", self.list_id
        )

    async def _insert(self, fields_sql: str, key_params: list[Any], *, upsert: bool) -> Any:
        """Insert the first row of each address not suppressed; count what happened."""
        on_conflict = (
            "ON CONFLICT (list_id, email) DO UPDATE"
            " SET fields = recipients.fields || EXCLUDED.fields, updated_at = now()"
            if upsert
            else ""
        )
        # DISTINCT ON sorts by address, and the insert takes its rows in that order: the
        # unique index is then filled page after page instead of at random pages.
        # (work_mem: sort the staged rows in memory rather than in temporary files.)
        await self.conn.execute(f"SET LOCAL work_mem = '{_SORT_MEMORY}'")
        return await self.conn.fetchrow(
            f"""
            WITH merged AS (
                INSERT INTO recipients (list_id, email, fields)
                SELECT $1, email, {fields_sql} FROM (
                    SELECT DISTINCT ON (email) * FROM {self.rows_table} r
                    WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = r.email)
                    ORDER BY email, line
                ) AS firsts
                ORDER BY email
                {on_conflict}
                RETURNING (xmax = 0) AS inserted
            )
            SELECT count(*) FILTER (WHERE inserted) AS inserted,
                   count(*) FILTER (WHERE NOT inserted) AS updated
            FROM merged
            """,  # noqa: S608 - only generated column names and casts are interpolated
            self.list_id,
            *key_params,
            timeout=_LOAD_TIMEOUT_S,
        )


class DirectLoader:
    """Loads into an empty list: COPY straight into `recipients`, then what was set aside.

    A recipient added by the API while the COPY runs, with an address of the file, makes
    the COPY fail with a unique violation; the caller then loads again by the staging path.
    """

    def __init__(self, conn: Connection, import_id: UUID, list_id: UUID) -> None:
        self.conn = conn
        self.import_id = import_id
        self.list_id = list_id

    async def copy_recipients(self, columns: list[str], data: AsyncIterable[bytes]) -> int:
        status = await self.conn.copy_to_table(
            "recipients", source=data, columns=columns, format="binary", timeout=_LOAD_TIMEOUT_S
        )
        return _copied(status)

    async def remove_suppressed(self) -> int:
        """Suppressed addresses are not kept; returns how many were loaded and removed."""
        removed = await self.conn.fetchval(
            """
            WITH gone AS (
                -- The suppressed addresses as one array: the list's index is probed for
                -- each (a join, planned on statistics from before the COPY, may sort it).
                DELETE FROM recipients
                WHERE list_id = $1 AND email = ANY (ARRAY(SELECT email FROM suppressions))
                RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
            self.list_id,
            timeout=_LOAD_TIMEOUT_S,
        )
        return int(removed)

    async def retype_as_text(self, keys: list[str]) -> None:
        """Fields loaded as numbers or booleans in early batches that the whole file makes
        text (a later row was not a number): the JSON values become strings."""
        for key in keys:
            await self.conn.execute(
                "UPDATE recipients SET fields = fields || jsonb_build_object($2::text, fields ->> $2)"
                " WHERE list_id = $1 AND jsonb_typeof(fields -> $2) IN ('number', 'boolean')",
                self.list_id,
                key,
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


def copy_csv(rows: pa.RecordBatch) -> bytes:
    """Rows as CSV for COPY: every string quoted, so that only nulls are unquoted-empty."""
    out = pa.BufferOutputStream()
    pcsv.write_csv(
        rows, out, write_options=pcsv.WriteOptions(include_header=False, quoting_style="needed")
    )
    return out.getvalue().to_pybytes()


def _typed(column: str, kind: FieldKind) -> str:
    if kind is FieldKind.NUMBER:
        return f"{column}::numeric"
    if kind is FieldKind.BOOL:
        return f"{column}::boolean"
    # Dates stay ISO text in JSON; validation made sure each one is a real date.
    return column
