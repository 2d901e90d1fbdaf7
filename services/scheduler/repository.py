"""Postgres adapter of the scheduler: schedules, claims, the batch plan, emission bookkeeping.

The scheduler owns `schedules`, `content_snapshots`, `campaign_plans` and `batch_plans`.
It reads `recipients` and `suppressions` to cut the audience, `tracker_batches` (the
tracker's read model) to know which batches are accounted for, and compare-and-sets
`campaigns.status` from `scheduled` to `in_progress`, as the design gives it to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from libs.common import audience as audiences
from libs.common.events import PlannedRecipient, SendWindow
from libs.common.logging import get_logger
from libs.common.sendtime import known_zones, local_instant, next_opening, zone_or_none
from libs.stats.ab import VariantCounts, choose_winner
from services.scheduler.metrics import BATCHES_WINDOW_DEFERRED, INVALID_TIMEZONES
from services.scheduler.planner import (
    RECIPIENT_OVERHEAD_BYTES,
    PlanSummary,
    ScheduleRequest,
    byte_chunk,
    cut_by_count,
    recipient_bytes_budget,
)

log = get_logger(__name__)

# The default topic limit (1 MiB), for callers that do not pass theirs.
_DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PendingBatch:
    batch_id: str
    campaign_id: UUID
    batch_no: int
    emitted: int
    # The recipients as the JSON array `batch.ready` carries ({recipient_id, email,
    # fields}, by id), built by PostgreSQL: the scheduler passes it on without a Python
    # object per recipient (`recipients` decodes it, for the rare paths that need them).
    recipients_json: bytes
    # Why its `batch.ready` cannot be published; it is then reported failed instead.
    set_aside_reason: str | None = None
    # Recipients whose address was suppressed since planning (issue 11 item 5): emitted
    # with the batch so that they are reported `suppressed`, never mailed.
    suppressed_ids: list[int] = field(default_factory=list)
    # A/B tests (issue 17 item 1): the test group's variant (None for the remainder and for
    # a campaign without a test), and the content it is sent with when it is not the
    # plan's (a variant's, or the winner's for the remainder).
    variant: str | None = None
    content_id: UUID | None = None
    # The remainder of an A/B campaign cancelled before its winner: never sent, reported
    # `cancelled` by the scheduler itself (no dispatcher ever sees it).
    cancelled_unsent: bool = False

    @property
    def recipients(self) -> list[PlannedRecipient]:
        return [
            (r["recipient_id"], r["email"], r["fields"]) for r in orjson.loads(self.recipients_json)
        ]


@dataclass(frozen=True)
class AbSplit:
    """How the planner splits an A/B campaign's sendable audience: the first `share` of it
    in the order of a hash of each recipient id seeded with `seed` is the test group, dealt
    round-robin to `variants` (groups 1..n); the rest is the remainder (group n + 1)."""

    share: float
    seed: int
    variants: tuple[str, ...]


@dataclass(frozen=True)
class WinnerDecision:
    campaign_id: UUID
    winner: str
    reason: str


@dataclass(frozen=True)
class ReemitPolicy:
    """When an emitted batch that nobody accounted for travels again without a broker loss
    (issue 11, item 10): only on evidence that it is lost. Its backoff, `base_s` doubled
    with each emission, counts from when the batch could be expected to show progress (its
    emission, plus the rate limit's backlog ahead of it then: see `rates`, emails/s per
    provider, 0 = unlimited), and is restarted by any sign of life: its ledger row changing,
    or a batch of its campaign accounted for by the tracker. Sooner, a batch whose ledger
    row is `done` is re-emitted once a result of its campaign that finished `overtaken_s`
    later was folded (its own result was lost; the dispatcher replays it)."""

    base_s: float
    rates: dict[str, float]
    # A batch whose ledger says `done` is taken for lost as soon as a result of its campaign
    # that finished this much later was folded (clock skew between a dispatcher and the
    # database is assumed below it; a replay too many is dropped by the tracker's gate).
    overtaken_s: float = 30.0


@dataclass
class EmitWindow:
    """Batches locked for one emit transaction; those `set_aside` inside the block are
    recorded with their reason when it ends."""

    batches: list[PendingBatch]
    set_aside: dict[str, str] = field(default_factory=dict)


class ScheduleRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record_schedule(self, request: ScheduleRequest) -> bool:
        """Store a schedule; a lower or equal revision than the stored one is ignored.

        A campaign scheduled by an internal service (not through the API) is still a
        draft: move it to `scheduled` with the event's time. Returns False for an
        unknown campaign.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT true FROM campaigns WHERE id = $1", request.campaign_id
            )
            if not exists:
                return False
            await conn.execute(
                """
                INSERT INTO schedules (campaign_id, send_at, timezone, revision)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (campaign_id) DO UPDATE
                   SET send_at = EXCLUDED.send_at, timezone = EXCLUDED.timezone,
                       revision = EXCLUDED.revision
                 WHERE schedules.revision < EXCLUDED.revision AND schedules.claimed_at IS NULL
                """,
                request.campaign_id,
                request.send_at,
                request.timezone,
                request.revision,
            )
            await conn.execute(
                """
                UPDATE campaigns
                   SET status = 'scheduled', send_at = $2, timezone = $3,
                       schedule_revision = $4, updated_at = now(),
                       local_time = $5, local_send_at = $6, send_window = $7
                 WHERE id = $1 AND status = 'draft' AND schedule_revision < $4
                """,
                request.campaign_id,
                request.send_at,
                request.timezone,
                request.revision,
                request.local_time,
                request.local_send_at if request.local_time else None,
                request.send_window,
            )
        return True

    async def drop_schedule(self, campaign_id: UUID, revision: int) -> None:
        """Forget a schedule that an unschedule/cancel of a later revision replaced.

        `campaign.control` and `campaign.scheduled` are different topics, so a re-schedule
        may be read before the unschedule it follows: the revision keeps the newer one.
        """
        await self.pool.execute(
            """
            DELETE FROM schedules
             WHERE campaign_id = $1 AND claimed_at IS NULL AND revision < $2
            """,
            campaign_id,
            revision,
        )

    async def due_campaigns(self, limit: int = 20, now: datetime | None = None) -> list[UUID]:
        """Schedules due by the scheduler's clock `now` (default: the real time)."""
        rows = await self.pool.fetch(
            """
            SELECT campaign_id FROM schedules
             WHERE claimed_at IS NULL AND send_at <= $2
             ORDER BY send_at LIMIT $1
            """,
            limit,
            now or datetime.now(UTC),
        )
        return [r["campaign_id"] for r in rows]

    async def claim_and_plan(
        self,
        campaign_id: UUID,
        batch_size: int,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        now: datetime | None = None,
    ) -> PlanSummary | None:
        """Claim a due campaign exactly once and write its batch plan, in one transaction.

        The claim is a compare-and-set of the campaign's status, so two schedulers never
        both start it. Repeatable read: the audience counted is the audience planned.
        `now` is the scheduler's clock (default: the real time).
        """
        try:
            return await self._claim_and_plan(
                campaign_id, batch_size, max_message_bytes, now or datetime.now(UTC)
            )
        except asyncpg.SerializationError:
            return None  # another scheduler claimed it first

    async def _claim_and_plan(
        self, campaign_id: UUID, batch_size: int, max_message_bytes: int, now: datetime
    ) -> PlanSummary | None:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            campaign = await conn.fetchrow(
                """
                UPDATE campaigns
                   SET status = 'in_progress', started_at = now(), updated_at = now()
                 WHERE id = $1 AND status = 'scheduled' AND send_at <= $2
                RETURNING list_id, subject, html, text, from_email, from_name, provider,
                          send_at, timezone, local_time, local_send_at, send_window,
                          audience, audience_filters
                """,
                campaign_id,
                now,
            )
            if campaign is None:
                # Not claimable now: claimed by another scheduler, unscheduled, cancelled, or
                # re-scheduled later with its event still on the way. The campaign row is the
                # truth: follow its time, or forget a schedule it no longer has.
                await conn.execute(
                    """
                    UPDATE schedules s SET send_at = c.send_at, revision = c.schedule_revision
                      FROM campaigns c
                     WHERE s.campaign_id = $1 AND c.id = $1
                       AND c.status = 'scheduled' AND c.send_at > $2
                    """,
                    campaign_id,
                    now,
                )
                await conn.execute(
                    """
                    DELETE FROM schedules
                     WHERE campaign_id = $1 AND NOT EXISTS (
                           SELECT 1 FROM campaigns WHERE id = $1 AND status = 'scheduled')
                    """,
                    campaign_id,
                )
                return None
            await conn.execute(
                "UPDATE schedules SET claimed_at = now() WHERE campaign_id = $1", campaign_id
            )
            content_id = await conn.fetchval(
                """
                INSERT INTO content_snapshots (campaign_id, subject, html, text, from_email, from_name)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
                """,
                campaign_id,
                campaign["subject"],
                campaign["html"],
                campaign["text"],
                campaign["from_email"],
                campaign["from_name"],
            )
            try:
                target = AudienceTarget.of_campaign(campaign, now)
            except audiences.AudienceError as exc:
                return await _fail_plan(conn, campaign_id, content_id, campaign, str(exc))
            target = await target.snapshot(conn)
            ab = await _snapshot_variants(conn, campaign_id, campaign, now)
            counts = await _audience_stats(conn, target)
            zoning = None
            if campaign["local_time"] or campaign["send_window"] is not None:
                primary = target.audience.primary_list
                list_default = (
                    await conn.fetchval("SELECT default_timezone FROM lists WHERE id = $1", primary)
                    if primary is not None
                    else None
                )
                zoning = _zoning(campaign, list_default)
            batches, invalid = await _plan_batches(
                conn,
                campaign_id,
                target,
                batch_size,
                max_message_bytes,
                int(counts["largest"]),
                ab,
                zoning,
            )
            if zoning is not None:
                INVALID_TIMEZONES.inc(invalid)
                log.info("zoned plan", batches=batches, invalid_timezones=invalid)
            summary = PlanSummary(
                campaign_id=campaign_id,
                content_id=content_id,
                provider=campaign["provider"],
                audience_total=counts["audience"],
                suppressed_total=counts["suppressed"],
                batches_total=batches,
                invalid_timezones=invalid,
            )
            await conn.execute(
                """
                INSERT INTO campaign_plans (campaign_id, content_id, provider, audience_total,
                                            suppressed_total, batches_total, invalid_timezones,
                                            audience)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                """,
                campaign_id,
                content_id,
                summary.provider,
                summary.audience_total,
                summary.suppressed_total,
                summary.batches_total,
                summary.invalid_timezones,
                target.as_planned(),
            )
            if summary.batches_total == 0:
                # Nothing to send: no batch will ever come back, so finish it here.
                await conn.execute(
                    "UPDATE campaigns SET status = 'completed', finished_at = now() WHERE id = $1",
                    campaign_id,
                )
            return summary

    async def plan_of(self, campaign_id: UUID) -> PlanSummary:
        row = await self.pool.fetchrow(
            "SELECT * FROM campaign_plans WHERE campaign_id = $1", campaign_id
        )
        if row is None:
            raise LookupError(f"campaign {campaign_id} has no plan")
        return PlanSummary(
            campaign_id=campaign_id,
            content_id=row["content_id"],
            provider=row["provider"],
            audience_total=row["audience_total"],
            suppressed_total=row["suppressed_total"],
            batches_total=row["batches_total"],
            invalid_timezones=row["invalid_timezones"],
        )

    @asynccontextmanager
    async def batches_to_emit(
        self,
        emitted_before: datetime,
        limit: int,
        policy: ReemitPolicy | None = None,
        now: datetime | None = None,
    ) -> AsyncIterator[EmitWindow]:
        """Lock and yield batches never emitted, or not yet accounted for by the tracker and
        either last emitted before `emitted_before` (a broker loss, a resume) or stalled by
        `policy`, of campaigns in progress (or cancelled: the dispatchers report their
        recipients `cancelled`, so the counts reconcile). Leaving the block marks them
        emitted, and when each may be expected to show progress.

        Locked with SKIP LOCKED so that several schedulers share the work, never repeat it.

        A batch of an A/B campaign's remainder waits for the test's winner, and is then sent
        with the winner's content (issue 17 item 1); if the campaign is cancelled first, it
        comes out `cancelled_unsent`, for the emitter to report.

        A batch of a zoned plan (issue 17) waits for its `due_at` by the scheduler's clock
        `now` (default: the real time), and, when its campaign has a send window, for the
        window to be open in its zone: one found outside has its `due_at` moved to the next
        opening. A cancelled campaign's batches wait for neither (they are only reported).
        """
        clock = now or datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_MARK_ACCOUNTED)
            while True:  # until a batch may go, or none is due: deferred ones are not due
                rows = await _due_rows(conn, emitted_before, limit, policy, clock)
                if not rows or await _defer_closed(conn, rows, clock) < len(rows):
                    break
            rows = [r for r in rows if not r["deferred"]]
            if not rows:
                yield EmitWindow([])
                return
            members = await conn.fetch(
                """
                SELECT m.batch_id,
                       json_agg(json_build_object('recipient_id', r.id, 'email', r.email,
                                                  'fields', coalesce(r.fields, '{}'))
                                ORDER BY r.id)::text
                           AS recipients,
                       -- A row no longer active on its list (unsubscribed from it since
                       -- planning) is held back like a suppressed address.
                       array_agg(r.id ORDER BY r.id) FILTER (
                           WHERE r.status <> 'active'
                              OR EXISTS (SELECT 1 FROM suppressions s WHERE s.email = r.email)
                       ) AS suppressed
                  FROM (SELECT b.batch_id, unnest(b.recipient_ids) AS rid
                          FROM batch_plans b WHERE b.batch_id = ANY($1::text[])) AS m
                  JOIN recipients r ON r.id = m.rid
                 GROUP BY m.batch_id
                """,
                [r["batch_id"] for r in rows],
            )
            by_batch = {m["batch_id"]: m["recipients"].encode() for m in members}
            suppressed = {m["batch_id"]: m["suppressed"] or [] for m in members}
            window = EmitWindow(
                [
                    PendingBatch(
                        batch_id=r["batch_id"],
                        campaign_id=r["campaign_id"],
                        batch_no=r["batch_no"],
                        emitted=r["emitted"] + 1,
                        recipients_json=by_batch.get(r["batch_id"], b"[]"),
                        set_aside_reason=r["set_aside_reason"],
                        suppressed_ids=suppressed.get(r["batch_id"], []),
                        variant=r["variant"],
                        content_id=r["variant_content_id"],
                        cancelled_unsent=r["cancelled_unsent"],
                    )
                    for r in rows
                ]
            )
            yield window
            if window.set_aside:
                await conn.executemany(
                    "UPDATE batch_plans SET set_aside_reason = $2, set_aside_at = now()"
                    " WHERE batch_id = $1",
                    list(window.set_aside.items()),
                )
            ids = [r["batch_id"] for r in rows]
            waits = await _backlog_seconds(conn, rows, policy.rates if policy else {})
            await conn.execute(
                """
                UPDATE batch_plans b
                   SET emitted = emitted + 1, last_emitted_at = now(),
                       expected_by = now() + make_interval(secs => w.seconds)
                  FROM unnest($1::text[], $2::float8[]) AS w(batch_id, seconds)
                 WHERE b.batch_id = w.batch_id
                """,
                ids,
                waits,
            )

    @asynccontextmanager
    async def pausing(self, campaign_id: UUID, origin: str, reason: str) -> AsyncIterator[bool]:
        """Pause a sending campaign on a service's request (a provider outage, the guard):
        a compare-and-set from `in_progress`, with the reason. Yields whether it changed,
        inside the transaction, so that its `campaign.status` is published before the
        commit (a pause is never shown without its event)."""
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await conn.fetchval(
                """
                UPDATE campaigns
                   SET status = 'paused', pause_reason = $3, paused_by = $2, updated_at = now()
                 WHERE id = $1 AND status = 'in_progress'
                RETURNING true
                """,
                campaign_id,
                origin,
                reason,
            )
            yield bool(changed)

    async def decide_winners(self, now: datetime, limit: int = 20) -> list[WinnerDecision]:
        """Store the winner of every A/B test whose wait is over by the scheduler's clock
        `now`, whose metric is not `manual`, and whose test batches the tracker has all
        accounted for, by the tracker's per-variant counters (issue 17 item 1).

        Once: a compare-and-set on `winner IS NULL` (an admin's pick through the API wins if
        it came first), with the rows locked SKIP LOCKED so that several schedulers share
        the work. A paused campaign is decided too (its remainder waits for the resume), and
        one that finished with no remainder (a test share of 1) for its report; a cancelled
        one is not."""
        decisions: list[WinnerDecision] = []
        async with self.pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                """
                SELECT a.campaign_id, a.metric FROM ab_tests a
                  JOIN campaigns c ON c.id = a.campaign_id
                 WHERE a.winner IS NULL AND a.metric <> 'manual'
                   AND a.test_started_at IS NOT NULL
                   AND a.test_started_at + make_interval(secs => a.wait_seconds) <= $1
                   AND c.status IN ('in_progress', 'paused', 'completed', 'failed')
                   AND NOT EXISTS (
                       SELECT 1 FROM batch_plans b
                        WHERE b.campaign_id = a.campaign_id AND b.variant IS NOT NULL
                          AND NOT EXISTS (
                              SELECT 1 FROM tracker_batches t WHERE t.batch_id = b.batch_id))
                 ORDER BY a.test_started_at
                 LIMIT $2
                   FOR UPDATE OF a SKIP LOCKED
                """,
                now,
                limit,
            )
            for test in due:
                rows = await conn.fetch(
                    """
                    SELECT v.variant, coalesce(s.sent, 0) AS sent,
                           coalesce(s.delivered, 0) AS delivered,
                           coalesce(s.unique_opens, 0) AS unique_opens,
                           coalesce(s.unique_clicks, 0) AS unique_clicks
                      FROM ab_variants v
                      LEFT JOIN campaign_variant_stats s
                             ON s.campaign_id = v.campaign_id AND s.variant = v.variant
                     WHERE v.campaign_id = $1
                    """,
                    test["campaign_id"],
                )
                counts = [
                    VariantCounts(
                        r["variant"],
                        r["sent"],
                        r["unique_opens"],
                        r["unique_clicks"],
                        r["delivered"],
                    )  # fmt: skip
                    for r in rows
                ]
                if not counts:
                    continue
                decision = choose_winner(counts, test["metric"])
                await conn.execute(
                    """
                    UPDATE ab_tests
                       SET winner = $2, decided_at = $3, decided_by = $4,
                           decision_reason = $5, updated_at = now()
                     WHERE campaign_id = $1 AND winner IS NULL
                    """,
                    test["campaign_id"],
                    decision.winner,
                    now,
                    f"scheduler:{test['metric']}",
                    decision.reason,
                )
                decisions.append(
                    WinnerDecision(test["campaign_id"], decision.winner, decision.reason)
                )
        return decisions

    async def reemit_unaccounted_now(self, campaign_id: UUID) -> int:
        """Make every emitted batch of the campaign not yet accounted for due at the next
        tick: on resume (dispatchers handed back a paused campaign's batches) and on cancel
        (dispatchers report the rest `cancelled`). Returns how many were made due."""
        result = await self.pool.execute(
            """
            UPDATE batch_plans b SET last_emitted_at = '-infinity'
             WHERE b.campaign_id = $1 AND b.emitted > 0
               AND NOT EXISTS (SELECT 1 FROM tracker_batches t WHERE t.batch_id = b.batch_id)
            """,
            campaign_id,
        )
        return int(result.split()[-1])


