"""What a campaign's status means for one of its batches (pure: no I/O).

The API's pause / resume / cancel change `campaigns.status` (see libs/common/campaign_control);
every dispatcher reads that status (cached, refreshed often and on every `campaign.control`
event) and applies it to each batch before it claims the batch in the send ledger.
"""

from __future__ import annotations

from enum import Enum

from libs.common.events import BatchRecipient, RecipientOutcome


class Verdict(Enum):
    SEND = "send"
    # Not sent, ledger untouched, offset committed: the scheduler re-emits the campaign's
    # unaccounted batches when it is resumed.
    HAND_BACK = "hand_back"
    # Not sent: every recipient without an outcome is reported `cancelled`.
    CANCEL = "cancel"


def verdict_for(status: str | None) -> Verdict:
    """`None` is a campaign without a row (internal producers, tests): it is sent. A batch of
    a finished campaign (a late re-emission) is sent too: the ledger replays what was sent."""
    if status == "paused":
        return Verdict.HAND_BACK
    if status == "cancelled":
        return Verdict.CANCEL
    return Verdict.SEND


CANCELLED_ERROR = "campaign cancelled before this recipient was sent"


def cancelled_outcomes(recipients: list[BatchRecipient]) -> list[RecipientOutcome]:
    return [
        RecipientOutcome(
            recipient_id=r.recipient_id, email=r.email, status="cancelled", error=CANCELLED_ERROR
        )
        for r in recipients
    ]
