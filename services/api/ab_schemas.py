"""Request and response bodies of /api/v1/campaigns/{id}/ab (A/B tests, issue 17 item 1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from libs.stats.ab import MAX_VARIANTS, MIN_VARIANTS, VARIANT_NAMES
from services.api.schemas import HeaderText, Strict, Text

VariantName = Literal["A", "B", "C", "D", "E"]
AbMetric = Literal["open", "click", "manual"]
# Up to 30 days: long enough for any test, short enough that a typo does not hold a
# campaign's remainder for years.
MAX_WAIT_SECONDS = 30 * 24 * 3600


class VariantIn(Strict):
    """What the variant changes of the campaign's content; unset parts are the campaign's."""

    subject: HeaderText | None = Field(None, min_length=1, max_length=998)
    from_name: HeaderText | None = Field(None, max_length=200)
    html: Text | None = Field(None, min_length=1, max_length=2_000_000)
    text: Text | None = Field(None, max_length=2_000_000)

    @model_validator(mode="after")
    def _changes_something(self) -> VariantIn:
        if self.model_dump(exclude_none=True) == {}:
            raise ValueError("a variant must set at least one of subject, from_name, html, text")
        return self


class AbTestIn(Strict):
    """An A/B test for the campaign (replaces any earlier one while it is draft or
    scheduled). Variants are named A, B, C... in the order given."""

    variants: list[VariantIn] = Field(min_length=MIN_VARIANTS, max_length=MAX_VARIANTS)
    test_share: float = Field(
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Share of the sendable audience in the test, split evenly among the"
        " variants; the rest gets the winner.",
        examples=[0.2],
    )
    wait_seconds: int = Field(
        7200, ge=0, le=MAX_WAIT_SECONDS, description="How long after the test starts to decide."
    )
    metric: AbMetric = Field(
        "open",
        description="How the winner is chosen after the wait: highest unique open rate,"
        " unique click rate, or `manual` (an admin picks it with POST .../ab/winner).",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**62,
        description="Seed of the random split (stored; the same seed gives the same split)."
        " Default: a random one.",
    )


class AbTestUpdate(Strict):
    """Override the wait or the metric of a test not yet decided (also while it sends)."""

    wait_seconds: int | None = Field(None, ge=0, le=MAX_WAIT_SECONDS)
    metric: AbMetric | None = None


class WinnerIn(Strict):
    variant: VariantName


class VariantOut(BaseModel):
    variant: str
    subject: str | None
    from_name: str | None
    html: str | None
    text: str | None


class AbTestOut(BaseModel):
    campaign_id: str
    test_share: float
    seed: int
    wait_seconds: int
    metric: AbMetric
    variants: list[VariantOut]
    test_started_at: datetime | None
    decide_after: datetime | None = Field(description="When the scheduler decides (by metric).")
    winner: str | None
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: str | None
    stats: dict[str, Any] = Field(
        description="Per variant of the test group: counts, unique open and click rates, and"
        " for each metric a two-proportion z-test against the leader (p-value, 95 % CI of"
        " the difference, `not significant` when p > 0.05)."
    )


def variant_names(count: int) -> list[str]:
    return list(VARIANT_NAMES[:count])
