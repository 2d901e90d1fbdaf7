"""The guard's windows and thresholds, with time given by hand (no broker, no database)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from libs.common.settings import Settings
from libs.mail.throttles import domain_group
from services.guard.rules import CampaignState, Thresholds, breach, pause_reason, reason_text
from services.guard.windows import (
    Counts,
    HoppingWindows,
    event_counts,
    outcome_counts,
)

A = uuid.UUID(int=1)
B = uuid.UUID(int=2)


def sends(n: int) -> Counts:
    return Counts(sends=n, accepted=n)


def test_domain_groups() -> None:
    assert domain_group("x@gmail.com") == "gmail"
    assert domain_group("x@GoogleMail.com") == "gmail"
    assert domain_group("x@yahoo.co.uk") == "yahoo"
    assert domain_group("x@aol.com") == "yahoo"
    assert domain_group("x@hotmail.com.br") == "microsoft"
    assert domain_group("x@outlook.com") == "microsoft"
    assert domain_group("x@live.example.org") == "other"  # a brand label in another domain
    assert domain_group("x@example.com") == "other"


def test_counts_of_outcomes_and_events() -> None:
    assert outcome_counts("sent", None) == Counts(sends=1, accepted=1)
    hard = outcome_counts("failed", "hard bounce: 550 5.1.1 no such user")
    assert hard.hard_bounces == 1 and hard.accepted == 0
    assert outcome_counts("failed", "554 5.7.1 policy").provider_errors == 1
    assert outcome_counts("unknown", "ReadTimeout").provider_errors == 1
    assert outcome_counts("suppressed", None).is_empty()
    assert event_counts("bounce", {"type": "bounce"}).hard_bounces == 1
    assert event_counts("bounce", {}).hard_bounces == 1  # SendGrid's default type
    assert event_counts("bounce", {"type": "blocked"}).other_bounces == 1
    assert event_counts("bounce", {"type": "soft"}).hard_bounces == 0
    assert event_counts("spamreport", {}).complaints == 1
    assert event_counts("deferred", {}).deferrals == 1
    assert event_counts("open", {}).is_empty()


def test_delivered_subtracts_event_bounces_only() -> None:
    c = Counts()
    c.add(sends(100))
    c.add(outcome_counts("failed", "hard bounce: 550 5.1.1"))  # never accepted
    c.add(event_counts("bounce", {"type": "bounce"}))  # accepted, then bounced
    c.add(event_counts("bounce", {"type": "blocked"}))
    assert c.sends == 101 and c.hard_bounces == 2
    assert c.delivered == 98


def test_window_hops_and_forgets() -> None:
    w = HoppingWindows(size_s=300, hop_s=30)
    assert w.add("b1", at=0, now=0, counts={(A, "gmail"): sends(10)})
    assert w.add("b2", at=100, now=100, counts={(A, "other"): sends(5)})
    assert w.campaign(A, now=100).sends == 15
    assert w.by_group(now=100)["gmail"].sends == 10
    # 10 buckets of 30 s: the bucket of t=0 is in the window until t=299, gone at 300.
    assert w.campaign(A, now=299).sends == 15
    assert w.campaign(A, now=300).sends == 5
    assert w.campaign(A, now=420).sends == 0
    assert w.campaigns(now=100) == {A}
    w.expire(now=420)
    assert w.records == 0


def test_a_record_counts_once_and_old_records_not_at_all() -> None:
    w = HoppingWindows(size_s=300, hop_s=30)
    assert w.add("b1", at=10, now=10, counts={(A, "other"): sends(10)})
    assert not w.add("b1", at=12, now=12, counts={(A, "other"): sends(10)})
    assert not w.add("old", at=-400, now=12, counts={(A, "other"): sends(10)})
    assert w.campaign(A, now=12).sends == 10
    # A record from the future (a clock ahead) counts now.
    assert w.add("future", at=1000, now=20, counts={(B, "other"): sends(1)})
    assert w.campaign(B, now=20).sends == 1


def test_window_rejects_a_hop_longer_than_the_window() -> None:
    with pytest.raises(ValueError):
        HoppingWindows(size_s=10, hop_s=30)
    # The settings refuse it first, naming both variables.
    with pytest.raises(ValidationError, match="MAILFLEET_GUARD_HOP_SECONDS"):
        Settings(guard_window_seconds=10, guard_hop_seconds=30)
    assert Settings(guard_window_seconds=60, guard_hop_seconds=30).guard_hop_seconds == 30


def test_hard_bounces_need_the_minimum_volume() -> None:
    limits = Thresholds()
    c = sends(900)
    c.add(Counts(hard_bounces=100))
    assert breach(c, limits) is None  # 100 / 900 but fewer than 1,000 sends
    c.add(sends(100))
    assert breach(c, limits) == "hard_bounce_rate 0.10 > 0.05"


def test_exactly_at_the_threshold_is_not_above_it() -> None:
    c = sends(1000)
    c.add(Counts(hard_bounces=50))
    assert breach(c, Thresholds()) is None
    c.add(Counts(hard_bounces=1))
    assert breach(c, Thresholds()) == "hard_bounce_rate 0.05 > 0.05"  # 0.051 shown rounded


def test_complaints_count_against_delivered() -> None:
    c = sends(2000)
    c.add(Counts(complaints=2))
    assert breach(c, Thresholds()) is None  # 0.1 % is not above 0.1 %
    c.add(Counts(complaints=1))
    assert breach(c, Thresholds()) == "complaint_rate 0.002 > 0.001"
    few = sends(999)
    few.add(Counts(complaints=10))
    assert breach(few, Thresholds()) is None  # fewer than 1,000 delivered


def test_deferral_and_provider_error_checks_are_off_unless_set() -> None:
    c = sends(1000)
    c.add(Counts(deferrals=500, provider_errors=500, sends=500))
    assert breach(c, Thresholds()) is None
    assert breach(c, Thresholds(max_deferral_rate=0.2)) == "deferral_rate 0.33 > 0.20"
    assert breach(c, Thresholds(max_provider_error_rate=0.1)) == ("provider_error_rate 0.33 > 0.10")


def test_campaign_overrides() -> None:
    c = sends(200)
    c.add(Counts(hard_bounces=30))
    defaults = Thresholds()
    state = CampaignState("in_progress", guard={"min_sends": 100, "max_hard_bounce_rate": 0.2})
    assert pause_reason(c, state, defaults, now=0, hold_off_s=60) is None  # 0.15 < 0.2
    strict = CampaignState("in_progress", guard={"min_sends": 100, "max_complaint_rate": None})
    assert pause_reason(c, strict, defaults, now=0, hold_off_s=60) == (
        "hard_bounce_rate 0.15 > 0.05"
    )
    off = CampaignState("in_progress", guard={"enabled": False, "min_sends": 100})
    assert pause_reason(c, off, defaults, now=0, hold_off_s=60) is None


def test_only_a_sending_campaign_outside_its_hold_off_is_paused() -> None:
    c = sends(1000)
    c.add(Counts(hard_bounces=100))
    defaults = Thresholds()
    assert pause_reason(c, CampaignState("paused"), defaults, 0, 60) is None
    resumed = CampaignState("in_progress", resumed_at=1000.0)
    assert pause_reason(c, resumed, defaults, now=1059.9, hold_off_s=60) is None
    assert pause_reason(c, resumed, defaults, now=1060.0, hold_off_s=60) == (
        "hard_bounce_rate 0.10 > 0.05"
    )


def test_reason_text_decimals() -> None:
    assert reason_text("hard_bounce_rate", 0.1, 0.05) == "hard_bounce_rate 0.10 > 0.05"
    assert reason_text("complaint_rate", 0.0015, 0.001) == "complaint_rate 0.002 > 0.001"
    assert reason_text("complaint_rate", 0.003, 0.0015) == "complaint_rate 0.0030 > 0.0015"
