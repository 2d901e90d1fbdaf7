"""Retry timing of webhook deliveries (pure)."""

from __future__ import annotations

import random

from libs.webhooks.backoff import Backoff


def test_delay_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(base_s=5, cap_s=60, jitter=0)
    assert [backoff.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff.delay(10_000) == 60  # no overflow on a long streak


def test_jitter_only_shortens_and_stays_within_its_share() -> None:
    backoff = Backoff(base_s=10, cap_s=1000, jitter=0.2)
    rand = random.Random(7)
    delays = [backoff.delay(3, rand) for _ in range(200)]
    assert all(32 <= d <= 40 for d in delays)
    assert len(set(delays)) > 100


def test_retries_stop_after_the_window_with_one_try_at_its_end() -> None:
    backoff = Backoff(base_s=3600, cap_s=3600, give_up_after_s=24 * 3600, jitter=0)
    created = 1_000_000.0
    assert backoff.next_attempt(created, created + 10, 1) == created + 10 + 3600
    # Close to the deadline: the next try is at the deadline, not past it.
    late = created + 24 * 3600 - 60
    assert backoff.next_attempt(created, late, 20) == created + 24 * 3600
    assert backoff.next_attempt(created, created + 24 * 3600, 21) is None


def test_a_day_of_default_backoff_gives_a_bounded_number_of_tries() -> None:
    backoff = Backoff(jitter=0)
    created = now = 0.0
    tries = 1
    while (at := backoff.next_attempt(created, now, tries)) is not None:
        now, tries = at, tries + 1
    assert now == 24 * 3600
    assert 25 <= tries <= 40  # 5 s doubling to 1 h, then hourly, for a day
