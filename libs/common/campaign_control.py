"""Which campaign statuses an admin's pause / resume / cancel applies to (pure).

The API changes `campaigns.status` with a compare-and-set on the statuses listed here, then
publishes `campaign.control`; dispatchers and the scheduler act on the new status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ControlAction = Literal["pause", "resume", "cancel"]

CONTROL_ACTIONS: tuple[ControlAction, ...] = ("pause", "resume", "cancel")

# action -> (statuses it applies to, the status it leads to)
TRANSITIONS: dict[ControlAction, tuple[frozenset[str], str]] = {
    # Only a campaign that is sending can be paused; a scheduled one is unscheduled instead.
    "pause": (frozenset({"in_progress"}), "paused"),
    "resume": (frozenset({"paused"}), "in_progress"),
    # Anything not yet finished can be cancelled; a draft is simply deleted or edited.
    "cancel": (frozenset({"scheduled", "in_progress", "paused"}), "cancelled"),
}


class ControlRefused(ValueError):
    """The action does not apply to a campaign in this status (an API answers 409)."""

    def __init__(self, action: str, status: str) -> None:
        allowed = ", ".join(sorted(allowed_from(action))) if action in TRANSITIONS else "-"
        super().__init__(f"cannot {action} a campaign that is {status} (allowed from: {allowed})")
        self.action = action
        self.status = status


@dataclass(frozen=True)
class Transition:
    action: ControlAction
    previous: str
    status: str

    @property
    def changed(self) -> bool:
        """False for a repeated request (pause of a paused campaign): nothing to publish."""
        return self.previous != self.status


def allowed_from(action: str) -> frozenset[str]:
    """Statuses `action` applies to (for the API's compare-and-set `status = ANY(...)`)."""
    if action not in TRANSITIONS:
        raise ValueError(f"unknown control action {action!r}; one of {', '.join(CONTROL_ACTIONS)}")
    return TRANSITIONS[action][0]


def target_status(action: str) -> str:
    allowed_from(action)  # validates the action
    return TRANSITIONS[action][1]  # type: ignore[index]


def transition(action: ControlAction, current: str) -> Transition:
    """The status `action` moves a campaign in `current` to. Repeating an action that already
    took effect is accepted as a no-op (idempotent POSTs); anything else raises
    `ControlRefused`."""
    allowed, target = TRANSITIONS[action]
    if current == target:
        return Transition(action, current, current)
    if current not in allowed:
        raise ControlRefused(action, current)
    return Transition(action, current, target)
