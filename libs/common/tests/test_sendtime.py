"""The zone math of local-time delivery and send windows (issue 17, items 2 and 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from libs.common.events import SendWindow
from libs.common.sendtime import (
    Window,
    earliest_instant,
    known_zones,
    local_instant,
    next_opening,
    zone_or_none,
)

NINE = datetime(2027, 1, 11, 9, 0)  # a Monday, northern winter, southern summer


@pytest.mark.parametrize(
    ("zone", "utc"),
    [
        ("Asia/Kolkata", datetime(2027, 1, 11, 3, 30, tzinfo=UTC)),  # +05:30
        ("Asia/Kathmandu", datetime(2027, 1, 11, 3, 15, tzinfo=UTC)),  # +05:45
        ("Australia/Lord_Howe", datetime(2027, 1, 10, 22, 0, tzinfo=UTC)),  # +11:00 (DST)
        ("Pacific/Kiritimati", datetime(2027, 1, 10, 19, 0, tzinfo=UTC)),  # +14
        ("Pacific/Pago_Pago", datetime(2027, 1, 11, 20, 0, tzinfo=UTC)),  # -11
        ("America/New_York", datetime(2027, 1, 11, 14, 0, tzinfo=UTC)),
    ],
)
def test_nine_local_is_the_right_instant(zone: str, utc: datetime) -> None:
    assert local_instant(NINE, ZoneInfo(zone)) == utc


def test_lord_howe_half_hour_dst() -> None:
    # +10:30 in its winter, +11:00 in its summer: the half-hour shift is kept.
    winter = local_instant(datetime(2027, 7, 12, 9, 0), ZoneInfo("Australia/Lord_Howe"))
    summer = local_instant(NINE, ZoneInfo("Australia/Lord_Howe"))
    assert winter == datetime(2027, 7, 11, 22, 30, tzinfo=UTC)
    assert summer == datetime(2027, 1, 10, 22, 0, tzinfo=UTC)


def test_a_skipped_wall_time_lands_after_the_change() -> None:
    # 2027-03-14 02:30 does not exist in New York: read with the offset before the change
    # (EST), it is 07:30 UTC, i.e. 03:30 EDT (what PostgreSQL's AT TIME ZONE gives too).
    tz = ZoneInfo("America/New_York")
    instant = local_instant(datetime(2027, 3, 14, 2, 30), tz)
    assert instant == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)
    assert instant.astimezone(tz).strftime("%H:%M %Z") == "03:30 EDT"
    # 09:00 that day is ordinary EDT.
    assert local_instant(datetime(2027, 3, 14, 9), tz) == datetime(2027, 3, 14, 13, tzinfo=UTC)


def test_a_repeated_wall_time_is_its_first_occurrence() -> None:
    # 2027-11-07 01:30 happens twice in New York: the first (EDT, 05:30 UTC). PostgreSQL
    # would take the second (06:30 UTC): instants are computed in Python, not in SQL.
    instant = local_instant(datetime(2027, 11, 7, 1, 30), ZoneInfo("America/New_York"))
    assert instant == datetime(2027, 11, 7, 5, 30, tzinfo=UTC)


def test_the_earliest_instant_is_no_later_than_any_zone() -> None:
    claim = earliest_instant(NINE)
    assert claim == datetime(2027, 1, 10, 19, 0, tzinfo=UTC)
    instants = [local_instant(NINE, ZoneInfo(z)) for z in known_zones()]
    assert min(instants) == claim  # Kiritimati reaches 09:00 first
    assert max(instants) - claim <= timedelta(hours=26)


def test_zone_or_none_never_raises() -> None:
    for bad in ["", "Mars/Olympus", "../../etc/passwd", "Asia/Kolkata\x00", "x" * 100, "/"]:
        assert zone_or_none(bad) is None
    assert zone_or_none("Asia/Kolkata") == ZoneInfo("Asia/Kolkata")


WEEKDAYS = Window.parse("08:00", "20:00", ["mon", "tue", "wed", "thu", "fri"])
KOLKATA = ZoneInfo("Asia/Kolkata")


def test_open_window_is_now() -> None:
    at = datetime(2027, 1, 11, 4, 0, tzinfo=UTC)  # Monday 09:30 in Kolkata
    assert next_opening(at, KOLKATA, WEEKDAYS) == at


def test_before_opening_waits_for_the_same_day() -> None:
    at = datetime(2027, 1, 11, 1, 0, tzinfo=UTC)  # Monday 06:30 in Kolkata
    assert next_opening(at, KOLKATA, WEEKDAYS) == datetime(2027, 1, 11, 2, 30, tzinfo=UTC)


def test_after_closing_on_friday_waits_for_monday() -> None:
    at = datetime(2027, 1, 15, 15, 0, tzinfo=UTC)  # Friday 20:30 in Kolkata
    assert next_opening(at, KOLKATA, WEEKDAYS) == datetime(2027, 1, 18, 2, 30, tzinfo=UTC)
    saturday = datetime(2027, 1, 16, 4, 0, tzinfo=UTC)
    assert next_opening(saturday, KOLKATA, WEEKDAYS) == datetime(2027, 1, 18, 2, 30, tzinfo=UTC)


def test_end_is_exclusive() -> None:
    at = datetime(2027, 1, 11, 14, 30, tzinfo=UTC)  # Monday 20:00 in Kolkata
    assert next_opening(at, KOLKATA, WEEKDAYS) == datetime(2027, 1, 12, 2, 30, tzinfo=UTC)


def test_an_opening_the_zone_skips() -> None:
    # A window opening at 02:30 on the day New York skips 02:00-03:00 opens at 03:30 EDT.
    window = Window.parse("02:30", "05:00", ["sun"])
    at = datetime(2027, 3, 14, 5, 0, tzinfo=UTC)  # Sunday 00:00 EST
    opening = next_opening(at, ZoneInfo("America/New_York"), window)
    assert opening == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"start": "8:00", "end": "20:00"}, "start"),
        ({"start": "08:00", "end": "24:00"}, "end"),
        ({"start": "20:00", "end": "08:00"}, None),
        ({"start": "08:00", "end": "20:00", "days": []}, "days"),
        ({"start": "08:00", "end": "20:00", "days": ["mon", "mon"]}, None),
        ({"start": "08:00", "end": "20:00", "days": ["monday"]}, "days"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SendWindow.model_validate(body)
    loc = caught.value.errors()[0]["loc"]
    assert (loc[0] if loc else None) == field
