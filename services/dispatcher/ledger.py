"""The send ledger's rules (pure): what to do with a batch given what the ledger says.

A batch is claimed (`sending`, committed) before the provider sees it and closed (`done`,
with its result) after. So on redelivery: `done` means replay the stored result and send
nothing; a `sending` row means a dispatcher stopped mid-send: the outcomes it recorded as
progress stand, the rest are `unknown` (or sent again in at-least-once mode).
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
    WAIT = "wait"  # another instance is (maybe still) sending it: wait for it to finish
    UNKNOWN = "unknown"  # its sender died mid-send: what it did not record is unknown
    RESEND = "resend"  # as UNKNOWN, but at-least-once: send what is not recorded again


@dataclass(frozen=True)
class LedgerEntry:
    batch_id: str
    state: Literal["sending", "done"]
    owner: str
    result: dict[str, Any] | None
    started_at: datetime

    @property
    def released(self) -> bool:
        """Its sender stopped on a provider outage: what it did not record was proven
        unsent (the provider refused the account), so it may be sent in any mode."""
        return bool((self.result or {}).get("released"))

    def recorded_outcomes(self) -> list[RecipientOutcome]:
        """Outcomes a `sending` entry recorded as progress before its sender stopped."""
        partial = (self.result or {}).get("partial") or []
        return [RecipientOutcome.model_validate(item) for item in partial]


def decide(
    entry: LedgerEntry | None,
    *,
    me: str,
    mode: DeliveryMode,
    now: datetime,
    takeover_wait_s: float,
) -> Decision:
    if entry is None:
        return Decision.SEND
    if entry.state == "done":
        return Decision.REPLAY
    if entry.released:
        return Decision.RESEND
    age = (now - entry.started_at).total_seconds()
    if entry.owner != me and age < takeover_wait_s:
        # After a rebalance the previous owner may still be finishing this very batch.
        return Decision.WAIT
    return Decision.RESEND if mode == "at_least_once" else Decision.UNKNOWN


def unsettled(
    recipients: list[BatchRecipient], recorded: list[RecipientOutcome]
) -> list[BatchRecipient]:
    """Recipients of the batch with no recorded outcome."""
    done = {o.recipient_id for o in recorded}
    return [r for r in recipients if r.recipient_id not in done]


def unknown_outcomes(recipients: list[BatchRecipient]) -> list[RecipientOutcome]:
    return [
        RecipientOutcome(
            recipient_id=r.recipient_id,
            email=r.email,
            status="unknown",
            error="dispatcher stopped while sending; the provider may or may not have accepted it",
        )
        for r in recipients
    ]
