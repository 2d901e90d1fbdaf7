"""When a campaign starts: turn the admin's send_at (+ zone) into a UTC instant. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from libs.common.sendtime import earliest_instant


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


def resolve_local_send_at(send_at: datetime | None) -> tuple[datetime, datetime]:
    """A local-time schedule: (the wall time each recipient gets it at, the UTC instant
    the campaign starts: when the first zone on Earth, UTC+14, reaches that wall time).

    The wall time must be given, without an offset: an offset would name one instant,
    not a time in every recipient's zone.
    """
    if send_at is None:
        raise UnrepresentableTime("local_time needs a send_at, e.g. '2030-03-01T09:00:00'")
    if send_at.tzinfo is not None:
        raise UnrepresentableTime(
            "with local_time, send_at is a wall time without offset, e.g. '2030-03-01T09:00:00'"
        )
    try:
        return send_at, earliest_instant(send_at)
    except OverflowError as exc:
        raise UnrepresentableTime(f"{send_at.isoformat()} is outside the supported range") from exc
