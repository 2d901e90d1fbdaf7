"""The send ledger's rules (pure): what to do with a batch given what the ledger says.

A batch is claimed (`sending`, committed) before the provider sees it and closed (`done`,
with its result) after. So on redelivery: `done` means replay the stored result and send
nothing; a `sending` row means a dispatcher is sending it, or stopped mid-send: the
outcomes it recorded as progress stand, the rest are `unknown` (or sent again in
at-least-once mode).

A claim is a lease (issue 11 item 2). Its owner renews it while it sends; the row may be
taken over only once the lease has expired by the database's clock, and each takeover
numbers a new claim. Every write of a sender names the claim it holds (`Claim`), so a slow
former owner's progress or result, written after a takeover, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from libs.common.events import BatchRecipient, RecipientOutcome

DeliveryMode = Literal["at_most_once", "at_least_once"]


class Decision(Enum):
    SEND = "send"  # not in the ledger: claim it, then send
    REPLAY = "replay"  # done: publish the stored result again
    WAIT = "wait"  # another instance holds a live lease on it: wait for it to finish
    UNKNOWN = "unknown"  # its sender's lease expired mid-send: what it did not record is unknown
    RESEND = "resend"  # as UNKNOWN, but at-least-once: send what is not recorded again


@dataclass(frozen=True)
class Claim:
    """The right to write a batch's progress and result: its owner and the claim's number."""

    batch_id: str
    owner: str
    number: int


@dataclass(frozen=True)
class LedgerEntry:
    batch_id: str
    state: Literal["sending", "done"]
    owner: str
    result: dict[str, Any] | None
    started_at: datetime
    claim_no: int = 1
    # Judged by the database's clock when the row was read.
    lease_expired: bool = False

    @property
    def claim(self) -> Claim:
        return Claim(self.batch_id, self.owner, self.claim_no)

    @property
    def released(self) -> bool:
        """Its sender stopped on a provider outage: what it did not record was proven
        unsent (the provider refused the account), so it may be sent in any mode."""
        return bool((self.result or {}).get("released"))

    def recorded_outcomes(self) -> list[RecipientOutcome]:
        """Outcomes a `sending` entry recorded as progress before its sender stopped."""
        partial = (self.result or {}).get("partial") or []
        return [RecipientOutcome.model_validate(item) for item in partial]


def decide(entry: LedgerEntry | None, *, me: str, mode: DeliveryMode) -> Decision:
    if entry is None:
        return Decision.SEND
    if entry.state == "done":
        return Decision.REPLAY
    if entry.released:
        # Its sender stopped on a provider outage and released it (lease ended), or parked it
        # while it waits for a domain throttle: what it did not record was never sent, so it
        # is sent again in either mode, once no live owner holds it (a parked row's owner
        # renews its lease while it waits).
        if entry.owner != me and not entry.lease_expired:
            return Decision.WAIT
        return Decision.RESEND
    if entry.owner != me and not entry.lease_expired:
        # Its owner is alive (it renews the lease): after a rebalance the previous owner
        # may still be sending this very batch. A row of our own that no task of ours holds
        # (the dispatcher serialises copies of a batch) is a send we abandoned.
        return Decision.WAIT
    return Decision.RESEND if mode == "at_least_once" else Decision.UNKNOWN


def unsettled(
    recipients: list[BatchRecipient], recorded: list[RecipientOutcome]
) -> list[BatchRecipient]:
    """Recipients of the batch with no recorded outcome."""
    done = {o.recipient_id for o in recorded}
    return [r for r in recipients if r.recipient_id not in done]


_UNKNOWN_AFTER_STOP = (
    "dispatcher stopped while sending; the provider may or may not have accepted it"
)


def unknown_outcomes(
    recipients: list[BatchRecipient], reason: str = _UNKNOWN_AFTER_STOP
) -> list[RecipientOutcome]:
    return [
        RecipientOutcome(recipient_id=r.recipient_id, email=r.email, status="unknown", error=reason)
        for r in recipients
    ]


def suppressed_outcomes(
    recipients: list[BatchRecipient], reason: str = "suppressed after the campaign was planned"
) -> list[RecipientOutcome]:
    """Recipients whose address was suppressed since planning: never mailed (item 5)."""
    return [
        RecipientOutcome(
            recipient_id=r.recipient_id, email=r.email, status="suppressed", error=reason
        )
        for r in recipients
    ]
