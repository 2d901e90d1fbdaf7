"""Sending one batch with the no-duplicate-send guarantee (no Kafka, no HTTP here).

ledger says done     -> replay the stored result, send nothing
ledger says sending  -> wait while its owner's lease is live, then `unknown` (or re-send,
                        at-least-once) under a new claim
not in the ledger    -> render, wait for the rate limit, claim (`sending`, committed, with a
                        lease renewed while sending), send, store `done` (fenced by the claim)

Before the claim, the campaign's status decides (see `control`): a paused campaign's batch
is handed back untouched, a cancelled one's recipients are reported `cancelled`. A provider
that refuses the account (a revoked key) hands the batch back too (`outage`): what it
accepted before stays recorded, the ledger row is released, and the caller asks for the
campaign to be paused. The rate
limit is waited for before the claim too, so that a pause takes effect on batches queued
behind the limit, and a dispatcher killed while they wait leaves no `sending` row behind.
Only `max_sending` batches per instance are claimed at once (issue 11 item 12): a batch is
claimed when its turn under the rate limit came and a sending slot is free, that is when
it is about to go out, so a killed instance leaves few `unknown`.
Addresses suppressed since planning are reported `suppressed` and never mailed (item 5);
once this instance is stopping it claims nothing more (item 6).

Per-domain throttles (issue 14 item 4) are reserved after the claim, in PostgreSQL, per
recipient-domain group: the recipients with room are sent, the rest wait, under the lease,
with the ledger row parked (what is not recorded was never handed to a provider) and the
sending slot lent to other batches. A wait ends in a send, a pause or stop (handed back,
released), or after `throttle_max_wait_s` (handed back `throttled`: the caller puts the
batch back on `batch.ready`, so that the consumer's poll interval is never exceeded).
A campaign's own rate cap (issue 17 item 4, `max_per_hour`) is reserved in the same
transaction as a room shared by all groups; a batch held by it waits the same way, and asks
again at once when the cap changes meanwhile. The waits sleep on an injectable clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, Protocol
from uuid import UUID

from libs.common.clock import Clock, SystemClock
from libs.common.events import BatchReady, BatchRecipient, DeliveryResult, RecipientOutcome
from libs.common.logging import bound_contextvars, get_logger
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox, Sender
from libs.mail.providers.base import Provider, ProviderOutage
from libs.mail.render_pool import RenderPool
from libs.mail.rendering import Content
from libs.mail.throttles import domain_of, group_counts, split_outbox
from services.dispatcher.control import Verdict, cancelled_outcomes, verdict_for
from services.dispatcher.ledger import (
    Claim,
    Decision,
    DeliveryMode,
    LedgerEntry,
    decide,
    suppressed_outcomes,
    unknown_outcomes,
    unsettled,
)
from services.dispatcher.metrics import (
    BATCHES,
    CAMPAIGN_CAP_WAITS,
    EMAILS,
    FAILOVERS,
    RATE_LIMIT_WAIT,
    THROTTLE_WAIT,
    THROTTLE_WAITING,
    THROTTLED_BATCHES,
)

log = get_logger(__name__)

# Progress of a multi-request batch is written to the ledger at most this often: a crash
# loses at most this much progress, which then reads as `unknown` (never as re-sendable).
_PROGRESS_FLUSH_S = 0.5
_WAIT_POLL_S = 0.2
# While a batch waits for its turn under the rate limit, the campaign's status is looked at
# this often (a pause must take effect within 2 s).
_TURN_POLL_S = 0.2
# A lease is renewed four times per lease period; a sender that could not renew it for
# this share of the period stops sending, as another instance may soon take it over.
_RENEWALS_PER_LEASE = 4
_SELF_FENCE_SHARE = 0.75
# A batch waiting for a domain throttle asks again this long after the full window ended.
_THROTTLE_WAKE_MARGIN_S = 0.01


class CampaignGate(Protocol):
    """The campaign statuses (see `campaign_status.CampaignStatuses`)."""

    def latest(self, campaign_id: UUID) -> str | None: ...
    async def current(self, campaign_id: UUID) -> str | None: ...
    async def confirmed(self, campaign_id: UUID) -> str | None: ...
    def cap(self, campaign_id: UUID) -> int | None: ...


class _AlwaysSend:
    def latest(self, campaign_id: UUID) -> str | None:
        return None

    async def current(self, campaign_id: UUID) -> str | None:
        return None

    async def confirmed(self, campaign_id: UUID) -> str | None:
        return None

    def cap(self, campaign_id: UUID) -> int | None:
        return None


class SuppressionCheck(Protocol):
    async def __call__(self, emails: list[str]) -> set[str]:
        """The lower-cased addresses among `emails` that are suppressed now."""
        ...


async def _none_suppressed(emails: list[str]) -> set[str]:
    return set()


class HandedBack(Exception):  # noqa: N818 - an outcome, not an error
    """The batch was not sent (or only in part, its ledger row released).

    `paused`: its campaign is paused; the scheduler re-emits it on resume, so its offset may
    be committed. `outage`: the provider refused the account (`detail` says how); the
    campaign is to be paused, and the offset may be committed as for `paused`. `stopping`:
    this instance is shutting down; its offset must not be committed, so that the
    partition's next owner reads it again. `throttled`: it waited for a domain throttle as
    long as one handling may; the caller puts it back on `batch.ready` before committing.
    """

    def __init__(
        self,
        batch_id: str,
        reason: Literal["paused", "outage", "stopping", "throttled"],
        *,
        campaign_id: UUID | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(f"batch {batch_id} handed back: {reason}{': ' if detail else ''}{detail}")
        self.batch_id = batch_id
        self.reason = reason
        self.campaign_id = campaign_id
        self.detail = detail


class ContentSource(Protocol):
    async def get(self, content_id: UUID) -> Content | None: ...


class Ledger(Protocol):
    """See `ledger_store.PostgresLedger`: writes return False once the claim is lost."""

    async def get(self, batch_id: str) -> LedgerEntry | None: ...
    async def claim(
        self, batch_id: str, campaign_id: UUID, owner: str, lease_s: float
    ) -> Claim | None: ...
    async def take_over(self, stale: Claim, owner: str, lease_s: float) -> Claim | None: ...
    async def renew(self, claim: Claim, lease_s: float) -> bool: ...
    async def add_progress(self, claim: Claim, outcomes: list[RecipientOutcome]) -> bool: ...
    async def finish(self, claim: Claim, result: Any) -> bool: ...
    async def settle(self, batch_id: str, campaign_id: UUID, owner: str, result: Any) -> bool: ...
    async def release(self, claim: Claim) -> bool: ...
    async def park(self, claim: Claim, outcomes: list[RecipientOutcome]) -> bool: ...
    async def unpark(self, claim: Claim) -> bool: ...


class Reserved(Protocol):
    @property
    def granted(self) -> dict[str, int]: ...
    @property
    def held(self) -> dict[str, int]: ...
    @property
    def wait_s(self) -> float | None: ...
    @property
    def capped(self) -> bool: ...


class Throttles(Protocol):
    """See `throttle_store.PostgresThrottles`."""

    def applies_to(self, provider: str) -> bool: ...
    async def note_domain(self, domain: str) -> None: ...
    async def reserve(
        self,
        provider: str,
        from_domain: str,
        wants: dict[str, int],
        campaign_id: UUID | None = None,
    ) -> Reserved: ...


class _Deferred(Exception):  # noqa: N818 - an outcome, not an error
    def __init__(self, reason: Literal["paused", "stopping", "throttled"]) -> None:
        super().__init__(reason)
        self.reason: Literal["paused", "stopping", "throttled"] = reason


class _Slot:
    """One of the instance's sending slots, lent to other batches while a batch waits for a
    domain throttle (parked, it leaves nothing `unknown` if the instance dies)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self.held = False

    async def __aenter__(self) -> _Slot:
        await self.take()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.lend()

    async def take(self) -> None:
        if not self.held:
            await self._slots.acquire()
            self.held = True

    def lend(self) -> None:
        if self.held:
            self._slots.release()
            self.held = False