@dataclass(frozen=True)
class AudienceTarget:
    """What a campaign's plan reads: its audience definition, the filters of its segments
    as the API copied them (the scheduler never reads the API's `segments`), and the
    scheduler's clock, which a segment's "within N days" counts from."""

    audience: audiences.Audience
    filters: dict[UUID, Any]
    raw_filters: dict[str, Any]
    now: datetime
    # Set by `snapshot`: the audience is read from this temporary table.
    table: str | None = None

    @classmethod
    def of_campaign(cls, campaign: asyncpg.Record, now: datetime) -> AudienceTarget:
        """AudienceError when the definition, or a segment's copied filter, is unusable."""
        audience = audiences.Audience.of_campaign(campaign["audience"], campaign["list_id"])
        raw = campaign["audience_filters"] or {}
        filters = audiences.parse_filters(audience, raw)
        named = {str(s) for s in audience.segment_ids}
        return cls(audience, filters, {k: v for k, v in raw.items() if k in named}, now)

    async def snapshot(
        self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
    ) -> AudienceTarget:
        """The same audience, read from a temporary table that holds it for the rest of the
        transaction, when building it costs more than a scan: deduplicating several lists
        and segments sorts the candidates by address, and the plan reads the audience
        twice (its counts and largest recipient, then the cut). One list without segments is read
        as it is (its index narrows the scan, and it needs no deduplication)."""
        if self.table is not None or (len(self.audience.lists) == 1 and not self.audience.segments):
            return self
        built = self.sql(first_param=1, keep_suppressed=True)
        await conn.execute(
            "CREATE TEMPORARY TABLE audience_snapshot (id bigint, email text, fields jsonb,"
            " list_id uuid, suppressed boolean) ON COMMIT DROP"
        )
        await conn.execute(
            f"INSERT INTO audience_snapshot {built.sql}",  # noqa: S608 - built SQL only
            *built.params,
        )
        return dataclasses.replace(self, table="pg_temp.audience_snapshot")

    def sql(self, first_param: int, keep_suppressed: bool = False) -> audiences.AudienceSql:
        if self.table is not None:
            if keep_suppressed:
                return audiences.AudienceSql(
                    f"SELECT id, email, fields, list_id, suppressed FROM {self.table}"  # noqa: S608
                )
            return audiences.AudienceSql(
                f"SELECT id, email, fields, list_id FROM {self.table} WHERE NOT suppressed"  # noqa: S608
            )
        return audiences.build(
            self.audience,
            self.filters,
            now=self.now,
            first_param=first_param,
            keep_suppressed=keep_suppressed,
        )

    def as_planned(self) -> dict[str, Any]:
        """The definition planned from, with the segment filters it used."""
        return {**self.audience.to_json(), "filters": self.raw_filters}


