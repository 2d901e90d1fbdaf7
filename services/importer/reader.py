"""Reading an uploaded file as batches of text rows: CSV (plain or gzip) and spreadsheets.

The format is recognised from the bytes, not the file name (a spreadsheet renamed `.csv`
still imports). CSV is parsed by pyarrow's streaming reader, so memory stays bounded
whatever the file size; every cell is read as text, and typing happens in validation.

Row numbers (`line`) count records the way a spreadsheet shows them: the header is line 1,
the first data row line 2. Every problem with the file itself raises `BadFile`, whose
message is shown to the user as the import's error.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import zipfile
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv

# How much of the file is looked at to recognise encoding and delimiter.
SAMPLE_BYTES = 64 * 1024
# pyarrow block size, single-threaded (threads only added contention on 2 cores). A batch
# is one block: 1 MiB (~18k rows) lets PostgreSQL start COPYing soon and keeps the two
# cores busy together; 1M rows import in 3.5 s with it, 3.9 s with 4 MiB, 3.5 s with 512 KiB.
CSV_BLOCK_BYTES = 1024 * 1024
# Spreadsheet rows per batch: small enough that the COPY starts early (measured as CSV).
SHEET_BATCH_ROWS = 20_000
DELIMITERS = (",", ";", "\t", "|")
# A spreadsheet whose parts expand beyond this, or by more than this ratio, is refused
# before it is opened: a zip bomb would otherwise exhaust the importer's memory.
MAX_SHEET_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
MAX_SHEET_COMPRESSION_RATIO = 100

_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class BadFile(Exception):
    """The file cannot be imported; the message tells the user what to fix."""


class FileFormat(StrEnum):
    CSV = "csv"
    CSV_GZIP = "csv.gz"
    SPREADSHEET = "spreadsheet"


@dataclass(frozen=True)
class ReaderOptions:
    """Choices a user may make instead of detection."""

    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None


@dataclass(frozen=True)
class MalformedRow:
    line: int
    reason: str
    raw: str


@dataclass(frozen=True)
class RowBatch:
    """Consecutive data rows: one text column per header column, and each row's line."""

    cells: pa.RecordBatch
    lines: list[int]
    malformed: list[MalformedRow] = field(default_factory=list)


@dataclass
class RowSource:
    """An opened file: its header, how it was read, and a one-pass iterator of batches."""

    header: list[str]
    file_format: FileFormat
    encoding: str | None
    delimiter: str | None
    batches: Iterator[RowBatch]


def open_rows(path: Path, options: ReaderOptions = ReaderOptions()) -> RowSource:
    """Recognise the file's format and open it for reading."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        raise BadFile("the file is empty")
    if head.startswith(b"\x1f\x8b"):
        return _open_csv(path, options, FileFormat.CSV_GZIP)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\xd0\xcf\x11\xe0"):
        return _open_spreadsheet(path, options, is_zip=head.startswith(b"PK"))
    return _open_csv(path, options, FileFormat.CSV)


# ----- CSV -----


def _read_sample(path: Path, file_format: FileFormat) -> bytes:
    try:
        if file_format is FileFormat.CSV_GZIP:
            with gzip.open(path, "rb") as stream:
                return stream.read(SAMPLE_BYTES)
        with path.open("rb") as handle:
            return handle.read(SAMPLE_BYTES)
    except (OSError, EOFError) as exc:
        raise BadFile(f"the gzip file is corrupt or truncated ({exc})") from exc


def detect_encoding(sample: bytes, *, whole_file: bool = True) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM, else Windows-1252 / Latin-1."""
    if sample.startswith(_UTF8_BOM):
        return "utf-8"
    if sample.startswith(_UTF16_BOMS):
        return "utf-16"
    if b"\x00" in sample:
        raise BadFile("the file is not a CSV or XLSX file (it holds binary data)")
    try:
        # A sample cut from a larger file may end in the middle of a character.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=whole_file)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _decode_sample(sample: bytes, encoding: str) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    text = decoder.decode(sample, final=False)
    return text.removeprefix("\ufeff")


