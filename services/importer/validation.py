"""Which column is what, and which rows hold a usable address: vectorised with pyarrow.

Addresses are trimmed and lower-cased (the list's dedupe key), then checked against
RFC 5321 lengths and a dot-atom syntax that admits internationalised (IDN) domains.
Other columns become merge fields under snake_case keys; a field is typed (number,
bool, date) only when every value in the file has that type, so that a ZIP code such as
`01234` or a half-filled column stays text and nothing is silently changed.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc

from libs.common.addresses import (  # noqa: F401 - the importer's address rules
    ASCII_EMAIL_PATTERN,
    IDN_EMAIL,
    MAX_ADDRESS_OCTETS,
    MAX_LOCAL_OCTETS,
    normalise_addresses,
    rejection_reasons,
)
from services.importer.reader import BadFile, MalformedRow, RowBatch

# Header spellings of the address column, compared without case, spaces or punctuation.
EMAIL_HEADERS = ("email", "emailaddress", "mail", "mailaddress", "emailadresse", "courriel")
_KEY_ALIASES = {
    "firstname": "first_name",
    "givenname": "first_name",
    "forename": "first_name",
    "lastname": "last_name",
    "surname": "last_name",
    "familyname": "last_name",
    "fullname": "name",
}
# Typed only where the JSON value gives the cell's text back exactly (`->>` and the CSV of
# rejected rows show it as written): no negative zero, booleans in lower case only (a
# spreadsheet's TRUE cells arrive as `true`; a CSV's `TRUE` stays text).
_NUMBER = (
    r"^(?:0(?:\.[0-9]{1,30})?|-?[1-9][0-9]{0,30}(?:\.[0-9]{1,30})?"
    r"|-?0\.[0-9]{0,29}[1-9][0-9]{0,29})$"
)
_BOOL = r"^(?:true|false)$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


class FieldKind(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    BOOL = "bool"
    DATE = "date"


@dataclass(frozen=True)
class FieldColumn:
    """A merge field: its key, the header column it comes from, and whether it is derived."""

    key: str
    index: int
    first_word: bool = False  # `first_name` derived from a `name` column


@dataclass(frozen=True)
class ColumnPlan:
    email_index: int
    fields: list[FieldColumn]

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.fields]


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str
    raw: str


@dataclass
class ValidatedBatch:
    """Valid rows as `line, email, f0..fN` (text), and every other row with its reason."""

    rows: pa.RecordBatch
    rejections: list[Rejection]
    rows_read: int


def _squash(header: str) -> str:
    return re.sub(r"[\W_]+", "", header.lower())


def field_key(header: str, position: int) -> str:
    """A template-friendly key: `First Name` -> `first_name`, `Surname` -> `last_name`."""
    key = re.sub(r"\W+", "_", header.strip().lower()).strip("_")
    if not key:
        return f"column_{position + 1}"
    return _KEY_ALIASES.get(key.replace("_", ""), key)


def _looks_like_address(cell: str) -> bool:
    return re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", cell.strip()) is not None


def plan_columns(header: list[str], requested_email: str | None = None) -> ColumnPlan:
    """Find the address column (named by the user, else by its usual spellings)."""
    found = ", ".join(repr(h) for h in header) or "none"
    if requested_email:
        wanted = requested_email.strip().lower()
        matches = [i for i, h in enumerate(header) if h.strip().lower() == wanted]
        if not matches:
            raise BadFile(
                f"no column named {requested_email!r} (from mapping.email): found headers {found}"
            )
        email_index = matches[0]
    else:
        by_shape = {_squash(h): i for i, h in reversed(list(enumerate(header)))}
        candidates = [by_shape[name] for name in EMAIL_HEADERS if name in by_shape]
        if not candidates:
            if any(_looks_like_address(h) for h in header):
                raise BadFile(
                    "the file has no header row (its first row holds addresses): "
                    "add a first row naming the columns, e.g. email,first_name"
                )
            raise BadFile(
                f"no email column: found headers {found}; "
                "name the column 'email' or choose it with mapping.email"
            )
        email_index = candidates[0]
    return ColumnPlan(email_index, _field_columns(header, email_index))


def _field_columns(header: list[str], email_index: int) -> list[FieldColumn]:
    fields: list[FieldColumn] = []
    taken: set[str] = set()
    for index, name in enumerate(header):
        if index == email_index:
            continue
        key = base = field_key(name, index)
        suffix = 2
        while key in taken:  # two headers that normalise alike both survive
            key, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(key)
        fields.append(FieldColumn(key, index))
    if "name" in taken and "first_name" not in taken:
        source = next(f.index for f in fields if f.key == "name")
        fields.append(FieldColumn("first_name", source, first_word=True))
    return fields


@dataclass
class FieldKinds:
    """The type of each merge field, narrowed batch by batch over the whole file."""

    candidates: list[set[FieldKind]] = field(default_factory=list)

    @classmethod
    def for_plan(cls, plan: ColumnPlan) -> FieldKinds:
        typed = {FieldKind.NUMBER, FieldKind.BOOL, FieldKind.DATE}
        return cls([set(typed) for _ in plan.fields])

    def observe(self, values: list[pa.Array]) -> None:
        for kinds, column in zip(self.candidates, values, strict=True):
            if not kinds or len(column) == 0:
                continue
            for kind in list(kinds):
                if not _all_of_kind(column, kind):
                    kinds.discard(kind)

    def result(self, rows_seen: int) -> list[FieldKind]:
        if rows_seen == 0:
            return [FieldKind.TEXT for _ in self.candidates]
        return [_pick(kinds) for kinds in self.candidates]


def _pick(kinds: set[FieldKind]) -> FieldKind:
    for kind in (FieldKind.BOOL, FieldKind.NUMBER, FieldKind.DATE):
        if kind in kinds:
            return kind
    return FieldKind.TEXT


def _all_of_kind(column: pa.Array, kind: FieldKind) -> bool:
    if kind is FieldKind.NUMBER:
        return bool(pc.all(pc.match_substring_regex(column, _NUMBER)).as_py())
    if kind is FieldKind.BOOL:
        return bool(pc.all(pc.match_substring_regex(column, _BOOL)).as_py())
    if not pc.all(pc.match_substring_regex(column, _DATE)).as_py():
        return False
    # strptime rolls 30 February over into March; a date that rolled over has another day
    # of the month than it was written with (a strftime round trip told the same, at ten
    # times the cost: a fifth of a CRM export's preparation went into it).
    parsed = pc.strptime(column, format="%Y-%m-%d", unit="s", error_is_null=True)
    if parsed.null_count:
        return False
    written_day = pc.cast(pc.utf8_slice_codeunits(column, 8, 10), pa.int64())
    return bool(pc.all(pc.equal(pc.day(parsed), written_day)).as_py())


def _field_values(batch: pa.RecordBatch, column: FieldColumn) -> pa.Array:
    # PostgreSQL text cannot hold NUL characters; they never carry meaning in a CSV cell.
    values = batch.column(column.index)
    if pc.any(pc.match_substring(values, "\x00")).as_py():
        values = pc.replace_substring(values, "\x00", "")
    values = pc.utf8_trim_whitespace(values)
    if column.first_word:
        values = pc.struct_field(pc.extract_regex(values, r"^(?P<w>\S*)"), [0])
    return values


def _raw_rows(cells: pa.RecordBatch) -> list[str]:
    """Rows as one CSV record each, as the user can recognise them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    lines = []
    for row in zip(*(cells.column(i).to_pylist() for i in range(cells.num_columns)), strict=True):
        out.seek(0)
        out.truncate()
        writer.writerow(row)
        lines.append(out.getvalue().rstrip("\n"))
    return lines


