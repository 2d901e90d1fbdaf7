"""Merge fields as JSON object text, built column by column with pyarrow (no Python per row).

PostgreSQL's `jsonb` takes the text as it is: `{"first_name":"Zoë","age":33}`. Numbers
and booleans are written bare; every other value is a JSON string, escaped here.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.importer.arrow_bytes import string_bytes
from services.importer.validation import FieldKind

_RARE_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
_SHORT_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))


def _needs_escape(values: pa.Array) -> bool:
    """Whether any value holds a quote, a backslash or a control character: one numpy
    pass over the bytes (a regex per value costs ten times more)."""
    _, data = string_bytes(values)
    return bool(np.any((data < 0x20) | (data == 0x22) | (data == 0x5C)))


def json_string_bodies(values: pa.Array) -> pa.Array:
    """Each value escaped for use between JSON's double quotes."""
    if not _needs_escape(values):
        return values  # the usual case: nothing to escape
    escaped = values
    for raw, escape in _SHORT_ESCAPES:  # backslash first: the others add backslashes
        escaped = pc.replace_substring(escaped, raw, escape)
    rare = pc.match_substring_regex(values, _RARE_CONTROL)
    if pc.any(rare).as_py():
        # Other control characters take the \u00XX form; few cells hold any.
        bodies = [
            json.dumps(v, ensure_ascii=False)[1:-1] for v in pc.filter(values, rare).to_pylist()
        ]
        escaped = pc.replace_with_mask(escaped, rare, pa.array(bodies, pa.string()))
    return escaped


def json_objects(
    columns: list[pa.Array], keys: list[str], kinds: list[FieldKind], rows: int
) -> pa.Array:
    """One JSON object per row: `keys[i]` holds `columns[i]`, typed by `kinds[i]`."""
    if not columns:
        return pa.array(["{}"] * rows, pa.string())
    parts: list[pa.Array | str] = []
    for position, (column, key, kind) in enumerate(zip(columns, keys, kinds, strict=True)):
        _literal(parts, ("{" if position == 0 else ",") + json.dumps(key, ensure_ascii=False) + ":")
        if kind in (FieldKind.NUMBER, FieldKind.BOOL):
            parts.append(column)  # validation admits only JSON's number syntax, true, false
        else:
            _literal(parts, '"')
            parts.append(json_string_bodies(column))
            _literal(parts, '"')
    _literal(parts, "}")
    return pc.binary_join_element_wise(*parts, "")


def _literal(parts: list[pa.Array | str], text: str) -> None:
    """Append literal text, merged with a literal before it (fewer columns to join)."""
    if parts and isinstance(parts[-1], str):
        parts[-1] += text
    else:
        parts.append(text)
