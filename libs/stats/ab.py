"""A/B tests, pure: how a test group is split, which variant wins, and whether a difference
between two variants' rates is significant (a two-proportion z-test). No I/O, no scipy:
the normal distribution comes from `math.erfc`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

VARIANT_NAMES: tuple[str, ...] = ("A", "B", "C", "D", "E")
MIN_VARIANTS = 2
MAX_VARIANTS = 5
ALPHA = 0.05
# The two-sided 97.5 % quantile of the standard normal: a 95 % confidence interval.
Z_95 = 1.959963984540054

Metric = Literal["open", "click", "manual"]


def size_tested(sendable: int, share: float) -> int:
    """How many of `sendable` recipients are in the test group: `share` of them, rounded
    half up (the planner's SQL rounds the same way)."""
    return min(sendable, math.floor(share * sendable + 0.5))


def split(ranks: Sequence[int], share: float, variants: int) -> list[int]:
    """The group of each recipient, given its rank (1-based) in the seeded hash order of
    the sendable audience: 1..`variants` for the test group (dealt round-robin, so the
    groups differ by at most one), `variants + 1` for the remainder. The planner does the
    same in SQL; this is its reference."""
    test = size_tested(len(ranks), share)
    return [(r - 1) % variants + 1 if r <= test else variants + 1 for r in ranks]


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class Comparison:
    """One variant against another (the leader): the difference of their rates, its 95 %
    confidence interval (unpooled standard error), and the two-sided p-value of the
    two-proportion z-test (pooled standard error)."""

    difference: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float
    significant: bool

    @property
    def verdict(self) -> str:
        return "significant" if self.significant else "not significant"


def two_proportion_test(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int
) -> Comparison:
    """Is rate A (successes_a / trials_a) different from rate B? `difference` = A - B.

    With no trials on a side, or no variance at all (both rates 0 or both 1), there is no
    evidence of a difference: p = 1, not significant."""
    if trials_a <= 0 or trials_b <= 0:
        return Comparison(0.0, 0.0, 0.0, 0.0, 1.0, False)
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    diff = p_a - p_b
    unpooled = math.sqrt(p_a * (1 - p_a) / trials_a + p_b * (1 - p_b) / trials_b)
    low, high = diff - Z_95 * unpooled, diff + Z_95 * unpooled
    pooled_p = (successes_a + successes_b) / (trials_a + trials_b)
    pooled = math.sqrt(pooled_p * (1 - pooled_p) * (1 / trials_a + 1 / trials_b))
    if pooled == 0:
        return Comparison(diff, low, high, 0.0, 1.0, False)
    z = diff / pooled
    p_value = min(1.0, 2 * normal_sf(abs(z)))
    return Comparison(diff, low, high, z, p_value, p_value <= ALPHA)


@dataclass(frozen=True)
class VariantCounts:
    variant: str
    sent: int
    unique_opens: int
    unique_clicks: int
    delivered: int = 0

    @property
    def trials(self) -> int:
        """The rates' denominator, as the campaign's stats have it: delivered once the
        provider reports deliveries, else sent."""
        return self.delivered or self.sent

    def successes(self, metric: Metric) -> int:
        return self.unique_clicks if metric == "click" else self.unique_opens

    def rate(self, metric: Metric) -> float:
        return self.successes(metric) / self.trials if self.trials else 0.0


@dataclass(frozen=True)
class Decision:
    winner: str
    reason: str


def choose_winner(counts: Sequence[VariantCounts], metric: Metric) -> Decision:
    """The variant with the highest unique rate of `metric` over its sent messages. Ties
    go to the first variant (by name); the reason says when the lead is not significant,
    so the operator knows the pick was as good as any."""
    if not counts:
        raise ValueError("no variant to choose from")
    ordered = sorted(counts, key=lambda c: c.variant)
    leader = max(ordered, key=lambda c: c.rate(metric))  # max keeps the first of equals
    others = [c for c in ordered if c is not leader]
    tests = [
        two_proportion_test(
            leader.successes(metric), leader.trials, other.successes(metric), other.trials
        )
        for other in others
    ]
    if tests and all(t.significant for t in tests):
        verdict = "significant against every other variant"
    elif any(t.significant for t in tests):
        verdict = "not significant against every other variant"
    else:
        verdict = "not significant"
    return Decision(
        leader.variant,
        f"highest unique {metric} rate {leader.rate(metric):.4f} "
        f"({leader.successes(metric)}/{leader.trials}); {verdict}",
    )


def compare_all(
    counts: Mapping[str, VariantCounts], metric: Metric
) -> tuple[str | None, dict[str, Comparison]]:
    """The leader (highest rate, first by name on a tie) and every other variant's test
    against it (`difference` = variant - leader)."""
    if not counts:
        return None, {}
    ordered = [counts[k] for k in sorted(counts)]
    leader = max(ordered, key=lambda c: c.rate(metric))
    return leader.variant, {
        c.variant: two_proportion_test(
            c.successes(metric), c.trials, leader.successes(metric), leader.trials
        )
        for c in ordered
        if c is not leader
    }


def _rounded(value: float) -> float:
    return round(value, 6)


def variant_report(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the API shows of a test's variants, from their `campaign_variant_stats` rows:
    counts, unique open and click rates, and for each metric the leader and every other
    variant's z-test against it (the difference is variant - leader, with its 95 % CI;
    "not significant" when p > 0.05)."""
    counts = {
        str(r["variant"]): VariantCounts(
            str(r["variant"]),
            int(r.get("sent") or 0),
            int(r.get("unique_opens") or 0),
            int(r.get("unique_clicks") or 0),
            int(r.get("delivered") or 0),
        )
        for r in rows
    }
    leaders: dict[str, str | None] = {}
    tests: dict[str, dict[str, Comparison]] = {}
    for metric in ("open", "click"):
        leaders[metric], tests[metric] = compare_all(counts, metric)
    variants = []
    for row in sorted(rows, key=lambda r: str(r["variant"])):
        name = str(row["variant"])
        c = counts[name]
        against: dict[str, Any] = {}
        for metric in ("open", "click"):
            t = tests[metric].get(name)
            against[metric] = (
                None
                if t is None
                else {
                    "leader": leaders[metric],
                    "difference": _rounded(t.difference),
                    "ci_low": _rounded(t.ci_low),
                    "ci_high": _rounded(t.ci_high),
                    "z": _rounded(t.z),
                    "p_value": _rounded(t.p_value),
                    "significant": t.significant,
                    "verdict": t.verdict,
                }
            )
        variants.append(
            {
                "variant": name,
                **{
                    k: int(row.get(k) or 0)
                    for k in (
                        "recipients",
                        "sent",
                        "failed",
                        "delivered",
                        "bounced",
                        "unique_opens",
                        "opens",
                        "unique_clicks",
                        "clicks",
                        "unsubscribes",
                    )
                },  # fmt: skip
                "unique_open_rate": _rounded(c.rate("open")) if c.trials else None,
                "unique_click_rate": _rounded(c.rate("click")) if c.trials else None,
                "against_leader": against,
            }
        )
    return {"leaders": leaders, "variants": variants}
