"""Which statuses pause / resume / cancel apply to."""

from __future__ import annotations

import pytest

from libs.common.campaign_control import (
    ControlRefused,
    allowed_from,
    target_status,
    transition,
)


@pytest.mark.parametrize(
    ("action", "current", "expected"),
    [
        ("pause", "in_progress", "paused"),
        ("resume", "paused", "in_progress"),
        ("cancel", "scheduled", "cancelled"),
        ("cancel", "in_progress", "cancelled"),
        ("cancel", "paused", "cancelled"),
    ],
)
def test_allowed_transitions(action: str, current: str, expected: str) -> None:
    step = transition(action, current)  # type: ignore[arg-type]
    assert step.status == expected and step.changed


@pytest.mark.parametrize(
    ("action", "current"),
    [
        ("pause", "scheduled"),
        ("pause", "completed"),
        ("resume", "scheduled"),
        ("resume", "cancelled"),
        ("cancel", "completed"),
        ("cancel", "failed"),
        ("cancel", "draft"),
        ("pause", "cancelled"),
    ],
)
def test_refused_transitions_name_what_is_allowed(action: str, current: str) -> None:
    with pytest.raises(ControlRefused) as refused:
        transition(action, current)  # type: ignore[arg-type]
    assert current in str(refused.value) and "allowed from" in str(refused.value)


def test_repeating_an_action_is_a_no_op() -> None:
    assert not transition("pause", "paused").changed
    assert not transition("cancel", "cancelled").changed
    assert transition("resume", "in_progress").status == "in_progress"


def test_compare_and_set_helpers() -> None:
    assert allowed_from("resume") == {"paused"}
    assert target_status("cancel") == "cancelled"
    with pytest.raises(ValueError, match="unknown control action"):
        allowed_from("explode")
