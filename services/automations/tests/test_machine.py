"""The step machine and definitions, with an injected clock (no database, no broker)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from libs.automations.definition import DEFINITION, AnniversaryTrigger, parse_month_day
from services.automations.machine import Facts, advance, next_local
from services.automations.store import anniversary_due

T0 = datetime(2030, 3, 1, 10, 0, tzinfo=UTC)
TEMPLATE = str(uuid.uuid4())
LIST = str(uuid.uuid4())


def send() -> dict[str, Any]:
    return {"kind": "send", "template_id": TEMPLATE, "from_email": "hi@example.com"}


def definition(*steps: dict[str, Any], goal: str | None = None) -> Any:
    raw: dict[str, Any] = {"trigger": {"kind": "joined", "list_id": LIST}, "steps": list(steps)}
    if goal:
        raw["goal"] = {"event": goal}
    return DEFINITION.validate_python(raw)


WELCOME = definition(
    send(), {"kind": "wait", "days": 3}, send(), {"kind": "wait", "days": 4}, send()
)


def run_through(
    d: Any, clock_times: list[datetime], facts: Facts = Facts()
) -> list[tuple[datetime, int]]:  # noqa: B008
    """Drive one run with a clock that visits `clock_times`: (clock, step) of each send."""
    step, due, status = 0, T0, "active"
    sends: list[tuple[datetime, int]] = []
    for now in clock_times:
        while status == "active" and due <= now:
            result = advance(d, step, due, facts)
            sends += [(now, s.step) for s in result.done if s.outcome == "sent"]
            step, due, status = result.step, result.due_at, result.status
    return sends


def test_welcome_series_sends_each_step_once_on_day_0_3_and_7() -> None:
    hourly = [T0 + timedelta(hours=h) for h in range(0, 24 * 9)]
    sends = run_through(WELCOME, hourly)
    assert sends == [(T0, 0), (T0 + timedelta(days=3), 2), (T0 + timedelta(days=7), 4)]


def test_a_late_clock_does_not_shift_later_steps() -> None:
    # The service was down from day 0 to day 3 + 5 h: step 2 goes late, step 4 still on day 7.
    sends = run_through(WELCOME, [T0, T0 + timedelta(days=3, hours=5), T0 + timedelta(days=7)])
    assert [s for _, s in sends] == [0, 2, 4]
    assert sends[2][0] == T0 + timedelta(days=7)


def test_a_suppressed_person_is_stopped_before_the_next_send() -> None:
    result = advance(WELCOME, 2, T0, Facts(suppressed=True))
    assert result.status == "stopped" and result.stop_reason == "unsubscribed"
    assert result.done == []


def test_wait_until_local_time_is_dst_safe() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 2030-03-31 02:30 does not exist in Paris (spring forward): the next 09:00 is that day.
    at = datetime(2030, 3, 31, 0, 30, tzinfo=UTC)
    assert next_local(at, "09:00", paris) == datetime(2030, 3, 31, 7, 0, tzinfo=UTC)
    # Before the change 09:00 is 08:00 UTC.
    assert next_local(datetime(2030, 3, 30, 0, 0, tzinfo=UTC), "09:00", paris) == datetime(
        2030, 3, 30, 8, 0, tzinfo=UTC
    )
    d = definition({"kind": "wait_until", "at": "09:00"}, send())
    result = advance(d, 0, datetime(2030, 3, 30, 12, 0, tzinfo=UTC), Facts(zone=paris))
    assert result.due_at == datetime(2030, 3, 31, 7, 0, tzinfo=UTC)


def test_branch_on_engagement() -> None:
    d = definition(
        send(),
        {"kind": "wait", "days": 1},
        {"kind": "branch", "if": "opened", "step": 0, "then": 4, "else": 3},
        send(),  # 3: a reminder for those who did not open
        {"kind": "stop"},
    )
    opened = advance(d, 2, T0, Facts(engaged={0: frozenset({"opened"})}))
    assert [x.outcome for x in opened.done] == ["then", "stopped"]
    assert opened.status == "completed"
    not_opened = advance(d, 2, T0, Facts())
    assert [(x.step, x.outcome) for x in not_opened.done] == [
        (2, "else"),
        (3, "sent"),
        (4, "stopped"),
    ]


@pytest.mark.parametrize(
    ("steps", "where"),
    [
        ([{"kind": "branch", "if": "opened", "step": 0, "then": 1}], "not an earlier send"),
        (
            [
                send(),
                {"kind": "wait", "days": 1},
                {"kind": "branch", "if": "opened", "step": 0, "then": 1},
            ],
            "only forward",
        ),
        ([send()] * 51, "at most 50"),
        ([{"kind": "wait"}], "needs days"),
        ([{"kind": "wait_until", "at": "25:00"}], "hour must be"),
    ],
)
def test_bad_definitions_are_refused(steps: list[dict[str, Any]], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        definition(*steps)
    assert where.lower() in str(caught.value).lower()


def test_anniversary_at_nine_local_once_a_year() -> None:
    trigger = AnniversaryTrigger(kind="anniversary", list_id=uuid.uuid4(), field="birthday")
    now = datetime(2030, 6, 14, 23, 0, tzinfo=UTC)
    assert parse_month_day("1990-06-15") == (6, 15)
    assert parse_month_day("06-15") == (6, 15)
    assert parse_month_day("not a date") is None
    year, at = anniversary_due((6, 15), "Asia/Tokyo", trigger, now) or (0, now)
    assert (year, at) == (2030, datetime(2030, 6, 15, 0, 0, tzinfo=UTC))  # 09:00 in Tokyo
    assert anniversary_due((12, 1), None, trigger, now) is None
    # 29 February outside a leap year: on the 28th.
    feb = datetime(2031, 2, 28, 0, 0, tzinfo=UTC)
    assert anniversary_due((2, 29), "UTC", trigger, feb) == (
        2031,
        datetime(2031, 2, 28, 9, 0, tzinfo=UTC),
    )