def _malformed(rows: list[MalformedRow]) -> list[Rejection]:
    return [Rejection(row.line, row.reason, row.raw) for row in rows]


def validate_batch(batch: RowBatch, plan: ColumnPlan, kinds: FieldKinds) -> ValidatedBatch:
    cells = batch.cells
    lines = pa.array(batch.lines, pa.int64())
    addresses = normalise_addresses(cells.column(plan.email_index))
    reasons = rejection_reasons(addresses)
    valid = pc.is_null(reasons)

    values = [pc.filter(_field_values(cells, column), valid) for column in plan.fields]
    kinds.observe(values)
    names = ["line", "email"] + [f"f{i}" for i in range(len(values))]
    rows = pa.RecordBatch.from_arrays(
        [pc.filter(lines, valid), pc.filter(addresses, valid), *values], names=names
    )

    rejections = _malformed(batch.malformed)
    if rows.num_rows < cells.num_rows:
        refused = pc.invert(valid)
        rejected_lines = pc.filter(lines, refused).to_pylist()
        rejected_reasons = pc.filter(reasons, refused).to_pylist()
        raw = _raw_rows(cells.filter(refused))
        rejections += [
            Rejection(line, reason, text)
            for line, reason, text in zip(rejected_lines, rejected_reasons, raw, strict=True)
        ]
    return ValidatedBatch(rows, rejections, cells.num_rows + len(batch.malformed))