def _looks_binary(text: str) -> bool:
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\r\n")
    return controls > max(2, len(text) // 100)


def _complete_records(text: str, delimiter: str, limit: int = 50) -> list[list[str]]:
    """The first records of the sample, without the last one (it may be cut off)."""
    lines = text.splitlines(keepends=True)
    if len(lines) > 1:
        text = "".join(lines[:-1])
    records = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
    return records[:limit]


def detect_delimiter(text: str) -> str:
    """The candidate that splits the header into most fields, consistently across rows."""
    best, best_score = ",", (0, 0)
    for delimiter in DELIMITERS:
        try:
            records = _complete_records(text, delimiter)
        except csv.Error:
            continue
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        consistent = sum(1 for row in records if len(row) == width)
        score = (consistent, width)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _open_csv(path: Path, options: ReaderOptions, file_format: FileFormat) -> RowSource:
    sample = _read_sample(path, file_format)
    if not sample.strip():
        raise BadFile("the file is empty")
    whole_file = len(sample) < SAMPLE_BYTES
    encoding = options.encoding or detect_encoding(sample, whole_file=whole_file)
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise BadFile(f"unknown encoding {encoding!r}; use e.g. utf-8 or cp1252") from exc
    text = _decode_sample(sample, encoding)
    if _looks_binary(text):
        raise BadFile("the file is not a CSV or XLSX file (it holds binary data)")
    if options.delimiter is not None and (
        len(options.delimiter) != 1 or options.delimiter in '"\r\n'
    ):
        raise BadFile(f"the delimiter must be one character, not {options.delimiter!r}")
    delimiter = options.delimiter or detect_delimiter(text)
    try:
        header_records = (
            _complete_records(text, delimiter, limit=1)
            or list(csv.reader(io.StringIO(text), delimiter=delimiter))[:1]
        )
    except csv.Error as exc:
        raise BadFile(f"the header row cannot be read: {exc}") from exc
    if not header_records or not any(cell.strip() for cell in header_records[0]):
        raise BadFile("the file has no header row")
    header = [cell.strip() for cell in header_records[0]]
    return RowSource(
        header=header,
        file_format=file_format,
        encoding=encoding,
        delimiter=delimiter,
        batches=_csv_batches(path, file_format, encoding, delimiter, len(header)),
    )


class _LineCounter:
    """Gives each parsed row its line, accounting for the malformed rows pyarrow skips.

    pyarrow reports a skipped row's record number (header = 1) to the handler and leaves
    it out of the batches, so good row i sits at the i-th line not taken by a skipped one.
    """

    def __init__(self) -> None:
        self.rows_seen = 0
        self._skipped_lines: list[int] = []
        self._shifted: list[int] = []  # skipped line minus how many were skipped before it
        self.pending: list[MalformedRow] = []

    def skip(self, line: int, reason: str, raw: str) -> None:
        self._skipped_lines.append(line)
        self._shifted.append(line - len(self._shifted))
        self.pending.append(MalformedRow(line, reason, raw))

    def next_lines(self, count: int) -> list[int]:
        start = self.rows_seen + 2
        self.rows_seen += count
        if not self._shifted:
            return list(range(start, start + count))
        shifted = self._shifted
        return [n + bisect_right(shifted, n) for n in range(start, start + count)]

    def take_malformed(self) -> list[MalformedRow]:
        taken, self.pending = self.pending, []
        return taken


def _csv_batches(
    path: Path, file_format: FileFormat, encoding: str, delimiter: str, width: int
) -> Iterator[RowBatch]:
    names = [f"c{i}" for i in range(width)]
    counter = _LineCounter()

    def on_invalid_row(row: Any) -> str:
        line = int(row.number) if row.number is not None else counter.rows_seen + 2
        counter.skip(
            line,
            f"expected {row.expected_columns} fields, found {row.actual_columns}",
            _as_csv_record(row.text, delimiter),
        )
        return "skip"

    source: Any = str(path)
    if file_format is FileFormat.CSV_GZIP:
        source = pa.input_stream(str(path), compression="gzip")
    try:
        reader = pcsv.open_csv(
            source,
            read_options=pcsv.ReadOptions(
                use_threads=False,
                block_size=CSV_BLOCK_BYTES,
                skip_rows=1,
                column_names=names,
                encoding=encoding,
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter,
                newlines_in_values=True,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            lines = counter.next_lines(batch.num_rows)
            yield RowBatch(batch, lines, counter.take_malformed())
    except (pa.ArrowException, EOFError, OSError) as exc:
        # Never OSError upwards: the job would take a broken file for a retryable outage.
        raise BadFile(_describe_csv_error(exc, file_format, encoding)) from exc
    if counter.pending:
        empty = _text_batch([[] for _ in names], _text_schema(names))
        yield RowBatch(empty, [], counter.take_malformed())


def csv_record(cells: list[str]) -> str:
    """Cells as one comma-separated CSV record (how rejected rows keep their cells)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


def _as_csv_record(text: str, delimiter: str) -> str:
    """A row's text in the file's own delimiter, re-written as a comma-separated record."""
    try:
        cells = next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
    except csv.Error:
        return csv_record([text])
    return csv_record(cells)


def _text_schema(names: list[str]) -> pa.Schema:
    return pa.schema([(name, pa.string()) for name in names])


def _describe_csv_error(exc: Exception, file_format: FileFormat, encoding: str) -> str:
    message = str(exc)
    if "UTF8" in message or "utf8" in message or "decode" in message.lower():
        return (
            f"the file is not valid {encoding} text: save it as UTF-8, "
            "or choose its encoding (e.g. cp1252)"
        )
    if "straddling" in message:
        return (
            f"a row is longer than {CSV_BLOCK_BYTES // 1024} KiB, or a quote is never"
            " closed: check the quotes of the file"
        )
    if file_format is FileFormat.CSV_GZIP:
        return f"the gzip file is corrupt or truncated ({message})"
    return f"the CSV cannot be parsed: {message}"


# ----- spreadsheets (XLSX, XLS, ODS) -----


def _check_zip(path: Path) -> None:
    """Refuse what is not a zip archive, and archives that would expand too far."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadFile("the file is not a valid XLSX workbook (broken zip archive)") from exc
    unpacked = sum(entry.file_size for entry in entries)
    packed = sum(entry.compress_size for entry in entries) or 1
    if unpacked > MAX_SHEET_UNCOMPRESSED_BYTES or (
        unpacked > 10 * 1024 * 1024 and unpacked / packed > MAX_SHEET_COMPRESSION_RATIO
    ):
        raise BadFile(
            f"the workbook expands to {unpacked // (1024 * 1024)} MB "
            "(a zip bomb, or too large to import): save it as CSV instead"
        )


def _open_spreadsheet(path: Path, options: ReaderOptions, *, is_zip: bool) -> RowSource:
    # Imported here so that CSV-only use does not load the Rust extension.
    import python_calamine

    if is_zip:  # XLSX and ODS; legacy XLS is an OLE file, not a zip
        _check_zip(path)
    try:
        workbook = python_calamine.CalamineWorkbook.from_path(str(path))
        if options.sheet:
            if options.sheet not in workbook.sheet_names:
                raise BadFile(
                    f"no sheet named {options.sheet!r}: the workbook has "
                    + ", ".join(repr(name) for name in workbook.sheet_names)
                )
            sheet = workbook.get_sheet_by_name(options.sheet)
        else:
            if not workbook.sheet_names:
                raise BadFile("the workbook has no sheets")
            sheet = workbook.get_sheet_by_index(0)
        first_row = sheet.start[0] if sheet.start else 0
        rows = iter(sheet.iter_rows())
        header_cells = next(rows, None)
    except BadFile:
        raise
    except Exception as exc:  # calamine raises several error types for broken workbooks
        raise BadFile(f"the workbook cannot be read: {exc}") from exc
    if header_cells is None or not any(_cell_text(cell).strip() for cell in header_cells):
        raise BadFile("the sheet is empty or has no header row")
    header = [_cell_text(cell).strip() for cell in header_cells]
    return RowSource(
        header=header,
        file_format=FileFormat.SPREADSHEET,
        encoding=None,
        delimiter=None,
        batches=_sheet_batches(rows, len(header), first_row + 2),
    )


def _cell_text(value: object) -> str:
    """A cell as the text a user sees: integral floats without '.0', dates in ISO form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


def _sheet_batches(rows: Iterator[list[Any]], width: int, first_line: int) -> Iterator[RowBatch]:
    names = [f"c{i}" for i in range(width)]
    schema = _text_schema(names)
    columns: list[list[str]] = [[] for _ in names]
    lines: list[int] = []
    malformed: list[MalformedRow] = []
    to_text: Callable[[object], str] = _cell_text
    try:
        for offset, row in enumerate(rows):
            cells = [to_text(cell) for cell in row]
            if not any(cells):
                continue  # blank rows are layout, not data
            line = first_line + offset
            if len(cells) > width and any(cells[width:]):
                malformed.append(
                    MalformedRow(
                        line, f"expected {width} fields, found {len(cells)}", csv_record(cells)
                    )
                )
                continue
            cells = (cells + [""] * width)[:width]
            for column, cell in zip(columns, cells, strict=True):
                column.append(cell)
            lines.append(line)
            if len(lines) >= SHEET_BATCH_ROWS:
                yield RowBatch(_text_batch(columns, schema), lines, malformed)
                columns, lines, malformed = [[] for _ in names], [], []
    except Exception as exc:  # calamine errors surface while iterating, too
        raise BadFile(f"the workbook cannot be read: {exc}") from exc
    if lines or malformed:
        yield RowBatch(_text_batch(columns, schema), lines, malformed)


def _text_batch(columns: list[list[str]], schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in columns], schema=schema)
