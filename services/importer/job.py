"""One import from request to final state: fetch the file, read, validate, load, report.

Idempotent: a job already completed or failed is only reported again. Problems with the
file end the job `failed` with an error the user can act on; infrastructure errors
(database or broker unreachable) propagate, so that the request is redelivered.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg

from libs.common.blobs import BlobStore, parse_ref
from libs.common.events import ImportProgress, ImportRequested
from libs.common.logging import bound_contextvars, get_logger
from services.importer.metrics import IMPORT_ROWS, IMPORT_SECONDS, IMPORTS
from services.importer.prepare import RowPreparer
from services.importer.reader import BadFile, ReaderOptions, RowSource, open_rows
from services.importer.repository import (
    ImportRepository,
    JobState,
    ListSession,
    LoadCounts,
)
from services.importer.validation import (
    ColumnPlan,
    plan_columns,
)

log = get_logger(__name__)
T = TypeVar("T")

Publish = Callable[[ImportProgress, bool], Awaitable[None]]
"""Publishes a job's state; the flag says it is final (import.completed)."""

# Errors that say the database is unreachable or overloaded, not that the file is bad.
RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


@dataclass(frozen=True)
class ImportSettings:
    progress_interval_s: float = 0.5


def state_event(state: JobState) -> ImportProgress:
    status = (
        state.status if state.status in ("queued", "running", "completed", "failed") else "failed"
    )
    return ImportProgress(
        import_id=state.import_id,
        list_id=state.list_id,
        status=status,
        rows_total=state.rows_total,
        rows_imported=state.rows_imported,
        rows_updated=state.rows_updated,
        rows_rejected=state.rows_rejected,
        rows_duplicate=state.rows_duplicate,
        rows_suppressed=state.rows_suppressed,
        error=state.error,
    )


class Importer:
    def __init__(
        self,
        repository: ImportRepository,
        blobs: BlobStore,
        publish: Publish,
        settings: ImportSettings = ImportSettings(),
    ) -> None:
        self.repository = repository
        self.blobs = blobs
        self.publish = publish
        self.settings = settings

    async def handle(self, request: ImportRequested) -> JobState:
        with bound_contextvars(import_id=str(request.import_id), list_id=str(request.list_id)):
            state = await self.repository.open_job(request.import_id, request.list_id)
            if not state.finished:
                state = await self._run_locked(request)
            if state.finished:
                await self._discard_upload(request)
            # Published again on redelivery: the first run may have died before publishing.
            await self.publish(state_event(state), True)
            return state

    async def _discard_upload(self, request: ImportRequested) -> None:
        """Once an import finished, the uploaded file (personal data) goes: only the
        rejected rows stay, for the retention period. Again on redelivery, in case the
        first run died in between; the retention sweep catches any left over."""
        try:
            blob_id = parse_ref(request.file_ref)
        except ValueError:
            return
        await self.blobs.delete(blob_id)

    async def _run_locked(self, request: ImportRequested) -> JobState:
        async with self.repository.list_locked(request.import_id, request.list_id) as session:
            state = await session.job()
            if state.finished:
                return state
            await self.repository.mark_running(request.import_id)
            started = time.monotonic()
            run = _Run(self, request, session)
            try:
                state = await run.execute()  # settles its progress reports itself
            except BadFile as exc:
                await run.settle()
                log.info("import failed", error=str(exc), rows_read=run.rows_read)
                state = await session.fail(str(exc), run.rows_read, run.rows_rejected)
            except RETRYABLE:
                await run.settle()
                raise
            except Exception as exc:  # a bug must not redeliver the same request forever
                await run.settle()
                log.exception("import failed unexpectedly")
                message = f"internal error while importing ({type(exc).__name__}); try again"
                state = await session.fail(message, run.rows_read, run.rows_rejected)
            IMPORTS.labels(state.status).inc()
            IMPORT_SECONDS.observe(time.monotonic() - started)
            log.info(
                "import finished",
                status=state.status,
                rows_total=state.rows_total,
                rows_imported=state.rows_imported,
                rows_updated=state.rows_updated,
                rows_rejected=state.rows_rejected,
                rows_duplicate=state.rows_duplicate,
                rows_suppressed=state.rows_suppressed,
            )
            return state