async def _fail_plan(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    campaign_id: UUID,
    content_id: UUID,
    campaign: asyncpg.Record,
    reason: str,
) -> PlanSummary:
    """A claimed campaign whose audience cannot be built (a definition the API would not
    have written): failed, with the reason, and an empty plan, rather than a claim retried
    on every tick."""
    log.error("campaign audience unusable; campaign failed", reason=reason)
    await conn.execute(
        "UPDATE campaigns SET status = 'failed', finished_at = now(), pause_reason = $2"
        " WHERE id = $1",
        campaign_id,
        f"audience: {reason}"[:500],
    )
    await conn.execute(
        """
        INSERT INTO campaign_plans (campaign_id, content_id, provider, audience_total,
                                    suppressed_total, batches_total, audience)
        VALUES ($1, $2, $3, 0, 0, 0, $4)
        """,
        campaign_id,
        content_id,
        campaign["provider"],
        {"error": reason},
    )
    return PlanSummary(
        campaign_id=campaign_id,
        content_id=content_id,
        provider=campaign["provider"],
        audience_total=0,
        suppressed_total=0,
        batches_total=0,
    )


# A recipient's size in its `batch.ready` event, over-estimated: jsonb's text form has a
# space after every colon and comma that the event's compact JSON has not.
_RECIPIENT_SIZE = (
    f"octet_length(r.email) + octet_length(r.fields::text) + {RECIPIENT_OVERHEAD_BYTES}"
)


