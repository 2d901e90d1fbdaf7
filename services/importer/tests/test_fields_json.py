"""Merge fields as JSON text: what PostgreSQL's jsonb and json.loads read back."""

from __future__ import annotations

import json

import pyarrow as pa

from services.importer.fields_json import json_objects
from services.importer.validation import FieldKind


def _objects(columns: list[list[str]], keys: list[str], kinds: list[FieldKind]) -> list[object]:
    arrays = [pa.array(c, pa.string()) for c in columns]
    rows = len(columns[0]) if columns else 2
    return [json.loads(text) for text in json_objects(arrays, keys, kinds, rows).to_pylist()]


def test_text_that_needs_escaping_round_trips() -> None:
    awkward = [
        'say "hi"',
        "back\\slash",
        "two\nlines\r\n",
        "tab\there",
        "bell\x07 and \x1f",
        "Zoë 山田 😀",
        "",
    ]
    objects = _objects([awkward], ["note"], [FieldKind.TEXT])
    assert objects == [{"note": value} for value in awkward]


def test_numbers_booleans_and_dates_are_typed() -> None:
    objects = _objects(
        [["31", "-2.50"], ["true", "false"], ["2024-02-29", "1999-12-31"], ["x", "y"]],
        ["age", "vip", "born", 'weird "key"'],
        [FieldKind.NUMBER, FieldKind.BOOL, FieldKind.DATE, FieldKind.TEXT],
    )
    assert objects == [
        {"age": 31, "vip": True, "born": "2024-02-29", 'weird "key"': "x"},
        {"age": -2.5, "vip": False, "born": "1999-12-31", 'weird "key"': "y"},
    ]


def test_no_fields_gives_empty_objects() -> None:
    assert _objects([], [], []) == [{}, {}]
