"""The plain modules: time zones, stats, cursors, the failure limiter, multipart streaming."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from services.api.multipart_stream import BadMultipart, MissingFilePart, StreamingUpload
from services.api.pagination import BadCursor, decode_cursor, encode_cursor
from services.api.ratelimit import FailureLimiter
from services.api.scheduling import UnknownTimezone, resolve_send_at
from services.api.stats import campaign_stats

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


def test_wall_time_in_zone_becomes_utc() -> None:
    kolkata = resolve_send_at(datetime(2030, 3, 1, 9), "Asia/Kolkata", NOW)
    assert kolkata == datetime(2030, 3, 1, 3, 30, tzinfo=UTC)
    # Summer time: 09:00 in New York in July is 13:00 UTC, in January 14:00.
    assert resolve_send_at(datetime(2030, 7, 1, 9), "America/New_York", NOW).hour == 13
    assert resolve_send_at(datetime(2030, 1, 1, 9), "America/New_York", NOW).hour == 14
    assert resolve_send_at(None, "Asia/Kolkata", NOW) == NOW
    with pytest.raises(UnknownTimezone):
        resolve_send_at(None, "Nowhere/Land", NOW)


def test_stats_before_and_after_planning() -> None:
    assert campaign_stats(None, 7).pending == 7
    counters = {
        "audience_total": 100,
        "sent": 80,
        "failed": 5,
        "suppressed": 20,
        "invalid": 0,
        "unknown": 0,
        "cancelled": 0,
    }
    stats = campaign_stats(counters, 999)
    assert (stats.total, stats.pending, stats.delivery_rate) == (100, 0, 1.0)
    all_suppressed = campaign_stats(counters | {"suppressed": 100, "sent": 0}, 0)
    assert all_suppressed.delivery_rate == 0.0


def test_cursor_round_trip_and_garbage() -> None:
    moment, row = datetime(2030, 1, 1, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(moment, row)) == (moment, row)
    for bad in ("", "zzz", encode_cursor(moment, row)[:-3] + "!"):
        with pytest.raises(BadCursor):
            decode_cursor(bad)


def test_failure_limiter_forgets_old_failures() -> None:
    now = [0.0]
    limiter = FailureLimiter(2, 60.0, clock=lambda: now[0])
    limiter.record_failure("a")
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 60.0
    assert limiter.retry_after("b") is None
    now[0] = 61.0
    assert limiter.retry_after("a") is None


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _form(parts: list[tuple[str, str | None, bytes]]) -> tuple[str, bytes]:
    boundary = "b0undary"
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
async def test_streaming_upload_splits_file_and_fields(chunk: int) -> None:
    content = b"email\n" + b"a@example.com\n" * 50
    content_type, body = _form(
        [("note", None, b"before"), ("file", "x.csv", content), ("email_column", None, b"email")]
    )
    upload = StreamingUpload(content_type, _chunks(body, chunk))
    await upload.open()
    assert upload.filename == "x.csv"
    assert b"".join([c async for c in upload.file_chunks()]) == content
    assert upload.fields == {"note": "before", "email_column": "email"}


async def test_streaming_upload_errors() -> None:
    with pytest.raises(BadMultipart):
        StreamingUpload("application/json", _chunks(b"{}", 10))
    content_type, body = _form([("email_column", None, b"email")])
    upload = StreamingUpload(content_type, _chunks(body, 10))
    with pytest.raises(MissingFilePart):
        await upload.open()
