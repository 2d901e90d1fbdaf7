"""Per-domain throttles (issue 14 item 4), the pure part: no database, no clock of its own.

- Recipient domains fall into groups: `gmail`, `yahoo` (Yahoo and AOL), `microsoft`
  (Outlook, Hotmail, Live, MSN) and `other`.
- Each (provider, group) may have a limit per minute and per hour, counted in fixed
  windows held in PostgreSQL (see `services/dispatcher/throttle_store.py`).
- A new sending domain (the From domain) follows a day-by-day warm-up ramp, counted from
  its first send day: the day's limit over all groups and providers, then unlimited.

Limits are written `[provider.]group:per_minute/per_hour`, comma-separated, with `-` for
no limit (e.g. `gmail:600/20000,smtp.yahoo:300/-`), or as a JSON object
(`{"gmail": [600, 20000], "smtp.yahoo": {"per_minute": 300}}`). An entry naming a provider
wins over the entry for every provider; a group named nowhere is unlimited.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date

from libs.mail.messages import Message, Outbox, TemplatedGroup, TemplatedRecipient

GROUPS = ("gmail", "yahoo", "microsoft", "other")
PROVIDERS = ("sink", "sendgrid", "smtp")

_GMAIL = frozenset({"gmail.com", "googlemail.com"})
_YAHOO_EXACT = frozenset({"ymail.com", "rocketmail.com", "aim.com", "yahoodns.net"})
_YAHOO_BRANDS = frozenset({"yahoo", "aol"})
_MICROSOFT_EXACT = frozenset({"msn.com", "windowslive.com", "passport.com"})
_MICROSOFT_BRANDS = frozenset({"outlook", "hotmail", "live"})
# A brand under a public suffix (`yahoo.com`, `yahoo.co.uk`, `hotmail.com.br`), never a
# brand label in someone else's domain (`live.example.org`).
_SUFFIX_LABEL = re.compile(r"^[a-z]{2,3}$")

MAX_WARMUP_DAYS = 366
MAX_LIMIT = 100_000_000
# Limits as the defaults say them: the big mailbox providers are throttled, "other" is not.
# They suit an established sending domain; see docs/design.md ("Per-domain throttles").
DEFAULT_LIMITS = "gmail:1000/30000,yahoo:600/20000,microsoft:600/20000,other:-/-"


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip().rstrip(".").lower()


def domain_group(address_or_domain: str) -> str:
    """The group of a recipient address (or bare domain)."""
    domain = domain_of(address_or_domain)
    if domain in _GMAIL:
        return "gmail"
    if domain in _YAHOO_EXACT:
        return "yahoo"
    if domain in _MICROSOFT_EXACT:
        return "microsoft"
    brand, _, suffix = domain.partition(".")
    labels = suffix.split(".") if suffix else []
    if 1 <= len(labels) <= 2 and all(_SUFFIX_LABEL.match(label) for label in labels):
        if brand in _YAHOO_BRANDS:
            return "yahoo"
        if brand in _MICROSOFT_BRANDS:
            return "microsoft"
    return "other"


@dataclass(frozen=True)
class GroupLimit:
    per_minute: int | None = None
    per_hour: int | None = None

    @property
    def limited(self) -> bool:
        return self.per_minute is not None or self.per_hour is not None


_UNLIMITED = GroupLimit()
_ENTRY = re.compile(
    r"^(?:(?P<provider>[a-z]+)\.)?(?P<group>[a-z]+):(?P<minute>\d+|-)/(?P<hour>\d+|-)$"
)


def _count(value: object, what: str) -> int | None:
    if value is None or value == "-":
        return None
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit())
    ):
        raise ValueError(f"{what}: a whole number or '-' expected, not {value!r}")
    number = int(value)
    if not 1 <= number <= MAX_LIMIT:
        raise ValueError(f"{what}: {number} is out of range 1..{MAX_LIMIT}")
    return number


def _key(name: str) -> tuple[str, str]:
    provider, _, group = name.rpartition(".")
    provider = provider or "*"
    if group not in GROUPS:
        raise ValueError(f"{name!r}: unknown group {group!r} (one of {', '.join(GROUPS)})")
    if provider != "*" and provider not in PROVIDERS:
        raise ValueError(f"{name!r}: unknown provider {provider!r} (one of {', '.join(PROVIDERS)})")
    return provider, group


@dataclass(frozen=True)
class ThrottlePolicy:
    """The limit of each (provider, group); `*` stands for every provider."""

    limits: Mapping[tuple[str, str], GroupLimit] = field(default_factory=dict)

    def limit(self, provider: str, group: str) -> GroupLimit:
        return self.limits.get((provider, group)) or self.limits.get(("*", group)) or _UNLIMITED

    def limits_provider(self, provider: str) -> bool:
        return any(self.limit(provider, group).limited for group in GROUPS)

    @classmethod
    def parse(cls, spec: str, defaults: str = DEFAULT_LIMITS) -> ThrottlePolicy:
        """`spec` over `defaults` (entry by entry); `off` means no limit at all."""
        spec = spec.strip()
        if spec.lower() == "off":
            return cls({})
        limits = dict(_parse(defaults)) if defaults else {}
        limits.update(_parse(spec))
        return cls({key: value for key, value in limits.items() if value.limited})


def _parse(spec: str) -> Iterable[tuple[tuple[str, str], GroupLimit]]:
    spec = spec.strip()
    if not spec:
        return []
    if len(spec) > 4000:
        raise ValueError("throttle limits: at most 4000 characters")
    if spec.startswith("{"):
        try:
            raw = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"throttle limits: invalid JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError("throttle limits: a JSON object expected")
        out = []
        for name, value in raw.items():
            if isinstance(value, list) and len(value) == 2:
                minute, hour = value
            elif isinstance(value, dict) and set(value) <= {"per_minute", "per_hour"}:
                minute, hour = value.get("per_minute"), value.get("per_hour")
            else:
                raise ValueError(
                    f"{name!r}: [per_minute, per_hour] or {{per_minute, per_hour}} expected"
                )
            out.append((_key(name), GroupLimit(_count(minute, name), _count(hour, name))))
        return out
    out = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"{entry!r}: write [provider.]group:per_minute/per_hour ('-': none)")
        name = f"{match['provider'] or ''}.{match['group']}".lstrip(".")
        limit = GroupLimit(_count(match["minute"], entry), _count(match["hour"], entry))
        out.append((_key(name), limit))
    return out


@dataclass(frozen=True)
class WarmupSchedule:
    """Day-by-day limits of a new sending domain; unlimited after the last day."""

    days: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.days)

    def limit_on(self, first_send_day: date, today: date) -> int | None:
        """The domain's limit for `today` (None: unlimited, the ramp is over)."""
        index = max((today - first_send_day).days, 0)
        return self.days[index] if index < len(self.days) else None

    @classmethod
    def parse(cls, spec: str) -> WarmupSchedule:
        spec = spec.strip()
        if not spec or spec.lower() == "off":
            return cls()
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) > MAX_WARMUP_DAYS:
            raise ValueError(f"warm-up schedule: at most {MAX_WARMUP_DAYS} days")
        days = tuple(_count(p, f"warm-up day {i + 1}") for i, p in enumerate(parts))
        if any(d is None for d in days):
            raise ValueError("warm-up schedule: every day needs a number")
        return cls(tuple(d for d in days if d is not None))


