"""The pure parts of A/B tests (issue 17 item 1): the split, the two-proportion z-test
against values worked by hand, and the choice of a winner."""

from __future__ import annotations

import math
import random
from collections import Counter
from statistics import NormalDist

import pytest

from libs.stats.ab import (
    VariantCounts,
    choose_winner,
    compare_all,
    normal_sf,
    size_tested,
    split,
    two_proportion_test,
)


def test_size_tested_rounds_half_up_and_never_exceeds_the_audience() -> None:
    assert size_tested(10_000, 0.3) == 3000
    assert size_tested(10, 0.25) == 3  # 2.5 rounds up
    assert size_tested(7, 1.0) == 7
    assert size_tested(0, 0.5) == 0


@pytest.mark.parametrize(("n", "share", "variants"), [(10_000, 0.3, 3), (101, 0.2, 5), (7, 1, 2)])
def test_split_is_even_and_leaves_the_rest_to_the_remainder(
    n: int, share: float, variants: int
) -> None:
    ranks = list(range(1, n + 1))
    random.Random(7).shuffle(ranks)
    groups = Counter(split(ranks, share, variants))
    test = size_tested(n, share)
    sizes = [groups[g] for g in range(1, variants + 1)]
    assert sum(sizes) == test
    assert max(sizes) - min(sizes) <= 1
    assert groups[variants + 1] == n - test


def test_normal_tail_matches_the_standard_library() -> None:
    for z in (0.0, 0.5, 1.959963984540054, 2.9424, 4.0):
        assert normal_sf(z) == pytest.approx(1 - NormalDist().cdf(z), abs=1e-12)
    assert normal_sf(1.959963984540054) == pytest.approx(0.025, abs=1e-12)


def test_z_test_against_values_worked_by_hand() -> None:
    # 20 % of 1000 against 15 % of 1000. Pooled p = 0.175,
    # SE = sqrt(0.175 * 0.825 * 2 / 1000) = 0.0169926; z = 0.05 / SE = 2.94245;
    # p = 2 * (1 - Phi(2.94245)) = 0.003256. CI: unpooled SE =
    # sqrt(0.2 * 0.8 / 1000 + 0.15 * 0.85 / 1000) = 0.0169558; 0.05 -+ 1.95996 * SE.
    c = two_proportion_test(200, 1000, 150, 1000)
    assert c.difference == pytest.approx(0.05)
    assert c.z == pytest.approx(2.94245, abs=1e-5)
    assert c.p_value == pytest.approx(0.003256, abs=1e-6)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.016767, 0.083233), abs=1e-6)
    assert c.significant and c.verdict == "significant"


def test_a_small_difference_is_not_significant() -> None:
    # 11 % against 10 % of 1000: pooled p = 0.105, SE = 0.0137095, z = 0.72942, p = 0.46574.
    c = two_proportion_test(110, 1000, 100, 1000)
    assert c.z == pytest.approx(0.72942, abs=1e-5)
    assert c.p_value == pytest.approx(0.46574, abs=1e-5)
    assert not c.significant and c.verdict == "not significant"
    assert c.ci_low < 0 < c.ci_high  # the interval covers no difference


def test_a_tie_and_degenerate_cases_are_not_significant() -> None:
    tie = two_proportion_test(100, 1000, 100, 1000)
    assert (tie.difference, tie.p_value, tie.significant) == (0.0, 1.0, False)
    assert tie.ci_low == pytest.approx(-tie.ci_high)
    assert two_proportion_test(0, 1000, 0, 1000).p_value == 1.0  # no variance
    assert two_proportion_test(5, 0, 1, 10).p_value == 1.0  # nothing sent on one side
    assert two_proportion_test(1000, 1000, 1000, 1000).verdict == "not significant"


def test_p_value_boundary_is_at_alpha() -> None:
    # p exactly around 0.05: z = 1.95996 gives p = 0.05; slightly below is not significant.
    def trial(successes_b: int) -> float:
        return two_proportion_test(successes_b, 2000, 200, 2000).p_value

    values = [(s, trial(s)) for s in range(200, 300)]
    first_significant = next(s for s, p in values if p <= 0.05)
    assert trial(first_significant - 1) > 0.05
    assert not two_proportion_test(first_significant - 1, 2000, 200, 2000).significant
    assert two_proportion_test(first_significant, 2000, 200, 2000).significant
    assert math.isclose(trial(200), 1.0)


def test_winner_by_open_or_click_rate() -> None:
    counts = [
        VariantCounts("A", 1000, 100, 40),
        VariantCounts("B", 1000, 300, 20),
        VariantCounts("C", 1000, 110, 30),
    ]
    by_opens = choose_winner(counts, "open")
    assert by_opens.winner == "B" and "significant against every other" in by_opens.reason
    assert choose_winner(counts, "click").winner == "A"


def test_a_tie_goes_to_the_first_variant_and_says_not_significant() -> None:
    counts = [VariantCounts("B", 1000, 100, 0), VariantCounts("A", 1000, 100, 0)]
    decision = choose_winner(counts, "open")
    assert decision.winner == "A"
    assert decision.reason.endswith("not significant")
    leader, tests = compare_all({c.variant: c for c in counts}, "open")
    assert leader == "A" and tests["B"].verdict == "not significant"


def test_choose_winner_needs_a_variant() -> None:
    with pytest.raises(ValueError, match="no variant"):
        choose_winner([], "open")