class _Run:
    """The state of one import while it runs (rows read so far, for progress and errors)."""

    def __init__(self, importer: Importer, request: ImportRequested, session: ListSession):
        self.importer = importer
        self.request = request
        self.session = session
        self.rows_read = 0
        self.rows_rejected = 0
        self._last_progress = 0.0
        self._reporting: asyncio.Task[None] | None = None

    async def execute(self) -> JobState:
        if not await self.session.lock_list():
            raise BadFile(f"list {self.request.list_id} does not exist")
        with tempfile.TemporaryDirectory(prefix="mailfleet-import-") as name:
            folder = Path(name)
            path = await self._download(folder)
            counts = None
            if await self.session.list_is_empty():
                counts = await self._load(path, folder, into_empty_list=True)
            if counts is None:
                counts = await self._load(path, folder, into_empty_list=False)
                assert counts is not None, "only a load into an empty list falls back"
        _count_rows(counts)
        # A progress report still running would wait for this transaction's lock on the
        # job's row (taken by `finish`) while the transaction waits for it: settle first.
        await self.settle()
        if self.request.consent is not None:
            consent = self.request.consent
            await self.session.record_consent(consent.basis, consent.source or "import")
        return await self.session.finish(counts)

    async def _open(self, path: Path) -> tuple[RowSource, ColumnPlan]:
        options = ReaderOptions(
            encoding=self.request.encoding,
            delimiter=self.request.delimiter,
            sheet=self.request.sheet,
        )
        source = await asyncio.to_thread(open_rows, path, options)
        plan = plan_columns(source.header, self.request.mapping.email)
        log.info(
            "reading file",
            format=source.file_format.value,
            encoding=source.encoding,
            delimiter=source.delimiter,
            columns=len(source.header),
        )
        return source, plan

    async def _load(self, path: Path, folder: Path, *, into_empty_list: bool) -> LoadCounts | None:
        """Read, prepare and load the whole file. Into an empty list, the rows are COPYed
        straight into `recipients`; None when a recipient added meanwhile collides (nothing
        of the attempt is kept: load again, with `into_empty_list` False)."""
        self.rows_read = self.rows_rejected = 0
        source, plan = await self._open(path)
        rows = RowPreparer(source, plan, self.request.import_id, self.request.list_id, folder)
        chunks = self._prepared_chunks(rows)
        columns = rows.recipients.columns
        try:
            async with self.session.load() as loader:
                if into_empty_list:
                    copied = await loader.copy_recipients(columns, chunks)
                    await loader.retype_as_text(rows.retyped_keys(), staged=False)
                    suppressed = await loader.remove_suppressed()
                    inserted, updated = copied - suppressed, 0
                else:
                    await loader.stage(columns, chunks)
                    await loader.retype_as_text(rows.retyped_keys(), staged=True)
                    inserted, updated, suppressed = await loader.upsert_staged()
                header = source.header if self.rows_rejected else None
                await loader.add_rejections(rows.rejections_path, header)
        except asyncpg.UniqueViolationError:
            if not into_empty_list:
                raise
            log.info("a recipient was added during the import; loading again by staging")
            return None
        finally:
            await chunks.aclose()  # a COPY that failed: wait for the batch being prepared
            rows.close()
        return LoadCounts(
            rows_total=self.rows_read,
            rows_imported=inserted,
            rows_updated=updated,
            rows_rejected=self.rows_rejected,
            rows_duplicate=rows.rows_valid - inserted - updated - suppressed,
            rows_suppressed=suppressed,
        )

    async def _prepared_chunks(self, rows: RowPreparer) -> AsyncGenerator[bytes, None]:
        """The COPY stream: each batch prepared in a thread while the last one is sent."""
        yield rows.recipients.header()
        async with aclosing(_one_ahead(rows.next_batch)) as batches:
            async for batch in batches:
                self.rows_read += batch.rows_read
                self.rows_rejected += batch.rows_rejected
                if batch.copy_data:
                    yield batch.copy_data
                await self._progress()
        yield rows.recipients.trailer()

    async def _download(self, folder: Path) -> Path:
        """Copy the claim-checked file to local disk: pyarrow and calamine read files."""
        try:
            blob_id = parse_ref(self.request.file_ref)
        except ValueError as exc:
            raise BadFile(str(exc)) from exc
        if await self.importer.blobs.size(blob_id) is None:
            raise BadFile("the uploaded file is missing (it was deleted or never completed)")
        path = folder / "upload"
        with path.open("wb") as out:
            async for chunk in self.importer.blobs.read(blob_id):
                out.write(chunk)
        return path

    async def _progress(self) -> None:
        """Report rows processed so far, at most every `progress_interval_s`, without
        holding up the load: the report runs beside it (a broker that takes 100 ms to
        acknowledge would otherwise stall the COPY stream each time), one at a time."""
        now = time.monotonic()
        if now - self._last_progress < self.importer.settings.progress_interval_s:
            return
        if self._reporting is not None and not self._reporting.done():
            return
        self._last_progress = now
        self._reporting = asyncio.create_task(self._report(self.rows_read, self.rows_rejected))

    async def settle(self) -> None:
        """Wait for a progress report still running (before the final state is told)."""
        if self._reporting is not None:
            await asyncio.wait([self._reporting])

    async def _report(self, rows_read: int, rows_rejected: int) -> None:
        request = self.request
        try:
            await self.importer.repository.record_progress(
                request.import_id, rows_read, rows_rejected
            )
            event = ImportProgress(
                import_id=request.import_id,
                list_id=request.list_id,
                status="running",
                rows_total=rows_read,
                rows_rejected=rows_rejected,
            )
            await self.importer.publish(event, False)
        except Exception:  # progress is informative: the import goes on without it
            log.warning("progress report failed", rows_read=rows_read, exc_info=True)


async def _one_ahead(produce: Callable[[], T | None]) -> AsyncGenerator[T, None]:
    """`produce()` until it returns None, each call in a worker thread one step ahead of
    the consumer (pyarrow releases the GIL: the next batch is read while this one loads)."""
    pending = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        # Shielded: a cancelled import must not stop waiting for a thread that still
        # holds the file (the folder is removed after this returns).
        while (item := await asyncio.shield(pending)) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(produce))
            yield item
    finally:
        if not pending.done():
            await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()  # retrieved: an error of a read never used is moot


def _count_rows(counts: LoadCounts) -> None:
    IMPORT_ROWS.labels("imported").inc(counts.rows_imported)
    IMPORT_ROWS.labels("updated").inc(counts.rows_updated)
    IMPORT_ROWS.labels("rejected").inc(counts.rows_rejected)
    IMPORT_ROWS.labels("duplicate").inc(counts.rows_duplicate)
    IMPORT_ROWS.labels("suppressed").inc(counts.rows_suppressed)
