"""The rows an import rejected, as a CSV to fix and upload again.

The importer writes `import_rejections` for reading: one row per rejected line with its
reason and the original cells (`raw`, one CSV record), and line 1 holding the file's
header (reason `header`), so that the rejected rows come back under their own columns.

The answer is streamed page by page (keyset, no connection held between pages), and made safe to open in a
spreadsheet: a cell that starts with `=`, `+`, `-`, `@` (or a tab / carriage return) would
be run as a formula by Excel or LibreOffice, so it is prefixed with `'` (OWASP's advice
against CSV injection).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from uuid import UUID

import asyncpg
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from libs.web.problems import problem_responses
from services.api import repository
from services.api.deps import CanRead, Resources
from services.api.routes.common import not_found

router = APIRouter(prefix="/api/v1", tags=["imports"])

HEADER_LINE = 1
HEADER_REASON = "header"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Rows fetched per query, and written per chunk of the answer.
_CHUNK_ROWS = 2000
# A UTF-8 BOM, so that Excel reads the file as UTF-8 (names are rarely plain ASCII).
_BOM = "\ufeff"


def neutralise(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def parse_raw(raw: str) -> list[str]:
    """The original cells of a rejected row (stored as one CSV record)."""
    try:
        return next(csv.reader(io.StringIO(raw)), [])
    except csv.Error:
        return [raw]  # kept whole rather than lost


def csv_rows(rows: Iterable[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([neutralise(cell) for cell in row] for row in rows)
    return out.getvalue()


async def _rejected_csv(pool: asyncpg.Pool, import_id: UUID) -> AsyncIterator[str]:
    """The CSV in chunks. Each chunk is one short keyset query: no connection (and no
    transaction) is held while a slow client reads, so slow downloads cannot drain the
    pool. The rows of an import do not change once it finished, so pages agree."""
    header = await pool.fetchval(
        "SELECT raw FROM import_rejections WHERE import_id = $1 AND line = $2",
        import_id,
        HEADER_LINE,
    )
    columns = parse_raw(header) if header is not None else []
    yield _BOM + csv_rows([["line", "reason", *columns]])
    after = HEADER_LINE
    while True:
        records = await pool.fetch(
            "SELECT line, reason, raw FROM import_rejections"
            " WHERE import_id = $1 AND line > $2 ORDER BY line LIMIT $3",
            import_id,
            after,
            _CHUNK_ROWS,
        )
        if not records:
            return
        yield csv_rows([[str(r["line"]), r["reason"], *parse_raw(r["raw"])] for r in records])
        if len(records) < _CHUNK_ROWS:
            return
        after = records[-1]["line"]


@router.get(
    "/imports/{import_id}/rejected",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The rejected rows: `line`, `reason`, then the file's own columns.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **problem_responses(401, 404, 422),
    },
)
async def rejected_rows(import_id: UUID, resources: Resources, _: CanRead) -> StreamingResponse:
    """The rows the import rejected, as CSV (empty but for its header until it finishes)."""
    if await repository.get_import(resources.db, import_id) is None:
        raise not_found("import", import_id)
    return StreamingResponse(
        _rejected_csv(resources.db, import_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-rejected.csv"'},
    )