async def _snapshot_variants(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    campaign_id: UUID,
    campaign: asyncpg.Record,
    now: datetime,
) -> AbSplit | None:
    """An A/B campaign's variants frozen (issue 17 item 1): one content snapshot each, the
    campaign's content with the variant's overrides, and the test's start by the
    scheduler's clock (its wait counts from there). None for a campaign without a test."""
    test = await conn.fetchrow(
        """
        UPDATE ab_tests SET test_started_at = $2, updated_at = now()
         WHERE campaign_id = $1 RETURNING test_share, seed
        """,
        campaign_id,
        now,
    )
    if test is None:
        return None
    names = await conn.fetch(
        """
        WITH frozen AS (
            SELECT v.variant, gen_random_uuid() AS content_id,
                   coalesce(v.subject, $2) AS subject, coalesce(v.html, $3) AS html,
                   coalesce(v.text, $4) AS text, coalesce(v.from_name, $6) AS from_name
              FROM ab_variants v WHERE v.campaign_id = $1),
        snapshots AS (
            INSERT INTO content_snapshots (id, campaign_id, subject, html, text, from_email,
                                           from_name)
            SELECT content_id, $1, subject, html, text, $5, from_name FROM frozen)
        UPDATE ab_variants v SET content_id = f.content_id
          FROM frozen f
         WHERE v.campaign_id = $1 AND v.variant = f.variant
        RETURNING v.variant
        """,
        campaign_id,
        campaign["subject"],
        campaign["html"],
        campaign["text"],
        campaign["from_email"],
        campaign["from_name"],
    )
    variants = tuple(sorted(r["variant"] for r in names))
    return AbSplit(float(test["test_share"]), int(test["seed"]), variants) if variants else None