class _ProgressRecorder:
    """Collects the provider's outcomes as they come; writes them to the ledger (fenced by
    the claim) at most every `_PROGRESS_FLUSH_S` when the batch takes several requests."""

    def __init__(self, ledger: Ledger, claim: Claim, enabled: bool) -> None:
        self._ledger = ledger
        self._claim = claim
        self._enabled = enabled
        self.seen: list[RecipientOutcome] = []
        self._pending: list[RecipientOutcome] = []
        self._written: set[int] = set()
        self._last_flush = time.monotonic()

    async def __call__(self, outcomes: list[RecipientOutcome]) -> None:
        self.seen.extend(outcomes)
        if not self._enabled:
            return
        self._pending.extend(outcomes)
        if time.monotonic() - self._last_flush >= _PROGRESS_FLUSH_S:
            await self.write(self._pending)

    def written(self) -> None:
        """Everything seen so far is in the ledger (written with the parking)."""
        self._written.update(o.recipient_id for o in self.seen)
        self._pending = []
        self._last_flush = time.monotonic()

    async def write(self, outcomes: list[RecipientOutcome]) -> None:
        """Record `outcomes` now (fenced by the claim), less those already written."""
        unwritten = [o for o in outcomes if o.recipient_id not in self._written]
        self._pending = []
        self._last_flush = time.monotonic()
        if unwritten:
            self._written.update(o.recipient_id for o in unwritten)
            await self._ledger.add_progress(self._claim, unwritten)