# ----- windows and grants -----


def window_start(now_s: float, length_s: int) -> float:
    """The start (epoch seconds) of the fixed window of `length_s` that holds `now_s`."""
    return math.floor(now_s / length_s) * length_s


def grant(
    wants: Mapping[str, int], rooms: Mapping[str, int | None], shared_room: int | None
) -> dict[str, int]:
    """How many of each group may go now: a group's own room (None: unlimited), and a room
    shared by all groups (the warm-up day), given to groups in the order of `wants`."""
    granted: dict[str, int] = {}
    left = shared_room
    for group, want in wants.items():
        room = rooms.get(group)
        n = max(0, min(want, room if room is not None else want))
        if left is not None:
            n = min(n, max(left, 0))
            left -= n
        granted[group] = n
    return granted


# ----- splitting a batch's outbox by group -----


def group_counts(outbox: Outbox) -> dict[str, int]:
    """Recipients of the outbox per domain group, in first-seen order."""
    counts: dict[str, int] = {}
    for email in _emails(outbox):
        group = domain_group(email)
        counts[group] = counts.get(group, 0) + 1
    return counts


def _emails(outbox: Outbox) -> list[str]:
    emails = [m.email for m in outbox.individual]
    if outbox.templated is not None:
        emails += [r.email for r in outbox.templated.recipients]
    return emails


def split_outbox(
    outbox: Outbox, granted: Mapping[str, int], counts: Mapping[str, int] | None = None
) -> tuple[Outbox, Outbox]:
    """(the first `granted[group]` recipients of each group, the rest). `settled` stays with
    neither: it is the batch's, not a send's. Both keep everything else of `outbox` (its
    sender, and `own_tracking`, which switches SendGrid's own tracking off). `counts`: the
    outbox's `group_counts`, when the caller has them already."""
    empty = replace(outbox, templated=None, individual=[], settled=[])
    counts = group_counts(outbox) if counts is None else counts
    if all(granted.get(group, 0) >= n for group, n in counts.items()):
        # Room for all (the usual case): no second look at every address.
        return replace(outbox, settled=[]), empty
    left = dict(granted)

    def take(email: str) -> bool:
        group = domain_group(email)
        if left.get(group, 0) > 0:
            left[group] -= 1
            return True
        return False

    now_individual: list[Message] = []
    later_individual: list[Message] = []
    for message in outbox.individual:
        (now_individual if take(message.email) else later_individual).append(message)
    now = replace(empty, individual=now_individual)
    later = replace(empty, individual=later_individual)
    if outbox.templated is not None:
        chosen = [take(r.email) for r in outbox.templated.recipients]
        recipients = outbox.templated.recipients
        now_r = [r for r, c in zip(recipients, chosen, strict=True) if c]
        later_r = [r for r, c in zip(recipients, chosen, strict=True) if not c]
        if now_r:
            now.templated = _with_recipients(outbox, now_r)
        if later_r:
            later.templated = _with_recipients(outbox, later_r)
    return now, later


def _with_recipients(outbox: Outbox, recipients: list[TemplatedRecipient]) -> TemplatedGroup:
    assert outbox.templated is not None
    return replace(outbox.templated, recipients=recipients)