def _group_sql(ab: AbSplit | None, first: int) -> tuple[str, list[Any]]:
    """The SQL expression of a sendable recipient's group (see `AbSplit`; 0 without a test)
    over the rows of `recipients r`, and its parameters, numbered from `$first`.
    `libs.stats.ab.split` is its reference."""
    if ab is None:
        return "0", []
    seed, share, n = f"${first}::bigint", f"${first + 1}::float8", f"${first + 2}::int"
    rank = f"row_number() OVER (ORDER BY hashtextextended(r.id::text, {seed}), r.id)"
    expression = (
        f"CASE WHEN {rank} <= floor({share} * count(*) OVER () + 0.5)"
        f" THEN ({rank} - 1) % {n} + 1 ELSE {n} + 1 END"
    )
    return expression, [ab.seed, ab.share, len(ab.variants)]


@dataclass(frozen=True)
class _Zoning:
    """Where a zoned plan (local time, or a send window) puts each recipient: the zones a
    `timezone` field may name, numbered from 1 in the order they fall due, the instant each
    falls due, and the number of the zone of a recipient whose field names none."""

    names: list[str]
    due: list[datetime]
    fallback_no: int


async def _audience_stats(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, target: AudienceTarget
) -> asyncpg.Record:
    """One pass over the audience: its size, how many are suppressed, and the largest
    sendable recipient's size in a `batch.ready` event (what the cut must allow for)."""
    counted = target.sql(first_param=1, keep_suppressed=True)
    row = await conn.fetchrow(
        "SELECT count(*) AS audience, count(*) FILTER (WHERE r.suppressed) AS suppressed,"  # noqa: S608
        f" coalesce(max({_RECIPIENT_SIZE}) FILTER (WHERE NOT r.suppressed), 0) AS largest"
        f" FROM ({counted.sql}) AS r",
        *counted.params,
    )
    assert row is not None  # an aggregate always returns a row
    return row


