"""Per-domain throttle windows in PostgreSQL, shared by every dispatcher (issue 14 item 4),
and the campaigns' own rate caps (issue 17 item 4), counted the same way.

A reservation is one transaction. It reads the database's clock, then locks the rows of
every window it needs (created at 0 if new) in one statement, in a fixed order (no
deadlock between instances), works out what fits (`throttles.grant`) and adds it. Nothing
is counted in a dispatcher's memory, so the limit of a window holds exactly, whatever the
number of instances and however the groups are spread over their batches.

A campaign's cap (`max_per_hour`) is a room shared by all groups, like the warm-up day: a
minute window of ceil(cap / 60) and an hour window of cap, scope `campaign:<id>`. The
minute window spreads the hour's sends (a cap of 50,000/hour never goes out in the first
seconds of the hour), so any sliding hour holds at most cap + one minute's share.

Windows are aligned by the database's clock, or by an injected `Clock` (tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from libs.common.clock import Clock
from libs.mail.throttles import ThrottlePolicy, WarmupSchedule, grant, window_start

_DAY_S = 86_400


@dataclass(frozen=True)
class Reservation:
    """What may go now per group, and for the groups held back (fully or in part), the
    seconds until the earliest of their full windows ends (None: nothing held back)."""

    granted: dict[str, int]
    held: dict[str, int] = field(default_factory=dict)
    wait_s: float | None = None
    # Held back (also) by the campaign's own rate cap, full for now.
    capped: bool = False


class PostgresThrottles:
    def __init__(
        self,
        pool: asyncpg.Pool,
        policy: ThrottlePolicy,
        warmup: WarmupSchedule,
        *,
        minute_s: int = 60,
        clock: Clock | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self.policy = policy
        self.warmup = warmup
        self.minute_s = minute_s
        self.hour_s = minute_s * 60
        self._known_domains: set[str] = set()

    def applies_to(self, provider: str) -> bool:
        """False when nothing limits this provider's sends (no reservation is needed)."""
        return self.warmup.enabled or self.policy.limits_provider(provider)

    async def note_domain(self, domain: str) -> None:
        """Record the From domain's first send day (once per process and domain)."""
        if domain in self._known_domains:
            return
        await self._pool.execute(
            "INSERT INTO sending_domains (domain, first_send_day)"
            " VALUES ($1, (now() AT TIME ZONE 'UTC')::date) ON CONFLICT (domain) DO NOTHING",
            domain,
        )
        self._known_domains.add(domain)

    def campaign_windows(self, max_per_hour: int) -> list[tuple[int, int]]:
        """(length, limit) of the windows a campaign's cap counts in."""
        per_minute = math.ceil(max_per_hour * self.minute_s / self.hour_s)
        return [(self.minute_s, per_minute), (self.hour_s, max_per_hour)]

    async def reserve(
        self,
        provider: str,
        from_domain: str,
        wants: Mapping[str, int],
        campaign_id: UUID | None = None,
    ) -> Reservation:
        """Reserve up to `wants[group]` sends of each group for `provider` now, within the
        rate cap of `campaign_id` when it has one (read in the same transaction, so a cap
        changed while the campaign sends applies from the next reservation)."""
        wants = {g: n for g, n in wants.items() if n > 0}
        if not wants:
            return Reservation({})
        await self.note_domain(from_domain)
        if (
            campaign_id is None
            and not self.warmup.enabled
            and not any(self.policy.limit(provider, group).limited for group in wants)
        ):
            return Reservation(dict(wants))  # nothing to count: no round trip
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT extract(epoch FROM now())::float8, (now() AT TIME ZONE 'UTC')::date,"
                " (SELECT first_send_day FROM sending_domains WHERE domain = $1),"
                " (SELECT max_per_hour FROM campaigns WHERE id = $2)",
                from_domain,
                campaign_id,
            )
            assert row is not None
            now_s, today, first_day, max_per_hour = row
            if self._clock is not None:
                now_s = self._clock.now()
                today = datetime.fromtimestamp(now_s, UTC).date()
            # Every window this reservation counts in: (scope, length, start, limit, group).
            windows: list[tuple[str, int, float, int, str | None]] = []
            for group in wants:
                limit = self.policy.limit(provider, group)
                for length, cap in (
                    (self.minute_s, limit.per_minute),
                    (self.hour_s, limit.per_hour),
                ):
                    if cap is not None:
                        start = window_start(now_s, length)
                        windows.append((f"{provider}:{group}", length, start, cap, group))
            warmup_cap = (
                self.warmup.limit_on(first_day or today, today) if self.warmup.enabled else None
            )
            if warmup_cap is not None:
                day = window_start(now_s, _DAY_S)
                windows.append((f"warmup:{from_domain}", _DAY_S, day, warmup_cap, None))
            if max_per_hour is not None:
                for length, cap in self.campaign_windows(max_per_hour):
                    start = window_start(now_s, length)
                    windows.append((f"campaign:{campaign_id}", length, start, cap, None))
            if not windows:
                return Reservation(dict(wants))
            windows.sort(key=lambda w: (w[0], w[1]))
            rows = await conn.fetch(
                "INSERT INTO throttle_windows (scope, window_s, window_start, used)"
                " SELECT s, w, to_timestamp(ws), 0"
                " FROM unnest($1::text[], $2::int[], $3::float8[]) WITH ORDINALITY AS t(s, w, ws, i)"
                " ORDER BY i"
                " ON CONFLICT (scope, window_s, window_start)"
                " DO UPDATE SET used = throttle_windows.used"
                " RETURNING scope, window_s, used",
                [w[0] for w in windows],
                [w[1] for w in windows],
                [w[2] for w in windows],
            )
            used = {(r["scope"], r["window_s"]): r["used"] for r in rows}
            rooms: dict[str, int | None] = {}
            shared: int | None = None
            ends: dict[str | None, list[tuple[int, float]]] = {}
            for scope, length, start, cap, of in windows:
                room = max(cap - used[(scope, length)], 0)
                if of is None:
                    shared = room if shared is None else min(shared, room)
                else:
                    current = rooms.get(of)
                    rooms[of] = room if current is None else min(current, room)
                ends.setdefault(of, []).append((room, start + length - now_s))
            granted = grant(wants, rooms, shared)
            adds: dict[tuple[str, int], int] = {}
            for scope, length, _start, _cap, of in windows:
                n = sum(granted.values()) if of is None else granted[of]
                if n:
                    adds[(scope, length)] = n
            if adds:
                await conn.execute(
                    "UPDATE throttle_windows t SET used = t.used + u.n"
                    " FROM unnest($1::text[], $2::int[], $3::float8[], $4::int[]) AS u(s, w, ws, n)"
                    " WHERE t.scope = u.s AND t.window_s = u.w AND t.window_start = to_timestamp(u.ws)",
                    [k[0] for k in adds],
                    [k[1] for k in adds],
                    [next(w[2] for w in windows if (w[0], w[1]) == k) for k in adds],
                    list(adds.values()),
                )
        held = {g: wants[g] - granted[g] for g in wants if granted[g] < wants[g]}
        if not held:
            return Reservation(granted)
        total = sum(granted.values())
        capped = any(
            cap - used[(scope, length)] - total <= 0
            for scope, length, _start, cap, _of in windows
            if scope.startswith("campaign:")
        )
        # A group held back waits for the end of a window of its own (or the warm-up day)
        # that is full now; the batch wakes at the earliest such end and asks again.
        waits = [
            left
            for group in [*held, None]
            for room, left in ends.get(group, [])
            if room - (sum(granted.values()) if group is None else granted[group]) <= 0
        ]
        return Reservation(granted, held, max(min(waits), 0.0) if waits else 0.0, capped)

    async def prune(self) -> int:
        """Drop windows older than two days (a day window is the longest)."""
        status: str = await self._pool.execute(
            "DELETE FROM throttle_windows WHERE window_start < now() - interval '2 days'"
        )
        return int(status.split()[-1])
