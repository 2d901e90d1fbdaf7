"""Sending one batch with the no-duplicate-send guarantee (no Kafka, no HTTP here).

ledger says done     -> replay the stored result, send nothing
ledger says sending  -> wait for a live sender, else `unknown` (or re-send, at-least-once)
not in the ledger    -> render, wait for the rate limit, claim (`sending`, committed),
                        send, store `done`

Before the claim, the campaign's status decides (see `control`): a paused campaign's batch
is handed back untouched, a cancelled one's recipients are reported `cancelled`. A provider
that refuses the account (a revoked key) hands the batch back too (`outage`): what it
accepted before stays recorded, the ledger row is released, and the caller asks for the
campaign to be paused. The rate
limit is waited for before the claim too, so that a pause takes effect on batches queued
behind the limit, and a dispatcher killed while they wait leaves no `sending` row behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, Protocol
from uuid import UUID

from libs.common.events import BatchReady, BatchRecipient, DeliveryResult, RecipientOutcome
from libs.common.logging import bound_contextvars, get_logger
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox, Sender
from libs.mail.providers.base import Provider, ProviderOutage
from libs.mail.render_pool import RenderPool
from libs.mail.rendering import Content
from services.dispatcher.control import Verdict, cancelled_outcomes, verdict_for
from services.dispatcher.ledger import (
    Decision,
    DeliveryMode,
    LedgerEntry,
    decide,
    unknown_outcomes,
    unsettled,
)
from services.dispatcher.metrics import BATCHES, EMAILS, FAILOVERS, RATE_LIMIT_WAIT

log = get_logger(__name__)

# Progress of a multi-request batch is written to the ledger at most this often: a crash
# loses at most this much progress, which then reads as `unknown` (never as re-sendable).
_PROGRESS_FLUSH_S = 0.5
_WAIT_POLL_S = 0.2
# While a batch waits for its turn under the rate limit, the campaign's status is looked at
# this often (a pause must take effect within 2 s).
_TURN_POLL_S = 0.2


class CampaignGate(Protocol):
    """The campaign statuses (see `campaign_status.CampaignStatuses`)."""

    def latest(self, campaign_id: UUID) -> str | None: ...
    async def current(self, campaign_id: UUID) -> str | None: ...
    async def confirmed(self, campaign_id: UUID) -> str | None: ...


class _AlwaysSend:
    def latest(self, campaign_id: UUID) -> str | None:
        return None

    async def current(self, campaign_id: UUID) -> str | None:
        return None

    async def confirmed(self, campaign_id: UUID) -> str | None:
        return None


class HandedBack(Exception):  # noqa: N818 - an outcome, not an error
    """The batch was not sent (or only in part, its ledger row released).

    `paused`: its campaign is paused; the scheduler re-emits it on resume, so its offset may
    be committed. `outage`: the provider refused the account (`detail` says how); the
    campaign is to be paused, and the offset may be committed as for `paused`. `stopping`:
    this instance is shutting down; its offset must not be committed, so that the
    partition's next owner reads it again.
    """

    def __init__(
        self,
        batch_id: str,
        reason: Literal["paused", "outage", "stopping"],
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
    async def get(self, batch_id: str) -> LedgerEntry | None: ...
    async def claim(self, batch_id: str, campaign_id: UUID, owner: str) -> bool: ...
    async def take_over(self, batch_id: str, previous_owner: str, owner: str) -> bool: ...
    async def add_progress(self, batch_id: str, outcomes: list[RecipientOutcome]) -> None: ...
    async def release(self, batch_id: str, owner: str) -> None: ...
    async def finish(self, batch_id: str, campaign_id: UUID, owner: str, result: Any) -> None: ...


class _ProgressRecorder:
    def __init__(self, ledger: Ledger, batch_id: str, enabled: bool) -> None:
        self._ledger = ledger
        self._batch_id = batch_id
        self._enabled = enabled
        self._pending: list[RecipientOutcome] = []
        self._written: set[int] = set()
        self._last_flush = time.monotonic()

    async def __call__(self, outcomes: list[RecipientOutcome]) -> None:
        if not self._enabled:
            return
        self._pending.extend(outcomes)
        if time.monotonic() - self._last_flush >= _PROGRESS_FLUSH_S:
            await self.write(self._pending)

    async def write(self, outcomes: list[RecipientOutcome]) -> None:
        """Record `outcomes` now, less those already written."""
        unwritten = [o for o in outcomes if o.recipient_id not in self._written]
        self._pending = []
        self._last_flush = time.monotonic()
        if unwritten:
            self._written.update(o.recipient_id for o in unwritten)
            await self._ledger.add_progress(self._batch_id, unwritten)


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
        takeover_wait_s: float,
        gate: CampaignGate | None = None,
        fallback: str | None = None,
        stopping: Callable[[], bool] = lambda: False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        renderer: RenderPool | None = None,
    ) -> None:
        self._renderer = renderer or RenderPool()
        self._gate: CampaignGate = gate or _AlwaysSend()
        self._fallback = fallback or None
        self._stopping = stopping
        self._content = content
        self._ledger = ledger
        self._providers = providers
        self._headers = headers
        self.owner = owner
        self._mode = mode
        self._takeover_wait_s = takeover_wait_s
        self._clock = clock
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
            decision = decide(
                entry,
                me=self.owner,
                mode=self._mode,
                now=self._clock(),
                takeover_wait_s=self._takeover_wait_s,
            )
            if decision is Decision.WAIT:
                await asyncio.sleep(_WAIT_POLL_S)
                continue
            if decision is Decision.REPLAY:
                assert entry is not None and entry.result is not None
                BATCHES.labels(batch.provider, "replayed").inc()
                result = DeliveryResult.model_validate(entry.result)
                return result.model_copy(update={"replayed": True})
            if decision is Decision.SEND:
                return await self._send(batch, started, recorded=[], claim=None)
            assert entry is not None
            recorded = entry.recorded_outcomes()
            if decision is Decision.UNKNOWN:
                return await self._settle_unknown(batch, started, recorded)
            return await self._send(batch, started, recorded, claim=entry.owner)

    async def _verdict(self, campaign_id: UUID, status: str | None) -> Verdict:
        """A verdict other than SEND is confirmed with the database: a batch re-emitted on
        resume must not be handed back on the strength of a stale cached `paused`."""
        verdict = verdict_for(status)
        if verdict is Verdict.SEND:
            return verdict
        return verdict_for(await self._gate.confirmed(campaign_id))

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
            if self._stopping():
                raise HandedBack(batch.batch_id, "stopping")
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
        self, batch: BatchReady, started: datetime, recorded: list[RecipientOutcome]
    ) -> DeliveryResult:
        missing = unsettled(batch.recipients, recorded)
        log.warning("batch outcome unknown after an interrupted send", unknown=len(missing))
        BATCHES.labels(batch.provider, "unknown").inc()
        return await self._finish(batch, started, recorded + unknown_outcomes(missing))

    async def _send(
        self,
        batch: BatchReady,
        started: datetime,
        recorded: list[RecipientOutcome],
        claim: str | None,
    ) -> DeliveryResult:
        """Send what has no recorded outcome. `claim` is the owner of a stale `sending` row
        to take over (at-least-once re-send), None to claim a fresh batch."""
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
            return await self._finish(batch, started, recorded + _failed(pending, problem or ""))
        # The campaign's status is looked at before rendering (a cancelled campaign renders
        # nothing); rendering runs off the event loop, each message within its limits.
        status = await self._gate.current(batch.campaign_id)
        verdict = await self._verdict(batch.campaign_id, status)
        outbox = Outbox(sender=Sender(content.from_email, content.from_name))
        if verdict is Verdict.SEND:
            outbox = await self._renderer.outbox(
                content, batch.campaign_id, batch.batch_id, pending, self._headers
            )
            verdict = await self._wait_for_turn(batch, provider, outbox.recipient_count)
        if verdict is Verdict.HAND_BACK:
            log.info("batch handed back: campaign paused")
            BATCHES.labels(provider.name, "handed_back").inc()
            raise HandedBack(batch.batch_id, "paused")
        if verdict is Verdict.CANCEL:
            log.info("batch not sent: campaign cancelled")
            BATCHES.labels(provider.name, "cancelled").inc()
            outcomes = recorded + cancelled_outcomes(pending) + outbox.settled
            return await self._finish(batch, started, outcomes)
        claimed = (
            await self._ledger.claim(batch.batch_id, batch.campaign_id, self.owner)
            if claim is None
            else await self._ledger.take_over(batch.batch_id, claim, self.owner)
        )
        if not claimed:
            # Someone else claimed it between our read and our claim: decide again.
            return await self._dispatch(batch)
        requests = len(outbox.individual) + (1 if outbox.templated else 0)
        progress = _ProgressRecorder(self._ledger, batch.batch_id, enabled=requests > 1)
        try:
            provider_outcomes = await provider.send(outbox, progress)
        except ProviderOutage as outage:
            await self._release(batch, provider, progress, outage)
        BATCHES.labels(provider.name, "sent").inc()
        outcomes = recorded + outbox.settled + provider_outcomes
        return await self._finish(batch, started, outcomes, provider.name)

    async def _release(
        self, batch: BatchReady, provider: Provider, progress: _ProgressRecorder,
        outage: ProviderOutage,
    ) -> NoReturn:  # fmt: skip
        """The provider refused the account: keep what it settled, release the rest."""
        await progress.write(outage.settled)
        await self._ledger.release(batch.batch_id, self.owner)
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
        outcomes: list[RecipientOutcome],
        provider: str | None = None,
    ) -> DeliveryResult:
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
        )
        await self._ledger.finish(
            batch.batch_id, batch.campaign_id, self.owner, result.model_dump(mode="json")
        )
        for outcome in result.outcomes:
            EMAILS.labels(result.provider, outcome.status).inc()
        return result


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
