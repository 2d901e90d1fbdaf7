"""Rows for PostgreSQL's binary COPY, encoded from Arrow by pgpq (Rust, no Python per row).

pgpq knows no `uuid`: the list id goes as 16 raw bytes (`bytea`'s encoding of them),
which is exactly `uuid`'s binary form; binary COPY names no types on the wire, and the
target column's own receive function reads the field.
"""

from __future__ import annotations

from uuid import UUID

import pyarrow as pa
from pgpq import ArrowToPostgresBinaryEncoder
from pgpq import encoders as enc
from pgpq.schema import Jsonb


class _BinaryRows:
    """One COPY stream: `header()`, then `encode()` batch after batch, then `trailer()`."""

    def __init__(self, schema: pa.Schema, encoders: dict[str, object]) -> None:
        self.schema = schema
        self._encoder = ArrowToPostgresBinaryEncoder.new_with_encoders(schema, encoders)  # type: ignore[arg-type]

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def header(self) -> bytes:
        return self._encoder.write_header()

    def encode_batch(self, batch: pa.RecordBatch) -> bytes:
        return self._encoder.write_batch(batch)

    def trailer(self) -> bytes:
        return self._encoder.finish()


def _jsonb(field: pa.Field) -> object:
    return enc.StringEncoderBuilder.new_with_output(field, Jsonb())


class RecipientRows(_BinaryRows):
    """`list_id, email, fields` rows of one list, for COPY into `recipients`."""

    def __init__(self, list_id: UUID) -> None:
        schema = pa.schema(
            [("list_id", pa.binary(16)), ("email", pa.string()), ("fields", pa.string())]
        )
        super().__init__(
            schema,
            {
                "list_id": enc.FixedSizeBinaryEncoderBuilder(schema.field("list_id")),
                "email": enc.StringEncoderBuilder(schema.field("email")),
                "fields": _jsonb(schema.field("fields")),
            },
        )
        self._list_id = list_id.bytes

    def encode(self, emails: pa.Array, fields: pa.Array) -> bytes:
        count = len(emails)
        list_ids = pa.Array.from_buffers(
            pa.binary(16), count, [None, pa.py_buffer(self._list_id * count)]
        )
        return self.encode_batch(
            pa.RecordBatch.from_arrays([list_ids, emails, fields], schema=self.schema)
        )