async def _plan_batches(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    campaign_id: UUID,
    target: AudienceTarget,
    batch_size: int,
    max_message_bytes: int,
    largest: int,
    ab: AbSplit | None = None,
    zoning: _Zoning | None = None,
) -> tuple[int, int]:
    """Cut the sendable audience into batches of at most `batch_size` recipients whose
    `batch.ready` event stays under `max_message_bytes` (issue 11, item 8), in one
    statement, and write them to `batch_plans`. Returns (batches, invalid zones).

    Recipients are partitioned first by zone (`zoning`: each batch has one zone and its
    `due_at`), then by A/B group (`_group_sql`: each batch is of one variant, or of the
    remainder). Each partition is cut in id order: by count alone when a full batch of the
    largest recipient fits the budget (`cut_by_count`), else by windows of the running sum
    of sizes, each cut again by count (`_BYTE_CUT`). Batches are numbered in the order of
    (zone, group, first id), so a zoned plan's batches are numbered in the order they fall
    due."""
    budget = recipient_bytes_budget(max_message_bytes)
    by_count = cut_by_count(batch_size, largest, budget)
    params = audiences.Binder()
    campaign, size_of_batch = params.bind(str(campaign_id)), params.bind(batch_size)
    if by_count:
        cut, size = _COUNT_CUT.format(batch_size=size_of_batch), "0"
    else:
        chunk = params.bind(byte_chunk(budget, largest))
        cut, size = _BYTE_CUT.format(batch_size=size_of_batch, chunk=chunk), _RECIPIENT_SIZE
    variants = params.bind(list(ab.variants) if ab else [])
    if zoning is None:
        zones = "WITH"
        zone_no, invalid, join = "1", "false", ""
        zone_name = due_at = "NULL"
    else:
        keys = params.bind([n.lower() for n in zoning.names])
        names, due = params.bind(zoning.names), params.bind(zoning.due)
        fallback = params.bind(zoning.fallback_no)
        zones = (
            f"WITH z AS (SELECT * FROM unnest({keys}::text[]) WITH ORDINALITY AS z(key, zone_no)),"  # noqa: S608, E501
        )
        zone_no = f"coalesce(z.zone_no, {fallback})"
        invalid = "z.zone_no IS NULL AND coalesce(btrim(r.fields->>'timezone'), '') <> ''"
        join = " LEFT JOIN z ON z.key = lower(btrim(r.fields->>'timezone'))"
        zone_name, due_at = f"({names}::text[])[zone_no]", f"({due}::timestamptz[])[zone_no]"
    sendable = target.sql(first_param=params.next)
    params.take(sendable.params)
    group, group_args = _group_sql(ab, params.next)
    params.take(group_args)
    row = await conn.fetchrow(
        f"""
        {zones}
        sized AS (
            SELECT r.id, {size} AS size, {zone_no}::int AS zone_no, {group} AS grp,
                   {invalid} AS invalid
              FROM ({sendable.sql}) AS r{join}),
        {cut},
        planned AS (
            INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids, zone,
                                     due_at, variant)
            SELECT {campaign}::text || ':' || batch_no, {campaign}::uuid, batch_no, ids,
                   {zone_name}, {due_at}, ({variants}::text[])[grp]
              FROM cut
            RETURNING 1)
        SELECT (SELECT count(*) FROM planned) AS batches,
               (SELECT coalesce(sum(invalid), 0) FROM cut) AS invalid
        """,  # noqa: S608 - only constants and parameter numbers are formatted in
        *params.params,
    )
    assert row is not None
    return int(row["batches"]), int(row["invalid"])


# The cut by count: each partition's ids as one sorted array, sliced into batches. One sort,
# no window over the audience. Partitions are numbered from their first batch's number.
_COUNT_CUT = """
        partitions AS (
            SELECT zone_no, grp, array_agg(id ORDER BY id) AS ids,
                   count(*) FILTER (WHERE invalid) AS invalid,
                   (count(*) + {batch_size} - 1) / {batch_size} AS batches
              FROM sized GROUP BY zone_no, grp),
        numbered AS (
            SELECT *, sum(batches) OVER (ORDER BY zone_no, grp) - batches AS first_no
              FROM partitions),
        cut AS (
            SELECT first_no + slice AS batch_no, zone_no, grp,
                   ids[slice * {batch_size} + 1 : (slice + 1) * {batch_size}] AS ids,
                   CASE WHEN slice = 0 THEN invalid ELSE 0 END AS invalid
              FROM numbered, generate_series(0, batches - 1) AS slice)"""

# The cut by bytes: windows of the running sum of sizes (`byte_chunk` wide), each cut again
# by count.
_BYTE_CUT = """
        windowed AS (
            SELECT id, zone_no, grp, invalid,
                   (sum(size) OVER (PARTITION BY zone_no, grp ORDER BY id) - size) / {chunk}
                       AS window_no
              FROM sized),
        numbered AS (
            SELECT *, row_number() OVER (PARTITION BY zone_no, grp, window_no ORDER BY id) AS n
              FROM windowed),
        ranked AS (
            SELECT id, zone_no, grp, invalid,
                   dense_rank() OVER (ORDER BY zone_no, grp, window_no, (n - 1) / {batch_size})
                       - 1 AS batch_no
              FROM numbered),
        cut AS (
            SELECT batch_no, min(zone_no) AS zone_no, min(grp) AS grp,
                   array_agg(id ORDER BY id) AS ids, count(*) FILTER (WHERE invalid) AS invalid
              FROM ranked GROUP BY batch_no)"""


