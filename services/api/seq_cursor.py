"""Opaque cursors for keyset pagination over an increasing integer (recipient ids,
template versions). Pure. Same contract as `pagination`: the client passes them back as is.
"""

from __future__ import annotations

import base64
import binascii

from services.api.pagination import BadCursor

_PREFIX = "n:"
_MAX = 2**63 - 1  # a PostgreSQL bigint


def encode_seq_cursor(value: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{value}".encode()).decode().rstrip("=")


def decode_seq_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_PREFIX) or not raw[len(_PREFIX) :].isdigit():
            raise ValueError("not a sequence cursor")
        value = int(raw[len(_PREFIX) :])
        if value > _MAX:
            raise ValueError("out of range")
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadCursor("cursor is not one this API returned; start again without it") from exc
