"""Per-domain throttles, the pure part: groups, limits, the warm-up ramp, grants, splits."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest
from pydantic import ValidationError

from libs.common.events import RecipientOutcome
from libs.mail.config import DispatcherSettings
from libs.mail.messages import Message, Outbox, Sender, TemplatedGroup, TemplatedRecipient
from libs.mail.throttles import (
    GroupLimit,
    ThrottlePolicy,
    WarmupSchedule,
    domain_group,
    grant,
    group_counts,
    split_outbox,
    window_start,
)


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("a@gmail.com", "gmail"),
        ("A@GoogleMail.COM", "gmail"),
        ("a@gmail.com.", "gmail"),
        ("a@yahoo.com", "yahoo"),
        ("a@yahoo.co.uk", "yahoo"),
        ("a@yahoo.fr", "yahoo"),
        ("a@ymail.com", "yahoo"),
        ("a@rocketmail.com", "yahoo"),
        ("a@aol.com", "yahoo"),
        ("a@aol.de", "yahoo"),
        ("a@outlook.com", "microsoft"),
        ("a@hotmail.co.uk", "microsoft"),
        ("a@hotmail.com.br", "microsoft"),
        ("a@live.com", "microsoft"),
        ("a@msn.com", "microsoft"),
        ("a@example.com", "other"),
        # A brand's name inside someone else's domain is not the brand.
        ("a@live.example.org", "other"),
        ("a@outlook.mycompany.com", "other"),
        ("a@mail.gmail.com.evil.net", "other"),
        ("a@gmailcom.net", "other"),
        ("a@yahoo", "other"),
    ],
)
def test_domain_groups(address: str, group: str) -> None:
    assert domain_group(address) == group


def test_limits_overlay_the_defaults_and_a_provider_entry_wins() -> None:
    policy = ThrottlePolicy.parse("gmail:10/100,smtp.gmail:5/-,yahoo:-/-,other:7/-")
    assert policy.limit("sink", "gmail") == GroupLimit(10, 100)
    assert policy.limit("smtp", "gmail") == GroupLimit(5, None)
    assert not policy.limit("sink", "yahoo").limited  # unset by "-/-"
    assert policy.limit("sink", "microsoft") == GroupLimit(600, 20000)  # the default stays
    assert policy.limit("sink", "other") == GroupLimit(7, None)
    assert not ThrottlePolicy.parse("off").limits_provider("sink")


def test_limits_as_json() -> None:
    policy = ThrottlePolicy.parse(
        '{"gmail": [600, 20000], "smtp.yahoo": {"per_minute": 300}, "microsoft": [null, null]}'
    )
    assert policy.limit("sendgrid", "gmail") == GroupLimit(600, 20000)
    assert policy.limit("smtp", "yahoo") == GroupLimit(300, None)
    assert policy.limit("sendgrid", "yahoo") == GroupLimit(600, 20000)
    assert not policy.limit("smtp", "microsoft").limited


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("gmail:10", "per_minute/per_hour"),
        ("hotmail:1/2", "unknown group 'hotmail'"),
        ("ses.gmail:1/2", "unknown provider 'ses'"),
        ("gmail:0/10", "out of range"),
        ('{"gmail": [1]}', "expected"),
        ("{nope", "invalid JSON"),
    ],
)
def test_bad_limits_are_refused_naming_the_entry(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ThrottlePolicy.parse(spec)
    with pytest.raises(ValidationError, match="MAILFLEET_DOMAIN_THROTTLES"):
        DispatcherSettings(MAILFLEET_DOMAIN_THROTTLES=spec)


def test_the_warmup_ramp_follows_the_days_since_the_first_send() -> None:
    ramp = WarmupSchedule.parse("1000, 2000,5000,10000")
    first = date(2026, 3, 1)
    # The clock is the day handed in: day 0 is the first send day.
    limits = [ramp.limit_on(first, first + timedelta(days=d)) for d in range(6)]
    assert limits == [1000, 2000, 5000, 10000, None, None]
    # A first day "in the future" (clocks apart) is day 0, never an index error.
    assert ramp.limit_on(first, first - timedelta(days=2)) == 1000
    assert not WarmupSchedule.parse("").enabled
    with pytest.raises(ValueError, match="warm-up day 2"):
        WarmupSchedule.parse("1000,,5000")
    with pytest.raises(ValidationError, match="MAILFLEET_WARMUP_SCHEDULE"):
        DispatcherSettings(MAILFLEET_WARMUP_SCHEDULE="1000,lots")


def test_windows_are_fixed_and_aligned() -> None:
    assert window_start(125.5, 60) == 120
    assert window_start(3599.9, 3600) == 0
    assert window_start(120.0, 60) == 120


def test_grants_take_each_groups_room_and_the_shared_warmup_room_in_order() -> None:
    wants = {"gmail": 30, "other": 50, "yahoo": 10}
    assert grant(wants, {"gmail": 20, "other": None, "yahoo": 0}, None) == {
        "gmail": 20,
        "other": 50,
        "yahoo": 0,
    }
    # The warm-up day has 40 left for all groups together.
    assert grant(wants, {"gmail": 20, "other": None, "yahoo": 0}, 40) == {
        "gmail": 20,
        "other": 20,
        "yahoo": 0,
    }
    assert grant({"gmail": 5}, {}, 0) == {"gmail": 0}


def _outbox() -> Outbox:
    def message(i: int, email: str) -> Message:
        return Message(i, email, "s", "h", "t", {}, {})

    def templated(i: int, email: str) -> TemplatedRecipient:
        return TemplatedRecipient(i, email, {}, {}, {})

    return Outbox(
        sender=Sender("news@example.com"),
        individual=[message(1, "a@gmail.com"), message(2, "b@example.com")],
        templated=TemplatedGroup(
            "s",
            "h",
            "t",
            [
                templated(3, "c@gmail.com"),
                templated(4, "d@yahoo.com"),
                templated(5, "e@googlemail.com"),
            ],
        ),
    )


def test_an_outbox_splits_into_what_has_room_and_the_rest() -> None:
    outbox = _outbox()
    assert group_counts(outbox) == {"gmail": 3, "other": 1, "yahoo": 1}
    now, later = split_outbox(outbox, {"gmail": 2, "other": 1, "yahoo": 0})
    assert [m.recipient_id for m in now.individual] == [1, 2]
    assert now.templated is not None and [r.recipient_id for r in now.templated.recipients] == [3]
    assert later.individual == []
    assert later.templated is not None
    assert [r.recipient_id for r in later.templated.recipients] == [4, 5]
    assert now.recipient_count + later.recipient_count == outbox.recipient_count
    # Nothing granted: everything is for later, nothing is lost.
    none, everything = split_outbox(outbox, {})
    assert none.recipient_count == 0 and everything.recipient_count == 5


def test_both_parts_of_a_split_keep_the_outbox_own_tracking_and_leave_settled_out() -> None:
    """A defect until session 7: the parts were new outboxes that lost `own_tracking`, so
    SendGrid's own click and open tracking stayed on for every throttled send (the default:
    gmail, yahoo and microsoft are limited) and counted each hit a second time."""
    invalid = RecipientOutcome(recipient_id=9, email="bad", status="invalid")
    outbox = replace(_outbox(), own_tracking=True, settled=[invalid])
    some = {"gmail": 2, "other": 1, "yahoo": 0}
    everyone = {"gmail": 3, "other": 1, "yahoo": 1}
    for granted in (some, everyone, {}):
        now, later = split_outbox(outbox, granted)
        assert now.own_tracking and later.own_tracking
        assert now.sender == later.sender == outbox.sender
        assert now.settled == later.settled == []
        assert now.recipient_count + later.recipient_count == outbox.recipient_count


def test_room_for_everyone_sends_the_whole_outbox_in_one_part() -> None:
    outbox = _outbox()
    counts = group_counts(outbox)
    now, later = split_outbox(outbox, {**counts, "gmail": 10}, counts)
    assert now.recipient_count == outbox.recipient_count and later.recipient_count == 0
    assert now.templated == outbox.templated and now.individual == outbox.individual
