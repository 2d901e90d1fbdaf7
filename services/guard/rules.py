"""When the guard pauses a campaign, and how it says why (pure).

Thresholds come from the settings (MAILFLEET_GUARD_*) and, per campaign, from the
campaign's `guard` object (API field, column `campaigns.guard`), whose keys override them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from libs.common.settings import Settings
from services.guard.windows import Counts

# The keys of a campaign's `guard` object, as the API accepts them.
OVERRIDES = (
    "enabled",
    "max_hard_bounce_rate",
    "min_sends",
    "max_complaint_rate",
    "min_delivered",
    "max_deferral_rate",
    "max_provider_error_rate",
)


@dataclass(frozen=True)
class Thresholds:
    """A maximum of 0 turns that rate's check off."""

    max_hard_bounce_rate: float = 0.05
    min_sends: int = 1000
    max_complaint_rate: float = 0.001
    min_delivered: int = 1000
    max_deferral_rate: float = 0.0
    max_provider_error_rate: float = 0.0
    enabled: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            max_hard_bounce_rate=settings.guard_max_hard_bounce_rate,
            min_sends=settings.guard_min_sends,
            max_complaint_rate=settings.guard_max_complaint_rate,
            min_delivered=settings.guard_min_delivered,
            max_deferral_rate=settings.guard_max_deferral_rate,
            max_provider_error_rate=settings.guard_max_provider_error_rate,
        )

    def overridden(self, campaign: Mapping[str, Any] | None) -> Thresholds:
        """These thresholds with a campaign's own values (None or missing keys: ours)."""
        if not campaign:
            return self
        changes = {k: campaign[k] for k in OVERRIDES if campaign.get(k) is not None}
        return replace(self, **changes)


def reason_text(rate: str, value: float, maximum: float) -> str:
    """`hard_bounce_rate 0.10 > 0.05`: two decimals, more when the maximum needs them
    (`complaint_rate 0.002 > 0.001`)."""
    decimals = 2
    while decimals < 6 and round(maximum, decimals) != maximum:
        decimals += 1
    return f"{rate} {value:.{decimals}f} > {maximum:.{decimals}f}"


def breach(counts: Counts, limits: Thresholds) -> str | None:
    """The first rate above its maximum, as the pause's reason; None when all are within.

    Hard bounces, deferrals and provider errors count once the window holds `min_sends`
    sends; complaints once it holds `min_delivered` delivered messages.
    """
    if not limits.enabled:
        return None
    rates = counts.rates()
    checks = (
        ("hard_bounce_rate", limits.max_hard_bounce_rate, counts.sends >= limits.min_sends),
        ("complaint_rate", limits.max_complaint_rate, counts.delivered >= limits.min_delivered),
        ("deferral_rate", limits.max_deferral_rate, counts.sends >= limits.min_sends),
        ("provider_error_rate", limits.max_provider_error_rate, counts.sends >= limits.min_sends),
    )
    for rate, maximum, enough in checks:
        value = rates[rate]
        if maximum > 0 and enough and value is not None and value > maximum:
            return reason_text(rate, value, maximum)
    return None


@dataclass(frozen=True)
class CampaignState:
    """What the guard reads of a campaign before it asks for a pause."""

    status: str
    guard: Mapping[str, Any] | None = None
    resumed_at: float | None = None  # an admin resumed a guard pause then (epoch seconds)


def held_off(state: CampaignState, now: float, hold_off_s: float) -> bool:
    """An admin resumed a guard pause less than `hold_off_s` ago."""
    return state.resumed_at is not None and now < state.resumed_at + hold_off_s


def pause_reason(
    counts: Counts, state: CampaignState, defaults: Thresholds, now: float, hold_off_s: float
) -> str | None:
    """The reason to pause this campaign now, or None: only a sending campaign, not within
    its hold-off, with a rate above its maximum."""
    if state.status != "in_progress" or held_off(state, now, hold_off_s):
        return None
    return breach(counts, defaults.overridden(state.guard))
