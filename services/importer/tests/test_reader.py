"""Reading files: formats, encodings, delimiters, line numbers and broken input."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from services.importer.reader import (
    BadFile,
    FileFormat,
    ReaderOptions,
    RowSource,
    detect_delimiter,
    detect_encoding,
    open_rows,
)
from services.importer.tests.files import xlsx, zip_bomb


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "upload"
    path.write_bytes(data)
    return path


def _rows(source: RowSource) -> list[tuple[int, list[str]]]:
    out = []
    for batch in source.batches:
        for line, row in zip(batch.lines, batch.cells.to_pylist(), strict=True):
            out.append((line, list(row.values())))
    return out


def _malformed(source: RowSource) -> list[tuple[int, str]]:
    return [(m.line, m.reason) for batch in source.batches for m in batch.malformed]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_detected(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["email", "first_name", "city"]) + "\n"
    text += delimiter.join(["a@x.com", "Ann", "Köln, DE" if delimiter != "," else "Köln"]) + "\n"
    source = open_rows(_write(tmp_path, text.encode()))
    assert source.delimiter == delimiter
    assert source.header == ["email", "first_name", "city"]
    assert _rows(source)[0][1][:2] == ["a@x.com", "Ann"]


def test_single_column_file_reads_with_comma(tmp_path: Path) -> None:
    source = open_rows(_write(tmp_path, b"email\na@x.com\nb@x.com\n"))
    assert source.header == ["email"]
    assert [row for _, row in _rows(source)] == [["a@x.com"], ["b@x.com"]]


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    source = open_rows(_write(tmp_path, "\ufeffEmail,Name\nü@x.de,Zoë\n".encode()))
    assert source.header == ["Email", "Name"]
    assert _rows(source) == [(2, ["ü@x.de", "Zoë"])]


def test_utf16_with_bom(tmp_path: Path) -> None:
    data = "email;name\na@x.com;Jörg\n".encode("utf-16")
    source = open_rows(_write(tmp_path, data))
    assert source.encoding == "utf-16"
    assert _rows(source) == [(2, ["a@x.com", "Jörg"])]


def test_windows_1252_is_detected(tmp_path: Path) -> None:
    data = "email,name\na@x.com,Renée – “Café”\n".encode("cp1252")
    source = open_rows(_write(tmp_path, data))
    assert source.encoding == "cp1252"
    assert _rows(source) == [(2, ["a@x.com", "Renée – “Café”"])]


def test_encoding_chosen_by_user_wins(tmp_path: Path) -> None:
    data = "email,name\na@x.com,Ærø\n".encode("latin-1")
    source = open_rows(_write(tmp_path, data), ReaderOptions(encoding="latin-1"))
    assert _rows(source) == [(2, ["a@x.com", "Ærø"])]


def test_detect_encoding_and_delimiter_helpers() -> None:
    assert detect_encoding("a,b\nü,x\n".encode()) == "utf-8"
    assert detect_encoding(b"\xef\xbb\xbfa") == "utf-8"
    assert detect_encoding(b"\xff\xfea\x00") == "utf-16"
    assert detect_encoding(b"caf\xe9") == "cp1252"
    assert detect_delimiter('a;"b;c";d\n1;2;3\n') == ";"


def test_quoted_newlines_keep_record_numbers(tmp_path: Path) -> None:
    data = b'email,note\na@x.com,"two\nlines"\nb@x.com,plain\n'
    source = open_rows(_write(tmp_path, data))
    assert _rows(source) == [(2, ["a@x.com", "two\nlines"]), (3, ["b@x.com", "plain"])]


def test_rows_with_wrong_field_count_are_reported_with_their_line(tmp_path: Path) -> None:
    data = b"email,name\na@x.com,A\nb@x.com\nc@x.com,C,extra\nd@x.com,D\n"
    source = open_rows(_write(tmp_path, data))
    batches = list(source.batches)
    lines = [line for b in batches for line in b.lines]
    malformed = [(m.line, m.reason, m.raw) for b in batches for m in b.malformed]
    assert lines == [2, 5]
    assert malformed == [
        (3, "expected 2 fields, found 1", "b@x.com"),
        (4, "expected 2 fields, found 3", "c@x.com,C,extra"),
    ]


def test_gzip_csv(tmp_path: Path) -> None:
    source = open_rows(_write(tmp_path, gzip.compress(b"email\na@x.com\n")))
    assert source.file_format is FileFormat.CSV_GZIP
    assert _rows(source) == [(2, ["a@x.com"])]


def test_truncated_gzip_fails_clearly(tmp_path: Path) -> None:
    data = gzip.compress(b"email,name\n" + b"someone@example.com,Someone\n" * 20000)
    path = _write(tmp_path, data[: len(data) // 2])
    with pytest.raises(BadFile, match="gzip"):
        source = open_rows(path)
        list(source.batches)


def test_xlsx_first_sheet_and_named_sheet(tmp_path: Path) -> None:
    book = xlsx(
        {
            "People": [["Email", "Age", "VIP"], ["a@x.com", 30, True], [], ["b@x.com", 1.5, False]],
            "Other": [["email"], ["o@x.com"]],
        }
    )
    path = _write(tmp_path, book)
    source = open_rows(path)
    assert source.file_format is FileFormat.SPREADSHEET
    assert _rows(source) == [(2, ["a@x.com", "30", "true"]), (4, ["b@x.com", "1.5", "false"])]
    assert _rows(open_rows(path, ReaderOptions(sheet="Other"))) == [(2, ["o@x.com"])]
    with pytest.raises(BadFile, match="no sheet named 'Missing'"):
        open_rows(path, ReaderOptions(sheet="Missing"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (bytes(range(256)) * 40, "binary"),
        (b"PK\x03\x04" + b"\x00garbage" * 100, "not a valid XLSX"),
        (zip_bomb(), "zip bomb"),
    ],
    ids=["empty", "blank-lines", "binary-junk", "not-a-zip", "zip-bomb"],
)
def test_bad_files_fail_with_a_clear_error(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(BadFile, match=message):
        source = open_rows(_write(tmp_path, data))
        list(source.batches)


def test_invalid_utf8_after_the_sample_fails_clearly(tmp_path: Path) -> None:
    data = b"email,name\n" + b"a@x.com,plain\n" * 10000 + b"b@x.com,caf\xe9\n"
    with pytest.raises(BadFile, match="not valid utf-8"):
        list(open_rows(_write(tmp_path, data)).batches)