def _zoning(campaign: asyncpg.Record, list_default: str | None) -> _Zoning:
    """The zones of a local-time campaign, or of one with a send window.

    The zone: the recipient's `timezone` field (an IANA name, any case), else the default
    zone of the audience's first list, else the campaign's, else UTC. A field naming no zone
    falls back and is counted. `due_at`: the local wall time in that zone (local time), or
    the campaign's instant. Zones are resolved and instants computed here
    (libs.common.sendtime), once per known zone, and joined in as parameters."""
    fallback = next(
        name
        for name in (list_default, campaign["timezone"], "UTC")
        if name and zone_or_none(name) is not None
    )
    wall = campaign["local_send_at"] if campaign["local_time"] else None

    def due_in(name: str) -> datetime:
        tz = zone_or_none(name)
        if wall is None or tz is None:
            return campaign["send_at"]
        return local_instant(wall, tz)

    # One name per key: a recipient matches one zone, whatever the case of its field.
    # Zones are numbered in the order they fall due: the plan sorts integers, not names.
    by_key = {n.lower(): n for n in reversed(known_zones())}
    by_key.setdefault(fallback.lower(), fallback)
    names = sorted(by_key.values(), key=lambda n: (due_in(n), n))
    fallback_no = names.index(by_key[fallback.lower()]) + 1
    return _Zoning(names, [due_in(n) for n in names], fallback_no)


# A campaign with a rate cap has at most this much of its cap (in hours) emitted and not
# accounted for (at least two batches): its batches would otherwise fill every
# dispatcher's places and wait there for the cap, ahead of other campaigns' batches, and be
# handed back and forth on `batch.ready` meanwhile.
CAPPED_LOOKAHEAD_HOURS = 5 / 60

# Dispatchers do not send in emission order: each takes the batches of all its partitions
# at once, and sends at its share of the rate (its share of the partitions), however
# unevenly the batches spread over them. So any queued batch may be the last to go, and
# one instance may hold more than its share: twice the whole queue covers that.
_BACKLOG_SLACK = 2.0


async def _backlog_seconds(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    rows: list[dict[str, Any]],
    rates: dict[str, float],
) -> list[float]:
    """For each batch of the window: how long its provider's rate limit may take to send
    the whole queue it joins (batches of campaigns in progress that the tracker has not
    accounted for, emitted or about to be), with slack. 0 where there is no limit."""
    if not any(rates.get(r["provider"], 0) > 0 for r in rows):
        return [0.0] * len(rows)
    queued = await conn.fetch(
        """
        SELECT p.provider, sum(cardinality(b.recipient_ids)) AS recipients
          FROM campaigns c
          JOIN campaign_plans p ON p.campaign_id = c.id
          JOIN batch_plans b ON b.campaign_id = c.id
         WHERE c.status = 'in_progress' AND b.set_aside_reason IS NULL
           AND NOT EXISTS (SELECT 1 FROM tracker_batches t WHERE t.batch_id = b.batch_id)
         GROUP BY p.provider
        """
    )
    queue = {q["provider"]: int(q["recipients"]) for q in queued}
    waits = []
    for row in rows:
        rate = rates.get(row["provider"], 0.0)
        waits.append(_BACKLOG_SLACK * queue.get(row["provider"], 0) / rate if rate > 0 else 0.0)
    return waits


# Batches in flight that the tracker has accounted for since the last tick: marked, so that
# the due query (below) reads only the batches still out, through a partial index. Locked
# rows are another scheduler's window: marked on a later tick.
_MARK_ACCOUNTED = """
WITH in_flight AS (
    SELECT batch_id FROM batch_plans
     WHERE accounted_at IS NULL AND emitted > 0
       FOR UPDATE SKIP LOCKED
)
UPDATE batch_plans b SET accounted_at = t.folded_at
  FROM in_flight f JOIN tracker_batches t ON t.batch_id = f.batch_id
 WHERE b.batch_id = f.batch_id
"""