class _Lease:
    """Renews a claim's lease while its batch is sent; cancels the send once it is lost."""

    def __init__(self, ledger: Ledger, claim: Claim, lease_s: float) -> None:
        self._ledger = ledger
        self._claim = claim
        self._lease_s = lease_s
        self.lost = False

    async def keep(self, sending: asyncio.Future[Any]) -> None:
        renewed_at = time.monotonic()
        while not sending.done():
            await asyncio.sleep(self._lease_s / _RENEWALS_PER_LEASE)
            asked_at = time.monotonic()
            try:
                held: bool | None = await self._ledger.renew(self._claim, self._lease_s)
            except Exception as exc:  # the database may be away for a moment: try again
                log.warning("lease renewal failed", error=repr(exc), claim=self._claim.number)
                held = None
            if held:
                renewed_at = asked_at
                continue
            if held is False or time.monotonic() - renewed_at > self._lease_s * _SELF_FENCE_SHARE:
                log.error("lease lost; the send stops here", claim=self._claim.number)
                self.lost = True
                sending.cancel()
                return


class BatchDispatcher:
    def __init__(
        self,
        *,
        content: ContentSource,
        ledger: Ledger,
        providers: Mapping[str, Provider],
        headers: HeaderPolicy,
        owner: str,
        mode: DeliveryMode,
        lease_s: float,
        gate: CampaignGate | None = None,
        fallback: str | None = None,
        stopping: Callable[[], bool] = lambda: False,
        suppressed: SuppressionCheck = _none_suppressed,
        max_sending: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        renderer: RenderPool | None = None,
        throttles: Throttles | None = None,
        throttle_max_wait_s: float = 120.0,
        throttle_clock: Clock | None = None,
    ) -> None:
        self._throttle_clock: Clock = throttle_clock or SystemClock()
        self._renderer = renderer or RenderPool()
        self._throttles = throttles
        self._throttle_max_wait_s = throttle_max_wait_s
        self._gate: CampaignGate = gate or _AlwaysSend()
        self._fallback = fallback or None
        self._stopping = stopping
        self._suppressed = suppressed
        self._content = content
        self._ledger = ledger
        self._providers = providers
        self._headers = headers
        self.owner = owner
        self._mode = mode
        self._lease_s = lease_s
        self._clock = clock
        # Batches past the rate-limit wait, claimed and sending, at once in this instance.
        self._sending = asyncio.Semaphore(max_sending)
        # One batch is handled by one task at a time in this process (a re-emitted copy of a
        # batch can arrive while the first is still being sent).
        self._in_flight: dict[str, tuple[asyncio.Lock, int]] = {}

    async def dispatch(self, batch: BatchReady) -> DeliveryResult:
        """Send (or replay, or settle) one batch; raises `HandedBack` when it is not sent."""
        lock, users = self._in_flight.get(batch.batch_id, (asyncio.Lock(), 0))
        self._in_flight[batch.batch_id] = (lock, users + 1)
        try:
            async with lock:
                with bound_contextvars(campaign_id=str(batch.campaign_id), batch_id=batch.batch_id):
                    return await self._dispatch(batch)
        finally:
            lock, users = self._in_flight[batch.batch_id]
            if users == 1:
                del self._in_flight[batch.batch_id]
            else:
                self._in_flight[batch.batch_id] = (lock, users - 1)

    async def _dispatch(self, batch: BatchReady) -> DeliveryResult:
        started = self._clock()
        while True:
            entry = await self._ledger.get(batch.batch_id)
            decision = decide(entry, me=self.owner, mode=self._mode)
            if decision is Decision.WAIT:
                # Nothing of ours is claimed: a stopping instance leaves it to the next owner.
                self._raise_if_stopping(batch)
                await asyncio.sleep(_WAIT_POLL_S)
                continue
            if decision is Decision.REPLAY:
                # A done row has its result: the table's check constraint (migration 0035).
                assert entry is not None and entry.result is not None
                BATCHES.labels(batch.provider, "replayed").inc()
                result = DeliveryResult.model_validate(entry.result)
                return result.model_copy(update={"replayed": True})
            if decision is Decision.UNKNOWN:
                assert entry is not None
                settled = await self._settle_unknown(batch, started, entry)
            else:
                settled = await self._send(batch, started, entry)
            if settled is not None:
                return settled
            # Another instance claimed (or took over) the batch first: decide again.

    async def _verdict(self, campaign_id: UUID, status: str | None) -> Verdict:
        """A verdict other than SEND is confirmed with the database: a batch re-emitted on
        resume must not be handed back on the strength of a stale cached `paused`."""
        verdict = verdict_for(status)
        if verdict is Verdict.SEND:
            return verdict
        return verdict_for(await self._gate.confirmed(campaign_id))

    def _raise_if_stopping(self, batch: BatchReady) -> None:
        if self._stopping():
            raise HandedBack(batch.batch_id, "stopping")

    async def _wait_for_turn(self, batch: BatchReady, provider: Provider, emails: int) -> Verdict:
        """Wait until the rate limit lets `emails` go, watching the campaign's status."""
        verdict = await self._verdict(
            batch.campaign_id, await self._gate.current(batch.campaign_id)
        )
        if verdict is not Verdict.SEND:
            return verdict
        wait = provider.limiter.delay_for(emails)
        RATE_LIMIT_WAIT.labels(provider.name).inc(wait)
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(remaining, _TURN_POLL_S))
            self._raise_if_stopping(batch)
            verdict = await self._verdict(batch.campaign_id, self._gate.latest(batch.campaign_id))
            if verdict is not Verdict.SEND:
                return verdict
        return Verdict.SEND

    def _route(self, name: str) -> Provider | None:
        """The campaign's provider, or the fallback while its circuit breaker is open."""
        primary = self._providers.get(name)
        if primary is None or primary.breaker.allows() or self._fallback in (None, name):
            return primary
        fallback = self._providers.get(self._fallback or "")
        if fallback is None or not fallback.breaker.allows():
            return primary
        FAILOVERS.labels(name, fallback.name).inc()
        log.warning("provider circuit open; batch sent through the fallback",
                    provider=name, fallback=fallback.name)  # fmt: skip
        return fallback

    async def _settle_unknown(
        self, batch: BatchReady, started: datetime, stale: LedgerEntry
    ) -> DeliveryResult | None:
        recorded = stale.recorded_outcomes()
        missing = unsettled(batch.recipients, recorded)
        log.warning("batch outcome unknown after an interrupted send", unknown=len(missing),
                    previous_owner=stale.owner)  # fmt: skip
        BATCHES.labels(batch.provider, "unknown").inc()
        return await self._settle(batch, started, stale, recorded + unknown_outcomes(missing))

    async def _late_suppressions(
        self, batch: BatchReady, pending: list[BatchRecipient]
    ) -> tuple[list[BatchRecipient], list[RecipientOutcome]]:
        """Split off the recipients suppressed since planning: found at emit (the event's
        `suppressed_ids`) or now, at claim time (one query for the batch)."""
        at_emit = set(batch.suppressed_ids)
        now = await self._suppressed([r.email for r in pending if r.recipient_id not in at_emit])
        late = [r for r in pending if r.recipient_id in at_emit or r.email.lower() in now]
        if not late:
            return pending, []
        log.info("recipients suppressed since planning are not mailed", suppressed=len(late))
        late_ids = {r.recipient_id for r in late}
        return [r for r in pending if r.recipient_id not in late_ids], suppressed_outcomes(late)

    async def _send(
        self, batch: BatchReady, started: datetime, stale: LedgerEntry | None
    ) -> DeliveryResult | None:
        """Send what has no recorded outcome. `stale` is a `sending` row whose lease expired,
        to take over (at-least-once re-send), None to claim a fresh batch. None when another
        instance got the claim first."""
        recorded = stale.recorded_outcomes() if stale is not None else []
        content = await self._content.get(batch.content_id)
        provider = self._route(batch.provider)
        pending = unsettled(batch.recipients, recorded)
        problem = (
            f"content snapshot {batch.content_id} not found" if content is None
            else f"unknown provider {batch.provider!r}" if provider is None
            else None
        )  # fmt: skip
        if problem is not None or content is None or provider is None:
            # Bad data inside a valid event: record the reason; nothing was sent.
            log.error("batch cannot be sent", reason=problem)
            return await self._settle(
                batch, started, stale, recorded + _failed(pending, problem or "")
            )
        self._raise_if_stopping(batch)
        pending, late = await self._late_suppressions(batch, pending)
        # The campaign's status is looked at before rendering (a cancelled campaign renders
        # nothing); rendering runs off the event loop, each message within its limits.
        verdict = await self._verdict(
            batch.campaign_id, await self._gate.current(batch.campaign_id)
        )
        outbox = Outbox(sender=Sender(content.from_email, content.from_name))
        if verdict is Verdict.SEND:
            outbox = await self._renderer.outbox(
                content, batch.campaign_id, batch.batch_id, pending, self._headers
            )
            verdict = await self._wait_for_turn(batch, provider, outbox.recipient_count)
        settled = recorded + late + outbox.settled
        if verdict is Verdict.SEND and outbox.recipient_count == 0:
            return await self._settle(batch, started, stale, settled)
        # Its turn came: claim it once a sending slot is free (only then is it about to go
        # out). The campaign's status and this instance's stop are looked at again there.
        async with _Slot(self._sending) as slot:
            if verdict is Verdict.SEND:
                self._raise_if_stopping(batch)
                # From the database, not the cache: a pause committed before this claim
                # must stop it (the cache may lag by a refresh, longer on a loaded host,
                # and an address unsubscribed during the pause was then mailed).
                verdict = verdict_for(await self._gate.confirmed(batch.campaign_id))
            if verdict is Verdict.HAND_BACK:
                log.info("batch handed back: campaign paused")
                BATCHES.labels(provider.name, "handed_back").inc()
                raise HandedBack(batch.batch_id, "paused")
            if verdict is Verdict.CANCEL:
                log.info("batch not sent: campaign cancelled")
                BATCHES.labels(provider.name, "cancelled").inc()
                unsent = unsettled(pending, outbox.settled)
                return await self._settle(
                    batch, started, stale, settled + cancelled_outcomes(unsent)
                )
            claim = await self._claim(batch, stale)
            if claim is None:
                return None
            sent = await self._send_claimed(batch, provider, outbox, claim, slot)
            return await self._finish(batch, started, claim, settled + sent, provider.name)

    async def _claim(self, batch: BatchReady, stale: LedgerEntry | None) -> Claim | None:
        if stale is None:
            return await self._ledger.claim(
                batch.batch_id, batch.campaign_id, self.owner, self._lease_s
            )
        return await self._ledger.take_over(stale.claim, self.owner, self._lease_s)

    async def _send_claimed(
        self, batch: BatchReady, provider: Provider, outbox: Outbox, claim: Claim, slot: _Slot
    ) -> list[RecipientOutcome]:
        """The provider's outcomes, under a lease kept alive meanwhile. An exception, or the
        loss of the lease, ends the batch with what the provider answered so far; the rest
        is `unknown` (it may have gone out), never left `sending`."""
        requests = len(outbox.individual) + (1 if outbox.templated else 0)
        progress = _ProgressRecorder(self._ledger, claim, enabled=requests > 1)
        lease = _Lease(self._ledger, claim, self._lease_s)
        throttled = await self._throttled(provider, outbox, batch.campaign_id)
        sending = asyncio.ensure_future(
            self._send_throttled(batch, provider, outbox, claim, progress, slot)
            if throttled
            else provider.send(outbox, progress)
        )
        keeper = asyncio.create_task(lease.keep(sending))
        try:
            outcomes = await sending
            BATCHES.labels(provider.name, "sent").inc()
            return outcomes
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not lease.lost or (current is not None and current.cancelling()):
                raise
            reason = "lease lost while sending; the provider may or may not have accepted it"
        except ProviderOutage as outage:
            await self._release(batch, provider, progress, claim, outage)
        except _Deferred as deferred:
            # Nothing unrecorded was sent: park it with every outcome seen (if it was not
            # parked already), then end its lease, so that its next reader sends the rest.
            if await self._ledger.park(claim, progress.seen):
                await self._ledger.release(claim)
            log.info("batch handed back while it waited for a domain throttle",
                     reason=deferred.reason, sent=len(progress.seen))  # fmt: skip
            BATCHES.labels(provider.name, "handed_back").inc()
            if deferred.reason == "throttled":
                THROTTLED_BATCHES.labels(provider.name).inc()
            raise HandedBack(
                batch.batch_id, deferred.reason, campaign_id=batch.campaign_id
            ) from None
        except Exception as exc:
            log.exception("batch send raised; settled per recipient")
            reason = f"send interrupted by an error ({type(exc).__name__}); the provider may or may not have accepted it"
        finally:
            keeper.cancel()
        BATCHES.labels(provider.name, "send_error").inc()
        answered = {o.recipient_id for o in progress.seen}
        unanswered = [r for r in _outbox_recipients(outbox) if r.recipient_id not in answered]
        return progress.seen + unknown_outcomes(unanswered, reason[:300])

    async def _throttled(self, provider: Provider, outbox: Outbox, campaign_id: UUID) -> bool:
        """Whether this send reserves per-domain throttles or its campaign's cap; the From
        domain's first send day is recorded either way (a warm-up enabled later counts from
        it)."""
        if self._throttles is None:
            return False
        if self._throttles.applies_to(provider.name) or self._gate.cap(campaign_id) is not None:
            return True
        try:
            await self._throttles.note_domain(domain_of(outbox.sender.email))
        except Exception as exc:  # a record for later: never a reason not to send
            log.warning("first send day not recorded", error=repr(exc))
        return False

    async def _send_throttled(
        self,
        batch: BatchReady,
        provider: Provider,
        outbox: Outbox,
        claim: Claim,
        progress: _ProgressRecorder,
        slot: _Slot,
    ) -> list[RecipientOutcome]:
        """Send the recipients whose domain group has room, and wait for room for the rest
        (parked, its slot lent), until all are sent, or the campaign is cancelled (the rest
        `cancelled`); raises `_Deferred` on a pause, a stop, or a wait too long."""
        assert self._throttles is not None
        domain = domain_of(outbox.sender.email)
        rest = outbox
        outcomes: list[RecipientOutcome] = []
        parked = False
        waited_from: float | None = None
        waiting: set[str] = set()
        try:
            while True:
                wants = group_counts(rest)
                # Whether the campaign has a cap, as this instance's cache says (refreshed
                # every half second); its value is read by the reservation itself, and the
                # wait below ends early when the cached one changes.
                cap = self._gate.cap(batch.campaign_id)
                try:
                    reserved = await self._throttles.reserve(
                        provider.name, domain, wants,
                        batch.campaign_id if cap is not None else None,
                    )  # fmt: skip
                    granted, held, wait_s = reserved.granted, reserved.held, reserved.wait_s
                    if reserved.capped:
                        CAMPAIGN_CAP_WAITS.labels(provider.name).inc()
                        log.info("batch waits for its campaign's rate cap", cap=cap,
                                 held=sum(held.values()), wait_s=round(wait_s or 0.0, 3))  # fmt: skip
                except Exception as exc:  # the database may be away: wait, nothing was sent
                    log.warning("throttle reservation failed; waiting", error=repr(exc))
                    granted, held, wait_s = {}, wants, 1.0
                now, rest = split_outbox(rest, granted, wants)
                if now.recipient_count:
                    if parked:
                        await slot.take()
                        self._raise_if_stopping_deferred()
                        if not await self._ledger.unpark(claim):
                            log.error("claim lost while waiting for a domain throttle")
                            return outcomes  # the claim's holder decides; our finish is fenced
                        parked = False
                    outcomes += await self._send_piece(provider, now, rest, progress)
                if rest.recipient_count == 0:
                    return outcomes
                waiting = self._note_waiting(provider.name, waiting, set(held), wait_s)
                if waited_from is None:
                    waited_from = time.monotonic()
                if not parked:
                    parked = await self._park(claim, progress)
                    if parked:
                        slot.lend()
                cancelled = await self._wait_for_room(
                    batch, provider.name, held, wait_s or 0.0, waited_from, cap
                )
                if cancelled:
                    log.info("batch not sent further: campaign cancelled while it waited")
                    return outcomes + cancelled_outcomes(_outbox_recipients(rest))
        finally:
            for group in waiting:
                THROTTLE_WAITING.labels(provider.name, group).dec()

    async def _send_piece(
        self, provider: Provider, now: Outbox, rest: Outbox, progress: _ProgressRecorder
    ) -> list[RecipientOutcome]:
        """One send of a throttled batch. When it raises and recipients still wait, those
        were never handed over: this piece's unanswered ones are `unknown` (they may have
        gone out), and the batch is handed back for its next reader to send the rest."""
        try:
            return await provider.send(now, progress)
        except (asyncio.CancelledError, ProviderOutage):
            raise
        except Exception as exc:
            if rest.recipient_count == 0:
                raise  # nothing waits: settled per recipient as any send that raised
            log.exception("a send of a throttled batch raised; the rest is handed back")
            BATCHES.labels(provider.name, "send_error").inc()
            answered = {o.recipient_id for o in progress.seen}
            reason = f"send interrupted by an error ({type(exc).__name__}); the provider may or may not have accepted it"
            await progress(
                unknown_outcomes(
                    [r for r in _outbox_recipients(now) if r.recipient_id not in answered],
                    reason[:300],
                )
            )
            raise _Deferred("throttled") from exc

    def _note_waiting(
        self, provider: str, before: set[str], now: set[str], wait_s: float | None
    ) -> set[str]:
        for group in now - before:
            THROTTLE_WAITING.labels(provider, group).inc()
            log.info("batch waits for a domain throttle", group=group, provider=provider,
                     wait_s=round(wait_s or 0.0, 3))  # fmt: skip
        for group in before - now:
            THROTTLE_WAITING.labels(provider, group).dec()
        return now

    async def _park(self, claim: Claim, progress: _ProgressRecorder) -> bool:
        """Park the row with every outcome this claim has seen, in one write (progress a
        database blink left in memory must not be missing from a row that says the rest
        was never sent)."""
        try:
            parked = await self._ledger.park(claim, progress.seen)
        except Exception as exc:  # not parked: the wait is as before, only less crash-proof
            log.warning("ledger row not parked", error=repr(exc))
            return False
        if parked:
            progress.written()
        return parked

    def _raise_if_stopping_deferred(self) -> None:
        if self._stopping():
            raise _Deferred("stopping")

    async def _wait_for_room(
        self, batch: BatchReady, provider: str, held: dict[str, int], wait_s: float,
        waited_from: float, cap: int | None,
    ) -> bool:  # fmt: skip
        """Sleep (on the throttle clock) until the first full window ends, watching the
        campaign, its rate cap and this instance's stop. True when the campaign was
        cancelled meanwhile; False to ask again (the window ended, or the cap changed)."""
        started = time.monotonic()
        clock = self._throttle_clock
        wake = clock.now() + max(wait_s, 0.0) + _THROTTLE_WAKE_MARGIN_S
        try:
            while (remaining := wake - clock.now()) > 0:
                await clock.sleep(min(remaining, _TURN_POLL_S))
                self._raise_if_stopping_deferred()
                if self._gate.cap(batch.campaign_id) != cap:
                    return False  # a new cap applies now, not at the window's end
                verdict = await self._verdict(
                    batch.campaign_id, self._gate.latest(batch.campaign_id)
                )
                if verdict is Verdict.CANCEL:
                    return True
                if verdict is Verdict.HAND_BACK:
                    raise _Deferred("paused")
                if time.monotonic() - waited_from >= self._throttle_max_wait_s:
                    raise _Deferred("throttled")
            return False
        finally:
            for group in held:
                THROTTLE_WAIT.labels(provider, group).inc(time.monotonic() - started)

    async def _settle(
        self,
        batch: BatchReady,
        started: datetime,
        stale: LedgerEntry | None,
        outcomes: list[RecipientOutcome],
    ) -> DeliveryResult | None:
        """Store the result of a batch settled without sending: under a claim taken over
        from `stale`, else as a new `done` row. None when another instance got there first."""
        if stale is None:
            return await self._finish(batch, started, None, outcomes)
        claim = await self._ledger.take_over(stale.claim, self.owner, self._lease_s)
        if claim is None:
            return None
        return await self._finish(batch, started, claim, outcomes)

    async def _release(
        self, batch: BatchReady, provider: Provider, progress: _ProgressRecorder,
        claim: Claim, outage: ProviderOutage,
    ) -> NoReturn:  # fmt: skip
        """The provider refused the account: keep what it settled, release the rest (the
        lease ends at once, so whoever reads the batch after the resume takes it over)."""
        # With every outcome seen before (a throttled batch sends in several pieces).
        await progress.write(progress.seen + outage.settled)
        await self._ledger.release(claim)
        log.error("batch handed back: provider outage", provider=provider.name,
                  reason=outage.reason, settled=len(outage.settled))  # fmt: skip
        BATCHES.labels(provider.name, "handed_back").inc()
        raise HandedBack(
            batch.batch_id, "outage", campaign_id=batch.campaign_id, detail=outage.reason
        ) from outage

    async def _finish(
        self,
        batch: BatchReady,
        started: datetime,
        claim: Claim | None,
        outcomes: list[RecipientOutcome],
        provider: str | None = None,
    ) -> DeliveryResult | None:
        result = DeliveryResult(
            batch_id=batch.batch_id,
            campaign_id=batch.campaign_id,
            batch_no=batch.batch_no,
            batches_total=batch.batches_total,
            audience_total=batch.audience_total,
            suppressed_total=batch.suppressed_total,
            provider=provider or batch.provider,
            outcomes=_one_per_recipient(batch.recipients, outcomes),
            started_at=started,
            finished_at=self._clock(),
            variant=batch.variant,
        )
        stored = result.model_dump(mode="json")
        if claim is None:
            landed = await self._ledger.settle(
                batch.batch_id, batch.campaign_id, self.owner, stored
            )
        else:
            landed = await self._ledger.finish(claim, stored)
        if not landed:
            # Taken over while we worked: the result of the claim's holder stands.
            log.warning("result not stored: the batch was claimed by another instance")
            BATCHES.labels(result.provider, "fenced").inc()
            return None
        log.info("batch finished", owner=self.owner, claim=claim.number if claim else 0)
        for outcome in result.outcomes:
            EMAILS.labels(result.provider, outcome.status).inc()
        return result


def _outbox_recipients(outbox: Outbox) -> list[BatchRecipient]:
    """Who the provider was asked to mail (ids and addresses only)."""
    people = [(m.recipient_id, m.email) for m in outbox.individual]
    if outbox.templated is not None:
        people += [(r.recipient_id, r.email) for r in outbox.templated.recipients]
    return [BatchRecipient(recipient_id=rid, email=email) for rid, email in people]


def _failed(recipients: list[BatchRecipient], error: str) -> list[RecipientOutcome]:
    return [
        RecipientOutcome(recipient_id=r.recipient_id, email=r.email, status="failed", error=error)
        for r in recipients
    ]


def _one_per_recipient(
    recipients: list[BatchRecipient], outcomes: list[RecipientOutcome]
) -> list[RecipientOutcome]:
    """Exactly one outcome per recipient, in batch order (a recipient a provider did not
    answer for is `unknown`, never silently dropped)."""
    by_id = {o.recipient_id: o for o in outcomes}
    missing = [r for r in recipients if r.recipient_id not in by_id]
    by_id.update({o.recipient_id: o for o in unknown_outcomes(missing)})
    return [by_id[r.recipient_id] for r in recipients]
