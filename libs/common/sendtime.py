"""Local-time delivery and send windows (issue 17, items 2 and 3): the zone math. Pure.

One rule for wall times that a zone skips or repeats on a DST change day: Python's
zoneinfo with fold=0. A skipped time (America/New_York 2027-03-14 02:30) is read with the
offset before the change, so it lands as far after the change as it was meant after
02:00 (03:30 EDT); a repeated time (2027-11-07 01:30) is its first occurrence (EDT).
PostgreSQL's `AT TIME ZONE` agrees on the first and not on the second (it takes the
standard-time reading, the later 01:30), which is why instants are computed here and
not in SQL (docs/design.md, "Local-time delivery and send windows").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

# No zone is ahead of UTC+14 (Pacific/Kiritimati): the earliest instant any recipient's
# wall clock can show a given wall time.
MAX_UTC_OFFSET = timedelta(hours=14)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@lru_cache(maxsize=2048)
def zone_or_none(name: str) -> ZoneInfo | None:
    """The IANA zone `name`, or None when it is not one (never raises)."""
    if not name or len(name) > 64 or "\x00" in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@lru_cache(maxsize=1)
def known_zones() -> tuple[str, ...]:
    """Every IANA zone name this process knows, sorted."""
    return tuple(sorted(n for n in available_timezones() if zone_or_none(n) is not None))


def local_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant when `zone`'s clocks show `wall` (naive), fold=0 (module doc)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def earliest_instant(wall: datetime) -> datetime:
    """When the first zone on Earth reaches `wall`: a local-time campaign's claim."""
    return wall.replace(tzinfo=UTC) - MAX_UTC_OFFSET


@dataclass(frozen=True)
class Window:
    """Hours on days, in the recipient's local time: [start, end) on `days` (0 = Monday)."""

    start: time
    end: time
    days: frozenset[int]

    @classmethod
    def parse(cls, start: str, end: str, days: list[str]) -> Window:
        return cls(
            start=parse_hhmm(start),
            end=parse_hhmm(end),
            days=frozenset(DAYS.index(d) for d in days),
        )

    def holds(self, local: datetime) -> bool:
        return local.weekday() in self.days and self.start <= local.time() < self.end


def parse_hhmm(value: str) -> time:
    """`HH:MM` (24 h) as a time; ValueError otherwise."""
    hours, sep, minutes = value.partition(":")
    if not sep or len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
        raise ValueError(f"{value!r} is not a time of day as HH:MM, e.g. '08:00'")
    return time(int(hours), int(minutes))  # ValueError beyond 23:59


def next_opening(at: datetime, zone: ZoneInfo, window: Window) -> datetime:
    """`at` itself (UTC) when the window is open then in `zone`, else the next instant
    it opens. An opening at a wall time the zone skips that day follows the fold=0 rule."""
    local = at.astimezone(zone)
    if window.holds(local):
        return at.astimezone(UTC)
    for ahead in range(8):
        day: date = local.date() + timedelta(days=ahead)
        if day.weekday() not in window.days:
            continue
        opening = local_instant(datetime.combine(day, window.start), zone)
        if opening > at:
            return opening
    raise AssertionError("a window with at least one day opens within 8 days")