async def _due_rows(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    emitted_before: datetime,
    limit: int,
    policy: ReemitPolicy | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The batches `batches_to_emit` locks (its doc), with what `_defer_closed` needs."""
    rows = await conn.fetch(
        """
        WITH capped AS (
            -- Campaigns in progress with a rate cap (issue 17 item 4): recipients emitted
            -- and not accounted for, the batch size, the first batch due and not emitted.
            SELECT c.id AS campaign_id, c.max_per_hour::float8 AS cap,
                   coalesce(sum(cardinality(b.recipient_ids))
                            FILTER (WHERE b.emitted > 0 AND t.batch_id IS NULL), 0) AS inflight,
                   greatest(avg(cardinality(b.recipient_ids)), 1)::float8 AS batch_size,
                   min(b.batch_no) FILTER (WHERE b.emitted = 0
                                           AND (b.due_at IS NULL OR b.due_at <= $4))
                       AS first_due
              FROM campaigns c
              JOIN batch_plans b ON b.campaign_id = c.id AND b.set_aside_reason IS NULL
              LEFT JOIN tracker_batches t ON t.batch_id = b.batch_id
             WHERE c.status = 'in_progress' AND c.max_per_hour IS NOT NULL
             GROUP BY c.id, c.max_per_hour
        )
        SELECT b.batch_id, b.campaign_id, b.batch_no, b.recipient_ids, b.emitted,
               b.set_aside_reason, p.provider, b.zone, c.status, c.send_window,
               b.variant, v.content_id AS variant_content_id,
               (b.variant IS NULL AND a.campaign_id IS NOT NULL AND a.winner IS NULL
                AND c.status = 'cancelled') AS cancelled_unsent
          FROM batch_plans b
          JOIN campaigns c ON c.id = b.campaign_id
                           AND c.status IN ('in_progress', 'cancelled')
                           AND b.accounted_at IS NULL
          JOIN campaign_plans p ON p.campaign_id = b.campaign_id
          LEFT JOIN capped cp ON cp.campaign_id = b.campaign_id
          LEFT JOIN ab_tests a ON a.campaign_id = b.campaign_id
          LEFT JOIN ab_variants v ON v.campaign_id = b.campaign_id
                                 AND v.variant = coalesce(b.variant, a.winner)
         CROSS JOIN LATERAL (SELECT make_interval(
                secs => $3::float8 * power(2, least(greatest(b.emitted - 1, 0), 6))
               ) AS backoff) k
         WHERE (cp.campaign_id IS NULL
                -- A capped campaign's batches are emitted at its pace: no more in flight
                -- than `$5` hours of its cap (at least two batches).
                OR (b.emitted = 0
                    AND b.batch_no < cp.first_due + greatest(ceil(
                        (greatest(cp.cap * $5::float8, 2 * cp.batch_size) - cp.inflight)
                        / cp.batch_size), 0))
                -- ... and one in flight is not taken for lost before its cap could have
                -- sent everything in flight (twice, like the provider's backlog), by the
                -- cap in force now.
                OR (b.emitted > 0
                    AND (b.last_emitted_at < $1::timestamptz
                         OR now() > b.last_emitted_at + k.backoff
                                    + make_interval(secs => 7200 * cp.inflight / cp.cap))))
           AND (b.emitted = 0
                OR b.last_emitted_at < $1::timestamptz
                OR ($3::float8 IS NOT NULL
                    -- First: false for almost every emitted batch, and one probe (the
                    -- checks below read the campaign's other batches).
                    AND NOT EXISTS (SELECT 1 FROM tracker_batches t WHERE t.batch_id = b.batch_id)
                    AND (
                        -- Stalled: no sign of life for the backoff.
                        (now() > coalesce(b.expected_by, b.last_emitted_at) + k.backoff
                         AND NOT EXISTS (
                             SELECT 1 FROM send_ledger l
                              WHERE l.batch_id = b.batch_id
                                AND greatest(l.started_at, l.finished_at) > now() - k.backoff)
                         AND NOT EXISTS (
                             SELECT 1 FROM tracker_batches t
                              WHERE t.campaign_id = b.campaign_id
                                AND t.folded_at > now() - k.backoff))
                        -- Overtaken: its result was stored (`done`, then published), yet a
                        -- result of its campaign that finished $6 s later was folded first.
                        -- A campaign's results travel in one partition, in order: this one
                        -- was lost. Replayed from the ledger at once, not after the
                        -- campaign goes quiet; at most once per $6 s.
                        OR EXISTS (
                            SELECT 1 FROM send_ledger l
                             WHERE l.batch_id = b.batch_id AND l.state = 'done'
                               AND now() > greatest(l.finished_at, b.last_emitted_at)
                                           + make_interval(secs => $6::float8)
                               AND EXISTS (
                                   SELECT 1 FROM tracker_batches t
                                    WHERE t.campaign_id = b.campaign_id
                                      AND t.finished_at > l.finished_at
                                                          + make_interval(secs => $6::float8)))
                    )))
           AND NOT EXISTS (SELECT 1 FROM tracker_batches t WHERE t.batch_id = b.batch_id)
           AND (b.due_at IS NULL OR b.due_at <= $4 OR c.status = 'cancelled')
           -- An A/B campaign's remainder waits for its winner (a cancelled one's is
           -- reported `cancelled` by the emitter, never sent).
           AND (b.variant IS NOT NULL OR a.campaign_id IS NULL OR a.winner IS NOT NULL
                OR c.status = 'cancelled')
         ORDER BY b.campaign_id, b.batch_no
         LIMIT $2
           FOR UPDATE OF b SKIP LOCKED
        """,
        emitted_before,
        limit,
        policy.base_s if policy is not None else None,
        now,
        CAPPED_LOOKAHEAD_HOURS,
        policy.overtaken_s if policy is not None else 0.0,
    )
    return [{**r, "deferred": False} for r in rows]


async def _defer_closed(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    rows: list[dict[str, Any]],
    now: datetime,
) -> int:
    """Mark `deferred` the rows of campaigns in progress whose send window is closed at
    `now` in their batch's zone, and move their `due_at` to its next opening. Returns how
    many were deferred."""
    moved: list[tuple[str, datetime]] = []
    campaigns: set[str] = set()
    for row in rows:
        if row["status"] != "in_progress" or row["send_window"] is None or row["zone"] is None:
            continue
        tz = zone_or_none(row["zone"])
        if tz is None:  # planned with a zone this process no longer knows: do not hold it
            continue
        opening = next_opening(now, tz, SendWindow.model_validate(row["send_window"]).window())
        if opening > now:
            row["deferred"] = True
            moved.append((row["batch_id"], opening))
            campaigns.add(str(row["campaign_id"]))
    if moved:
        await conn.executemany("UPDATE batch_plans SET due_at = $2 WHERE batch_id = $1", moved)
        BATCHES_WINDOW_DEFERRED.inc(len(moved))
        log.info(
            "batches wait for their send window",
            batches=len(moved),
            campaign_ids=sorted(campaigns),
            first_opening=min(at for _, at in moved).isoformat(),
        )
    return len(moved)
