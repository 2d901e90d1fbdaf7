"""Column mapping, address validation and field typing, without a database."""

from __future__ import annotations

import pyarrow as pa
import pytest

from services.importer.reader import BadFile, MalformedRow, RowBatch
from services.importer.validation import (
    FieldKind,
    FieldKinds,
    field_key,
    normalise_addresses,
    plan_columns,
    rejection_reasons,
    validate_batch,
)


def _batch(rows: list[list[str]], malformed: list[MalformedRow] | None = None) -> RowBatch:
    width = len(rows[0])
    columns = [pa.array([r[i] for r in rows], pa.string()) for i in range(width)]
    cells = pa.RecordBatch.from_arrays(columns, names=[f"c{i}" for i in range(width)])
    return RowBatch(cells, list(range(2, len(rows) + 2)), malformed or [])


@pytest.mark.parametrize(
    ("header", "index"),
    [
        (["Email", "name"], 0),
        (["name", "E-mail"], 1),
        (["id", "email_address"], 1),
        (["EMAIL ADDRESS", "x"], 0),
        (["first", "Mail"], 1),
    ],
)
def test_email_column_found_case_insensitively(header: list[str], index: int) -> None:
    assert plan_columns(header).email_index == index


def test_email_column_named_by_mapping() -> None:
    plan = plan_columns(["Contact", "Email"], requested_email="contact")
    assert plan.email_index == 0
    assert plan.keys == ["email"]


def test_missing_email_column_names_the_headers_found() -> None:
    with pytest.raises(BadFile) as caught:
        plan_columns(["a", "b", "c"])
    assert str(caught.value) == (
        "no email column: found headers 'a', 'b', 'c'; "
        "name the column 'email' or choose it with mapping.email"
    )
    with pytest.raises(BadFile, match="no column named 'addr' \\(from mapping.email\\)"):
        plan_columns(["a", "b"], requested_email="addr")


def test_headerless_file_is_recognised() -> None:
    with pytest.raises(BadFile, match="no header row"):
        plan_columns(["ann@example.com", "Ann"])


def test_field_keys_are_template_friendly_and_name_columns_recognised() -> None:
    assert field_key("First Name", 1) == "first_name"
    assert field_key("FirstName", 1) == "first_name"
    assert field_key("Surname", 1) == "last_name"
    assert field_key("  ", 3) == "column_4"
    plan = plan_columns(["Email", "Name", "city", "City"])
    assert plan.keys == ["name", "city", "city_2", "first_name"]
    assert plan.fields[-1].first_word and plan.fields[-1].index == 1


@pytest.mark.parametrize(
    ("raw", "normalised", "reason"),
    [
        ("  Bob.Smith+news@Example.COM ", "bob.smith+news@example.com", None),
        ("o'neil@sub.example.co.uk", "o'neil@sub.example.co.uk", None),
        ("x@bücher.de", "x@bücher.de", None),
        ("x@xn--bcher-kva.de", "x@xn--bcher-kva.de", None),
        ("", "", "missing email address"),
        ("no-at-sign", "no-at-sign", "invalid email address"),
        ("a@localhost", "a@localhost", "invalid email address"),
        ("a..b@x.com", "a..b@x.com", "invalid email address"),
        ("a@-x.com", "a@-x.com", "invalid email address"),
        ("a b@x.com", "a b@x.com", "invalid email address"),
        ("a@b@x.com", "a@b@x.com", "invalid email address"),
        ("a" * 65 + "@x.com", "a" * 65 + "@x.com", "part before @ longer than 64 characters"),
        ("a@" + ("b" * 60 + ".") * 5 + "com", None, "email address longer than 254 characters"),
    ],
)
def test_addresses_are_normalised_and_checked(
    raw: str, normalised: str | None, reason: str | None
) -> None:
    result = normalise_addresses(pa.array([raw]))
    if normalised is not None:
        assert result.to_pylist() == [normalised]
    assert rejection_reasons(result).to_pylist() == [reason]


def test_validate_batch_splits_valid_rows_from_rejections() -> None:
    plan = plan_columns(["email", "first_name", "age"])
    kinds = FieldKinds.for_plan(plan)
    malformed = [MalformedRow(9, "expected 3 fields, found 1", "x")]
    batch = _batch(
        [
            ["A@X.com", " Ann ", "30"],
            ["=cmd|' /C calc'!A0", "Evil", "1"],
            ["b@x.com", "Bo\x00b", "41"],
        ],
        malformed,
    )
    result = validate_batch(batch, plan, kinds)
    assert result.rows.to_pylist() == [
        {"line": 2, "email": "a@x.com", "f0": "Ann", "f1": "30"},
        {"line": 4, "email": "b@x.com", "f0": "Bob", "f1": "41"},
    ]
    assert [(r.line, r.reason, r.raw) for r in result.rejections] == [
        (9, "expected 3 fields, found 1", "x"),
        (3, "invalid email address", "=cmd|' /C calc'!A0,Evil,1"),
    ]
    assert result.rows_read == 4
    assert kinds.result(2) == [FieldKind.TEXT, FieldKind.NUMBER]


def test_field_kinds_need_every_value_to_agree() -> None:
    plan = plan_columns(["email", "zip", "score", "vip", "joined", "half"])
    kinds = FieldKinds.for_plan(plan)
    validate_batch(
        _batch(
            [
                ["a@x.com", "01234", "1.5", "true", "2024-02-29", "3"],
                ["b@x.com", "12345", "-2", "false", "2023-12-31", ""],
            ]
        ),
        plan,
        kinds,
    )
    assert kinds.result(2) == [
        FieldKind.TEXT,  # a leading zero is an identifier, not a number
        FieldKind.NUMBER,
        FieldKind.BOOL,
        FieldKind.DATE,
        FieldKind.TEXT,  # an empty cell keeps the column text
    ]
    validate_batch(_batch([["c@x.com", "1", "2", "true", "2023-02-30", "4"]]), plan, kinds)
    assert kinds.result(3)[3] is FieldKind.TEXT  # 30 February is no date


def test_only_values_that_read_back_exactly_are_typed() -> None:
    plan = plan_columns(["email", "zero", "small", "shout", "quiet"])
    kinds = FieldKinds.for_plan(plan)
    validate_batch(
        _batch(
            [
                ["a@x.com", "-0", "-0.05", "TRUE", "false"],
                ["b@x.com", "0.0", "0", "FALSE", "true"],
            ]
        ),
        plan,
        kinds,
    )
    assert kinds.result(2) == [
        FieldKind.TEXT,  # -0 would read back as 0
        FieldKind.NUMBER,
        FieldKind.TEXT,  # TRUE would read back as true
        FieldKind.BOOL,
    ]
