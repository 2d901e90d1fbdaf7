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


class RecipientRows:
    """`list_id, email, fields` rows of one list as one COPY stream: `header()`, then
    `encode()` batch after batch, then `trailer()`."""

    def __init__(self, list_id: UUID) -> None:
        schema = pa.schema(
            [("list_id", pa.binary(16)), ("email", pa.string()), ("fields", pa.string())]
        )
        encoders = {
            "list_id": enc.FixedSizeBinaryEncoderBuilder(schema.field("list_id")),
            "email": enc.StringEncoderBuilder(schema.field("email")),
            "fields": enc.StringEncoderBuilder.new_with_output(schema.field("fields"), Jsonb()),
        }
        self.schema = schema
        self.columns = list(schema.names)
        self._encoder = ArrowToPostgresBinaryEncoder.new_with_encoders(schema, encoders)  # type: ignore[arg-type]
        self._list_id = list_id.bytes

    def header(self) -> bytes:
        return self._encoder.write_header()

    def encode(self, emails: pa.Array, fields: pa.Array) -> bytes:
        count = len(emails)
        list_ids = pa.Array.from_buffers(
            pa.binary(16), count, [None, pa.py_buffer(self._list_id * count)]
        )
        batch = pa.RecordBatch.from_arrays([list_ids, emails, fields], schema=self.schema)
        return self._encoder.write_batch(batch)

    def trailer(self) -> bytes:
        return self._encoder.finish()
