"""When a campaign starts: turn the admin's send_at (+ zone) into a UTC instant. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class UnknownTimezone(ValueError):
    pass


class UnrepresentableTime(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimezone(f"unknown IANA time zone {name!r}, e.g. 'Europe/Berlin'") from exc


def resolve_send_at(send_at: datetime | None, timezone: str, now: datetime) -> datetime:
    """The UTC instant to start at.

    No send_at means now. A send_at without offset is wall-clock time in `timezone`
    (that is what an admin means by "09:00 in Kolkata"); one with an offset is an instant.
    """
    tz = zone(timezone)
    if send_at is None:
        return now.astimezone(UTC)
    if send_at.tzinfo is None:
        send_at = send_at.replace(tzinfo=tz)
    try:
        return send_at.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01 east of UTC
        raise UnrepresentableTime(f"{send_at.isoformat()} is outside the supported range") from exc
