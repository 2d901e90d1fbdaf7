"""The file's batches as binary COPY data for `recipients` (or a staging table like it).

Each batch is validated, deduplicated (first row of an address wins), given its merge
fields as JSON and encoded for `COPY ... (list_id, email, fields) (FORMAT binary)`, so
that PostgreSQL takes one batch while the next is prepared (in a worker thread: pyarrow,
numpy and pgpq release the GIL for the heavy part).

Rows go to the COPY in runs of up to `RUN_ROWS` kept rows, each sorted by address. The
unique index on `(list_id, email)` is what costs most in the COPY, and rows in address order
reach it page after page instead of at random: a 930k-row COPY takes 4.5 s in 100k-row
runs, 3.4 s sorted whole and 6.5 s in file order (docs/design.md, "rows reach the COPY in sorted runs").
A run, not the whole file, so that PostgreSQL loads one run while the next is prepared.
Recipients are therefore numbered in address order within a run, not in file order.

Rejected rows cannot go into that COPY: they are spooled to a local CSV file and loaded
into `import_rejections` after it.

Merge fields are typed over the whole file, but a streamed batch is encoded before the
rest is read: it takes the types its rows and all before it allow, and `retyped_keys`
says which fields a later batch turned into text (the loader then rewrites them).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from uuid import UUID

import pyarrow as pa
import pyarrow.compute as pc

from services.importer.copy_binary import RecipientRows
from services.importer.dedupe import FirstOccurrences
from services.importer.fields_json import json_objects
from services.importer.reader import RowSource
from services.importer.validation import (
    ColumnPlan,
    FieldKind,
    FieldKinds,
    Rejection,
    validate_batch,
)

_STRING_KINDS = {FieldKind.TEXT, FieldKind.DATE}  # JSON strings either way
# Kept rows per sorted run (~50 MB of Arrow data for a CRM export of 7 columns), and the
# most merge-field JSON one run may hold, whichever comes first: a file of a few hundred
# columns makes a run of far fewer rows (and an Arrow string array holds 2 GiB at most).
RUN_ROWS = 250_000
RUN_FIELD_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class PreparedBatch:
    """One sorted run (see the module docstring) and the file rows it took."""

    copy_data: bytes  # binary COPY rows for `recipients` (no header or trailer)
    rows_read: int
    rows_rejected: int


class RowPreparer:
    """Prepares batch after batch (`next_batch`, from one thread at a time)."""

    def __init__(
        self,
        source: RowSource,
        plan: ColumnPlan,
        import_id: UUID,
        list_id: UUID,
        folder: Path,
    ) -> None:
        self.source = source
        self.plan = plan
        self.import_id = import_id
        self.kinds = FieldKinds.for_plan(plan)
        self.recipients = RecipientRows(list_id)
        self.first = FirstOccurrences()
        self.rows_valid = 0
        self.rejections_path = folder / "rejections.csv"
        self._rejections: IO[str] = self.rejections_path.open("w", newline="", encoding="utf-8")
        # Every field quoted: PostgreSQL's CSV refuses a bare carriage return, and reads
        # an unquoted empty field as NULL.
        self._rejection_writer = csv.writer(
            self._rejections, lineterminator="\n", quoting=csv.QUOTE_ALL
        )
        self._used_kinds: list[set[FieldKind]] = [set() for _ in plan.fields]

    def next_batch(self) -> PreparedBatch | None:
        """The next run's COPY data, sorted by address; None at the end of the file
        (spools closed)."""
        emails: list[pa.Array] = []
        fields: list[pa.Array] = []
        kept = rows_read = rows_rejected = field_bytes = 0
        while kept < RUN_ROWS and field_bytes < RUN_FIELD_BYTES:
            batch = next(self.source.batches, None)
            if batch is None:
                break
            validated = validate_batch(batch, self.plan, self.kinds)
            rows_read += validated.rows_read
            rows_rejected += len(validated.rejections)
            self._spool_rejections(validated.rejections)
            rows = validated.rows
            self.rows_valid += rows.num_rows
            if not rows.num_rows:
                continue
            first = pa.array(self.first.mark(rows.column("email")))
            emails.append(pc.filter(rows.column("email"), first))
            fields.append(pc.filter(self._fields(rows), first))
            kept += len(emails[-1])
            field_bytes += fields[-1].nbytes
        if not rows_read:
            self.close()
            return None
        if not kept:
            return PreparedBatch(b"", rows_read, rows_rejected)
        run_emails, run_fields = pa.concat_arrays(emails), pa.concat_arrays(fields)
        # Byte order, as the index's "C" collation compares.
        order = pc.sort_indices(run_emails)
        data = self.recipients.encode(run_emails.take(order), run_fields.take(order))
        return PreparedBatch(data, rows_read, rows_rejected)

    def _fields(self, rows: pa.RecordBatch) -> pa.Array:
        kinds = self.kinds.result(self.rows_valid)
        for used, kind in zip(self._used_kinds, kinds, strict=True):
            used.add(kind)
        columns = [rows.column(f"f{i}") for i in range(len(self.plan.fields))]
        return json_objects(columns, self.plan.keys, kinds, rows.num_rows)

    def _spool_rejections(self, rejections: list[Rejection]) -> None:
        import_id = str(self.import_id)
        self._rejection_writer.writerows(
            (import_id, r.line, r.reason, r.raw.replace("\x00", "")) for r in rejections
        )

    def retyped_keys(self) -> list[str]:
        """Fields some rows got as numbers or booleans that the whole file makes text."""
        return [
            key
            for key, used, final in zip(
                self.plan.keys, self._used_kinds, self.kinds.result(self.rows_valid), strict=True
            )
            if final in _STRING_KINDS and used - _STRING_KINDS
        ]

    def close(self) -> None:
        """Close the spool (also when leaving early, by an error)."""
        self._rejections.close()
