"""SendGrid Event Webhook posts into `DeliveryEvent`s. Pure: no HTTP, no Kafka.

A post is a JSON array of events. Each good one becomes a `DeliveryEvent`; a bad one is
skipped with a reason, so that one odd event never costs the rest of the batch (SendGrid
would re-send the whole post, over and over).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from uuid import UUID

import orjson
from pydantic import ValidationError

from libs.common.events import DeliveryEvent, DeliveryEventType

PROVIDER = "sendgrid"
KNOWN_EVENTS: frozenset[str] = frozenset(get_args(DeliveryEventType))

# Raw SendGrid fields kept in `detail` (bounce `type` is what tells a hard bounce from a
# block). A fixed list keeps the stored detail small whatever SendGrid adds.
DETAIL_FIELDS = (
    "type",
    "reason",
    "status",
    "response",
    "attempt",
    "bounce_classification",
    "url",
    "url_offset",
    "useragent",
    "ip",
    "category",
    "asm_group_id",
    "sg_machine_open",
    "tls",
    "smtp-id",
    "batch_id",
)
MAX_DETAIL_CHARS = 2000
MAX_LIST_ITEMS = 20
MAX_EMAIL_CHARS = 320
MAX_ID_CHARS = 255
MAX_RECIPIENT_ID = 2**63 - 1  # a bigint
# How many skipped events a receipt describes one by one.
MAX_REPORTED = 20
# SendGrid posts at most 768 KB per batch, a few thousand events; more is not SendGrid.
MAX_EVENTS_PER_POST = 10_000

SkipKind = Literal["malformed", "unsupported"]


class NotABatch(ValueError):
    """The body is not a JSON array of events."""


class SkippedEvent(ValueError):
    def __init__(self, kind: SkipKind, reason: str) -> None:
        super().__init__(reason)
        self.kind: SkipKind = kind
        self.reason = reason


@dataclass(frozen=True)
class Skipped:
    index: int
    kind: SkipKind
    reason: str


@dataclass
class Translation:
    received: int
    events: list[DeliveryEvent] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_by_kind(self) -> Counter[str]:
        return Counter(s.kind for s in self.skipped)


def parse_batch(body: bytes) -> list[Any]:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NotABatch(f"the body is not JSON: {exc}") from exc
    if isinstance(decoded, dict):
        return [decoded]  # tolerated: a single event not wrapped in an array
    if not isinstance(decoded, list):
        raise NotABatch("the body must be a JSON array of events")
    if len(decoded) > MAX_EVENTS_PER_POST:
        raise NotABatch(f"a post holds at most {MAX_EVENTS_PER_POST} events")
    return decoded


def translate(items: list[Any]) -> Translation:
    result = Translation(received=len(items))
    for index, item in enumerate(items):
        try:
            result.events.append(to_delivery_event(item))
        except SkippedEvent as exc:
            result.skipped.append(Skipped(index, exc.kind, exc.reason))
    return result


def to_delivery_event(item: Any) -> DeliveryEvent:
    """One SendGrid event; SkippedEvent says why it cannot be one of ours."""
    if not isinstance(item, dict):
        raise SkippedEvent("malformed", "an event must be a JSON object")
    kind = item.get("event")
    if not isinstance(kind, str) or not kind:
        raise SkippedEvent("malformed", "no 'event'")
    if kind not in KNOWN_EVENTS:
        raise SkippedEvent("unsupported", f"event type {kind[:40]!r} is not tracked")
    args = _correlation_args(item)
    try:
        return DeliveryEvent(
            event_id=_text(item, "sg_event_id", MAX_ID_CHARS),
            campaign_id=_campaign_id(args.get("campaign_id")),
            recipient_id=_recipient_id(args.get("recipient_id")),
            email=_text(item, "email", MAX_EMAIL_CHARS),
            event=kind,  # checked against KNOWN_EVENTS above; pydantic checks it again
            provider=PROVIDER,
            provider_message_id=_optional_text(item, "sg_message_id", MAX_ID_CHARS),
            occurred_at=_occurred_at(item.get("timestamp")),
            detail=_detail(item),
        )
    except ValidationError as exc:
        raise SkippedEvent("malformed", f"invalid event: {exc.errors()[0]['msg']}") from None


def partition_key(event: DeliveryEvent) -> str:
    """Events of one campaign meet in one tracker; the rest spread by address."""
    return str(event.campaign_id) if event.campaign_id is not None else event.email.lower()


def _correlation_args(item: dict[str, Any]) -> dict[str, Any]:
    """The dispatcher's `custom_args`: SendGrid posts them as top-level fields of the event;
    a nested `custom_args` / `unique_args` object is read too."""
    args: dict[str, Any] = {}
    for nested in ("unique_args", "custom_args"):
        value = item.get(nested)
        if isinstance(value, dict):
            args.update(value)
    for name in ("campaign_id", "recipient_id"):
        if name in item:
            args[name] = item[name]
    return args


def _text(item: dict[str, Any], name: str, max_chars: int) -> str:
    value = _optional_text(item, name, max_chars)
    if value is None:
        raise SkippedEvent("malformed", f"no '{name}'")
    return value


def _optional_text(item: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SkippedEvent("malformed", f"'{name}' must be a non-empty string")
    if len(value) > max_chars or "\x00" in value:
        raise SkippedEvent("malformed", f"'{name}' is too long or holds NUL characters")
    return value.strip()


def _campaign_id(value: Any) -> UUID | None:
    if value is None or value == "":
        return None
    try:
        return UUID(str(value))
    except ValueError:
        # Not one of ours (another sender on the account may use the same argument name).
        raise SkippedEvent("malformed", "'campaign_id' is not a mailfleet campaign id") from None


def _recipient_id(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SkippedEvent("malformed", "'recipient_id' is not an integer")
    try:
        number = int(value)
    except ValueError:
        raise SkippedEvent("malformed", "'recipient_id' is not an integer") from None
    if not 0 <= number <= MAX_RECIPIENT_ID:
        raise SkippedEvent("malformed", "'recipient_id' is out of range")
    return number


def _occurred_at(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SkippedEvent("malformed", "'timestamp' must be Unix seconds")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise SkippedEvent("malformed", "'timestamp' is out of range") from None


def _detail(item: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    for name in DETAIL_FIELDS:
        value = _clean(item.get(name))
        if value is not None:
            detail[name] = value
    return detail


def _clean(value: Any) -> Any:
    """JSON scalars (and short lists of them) that PostgreSQL's jsonb can store."""
    if isinstance(value, str):
        # jsonb refuses NUL; a bounded length keeps one event from bloating the log.
        return value.replace("\x00", "")[:MAX_DETAIL_CHARS]
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list):
        cleaned = [_clean(v) for v in value[:MAX_LIST_ITEMS] if not isinstance(v, list | dict)]
        return [v for v in cleaned if v is not None]
    return None
