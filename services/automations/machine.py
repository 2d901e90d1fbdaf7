"""The step machine: what a due run does now, given its definition and a few facts.

Pure (no database, no Kafka, no clock of its own): `advance` takes the run's next step and
when it was due, and returns the steps done now and where the run stands after them. The
repository applies that in one transaction (steps, outbox rows, the run's new timer).

Time never drifts: a wait counts from when the step before it was *due*, not from when
the service got round to it, so a series on day 0, 3 and 7 stays on those days after a
restart or a backlog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from libs.automations.definition import (
    BranchStep,
    Definition,
    SendStep,
    StopStep,
    WaitStep,
    WaitUntilStep,
)
from libs.common.sendtime import local_instant, parse_hhmm, zone_or_none

Engagement = Literal["opened", "clicked"]


@dataclass(frozen=True)
class Done:
    """One step done now: `outcome` is `sent`, `waited`, `then`/`else`, `stopped`."""

    step: int
    kind: str
    outcome: str
    send: SendStep | None = None


@dataclass(frozen=True)
class Facts:
    """What the machine may ask about the person: their zone, whether they are suppressed
    (unsubscribed, bounced, complained, erased), and what they did with earlier mails."""

    zone: ZoneInfo | None = None
    suppressed: bool = False
    engaged: Mapping[int, frozenset[Engagement]] = field(default_factory=dict)


@dataclass(frozen=True)
class Advance:
    done: list[Done]
    # Where the run stands: `active` with its next step and when it is due, or finished.
    status: Literal["active", "completed", "stopped"]
    step: int
    due_at: datetime
    stop_reason: str | None = None


def zone_of(fields: Mapping[str, object], default: str) -> ZoneInfo | None:
    """The person's `timezone` field if it names a zone, else `default`'s."""
    value = fields.get("timezone")
    zone = zone_or_none(value) if isinstance(value, str) else None
    return zone or zone_or_none(default)


def next_local(at: datetime, hhmm: str, zone: ZoneInfo) -> datetime:
    """The first instant at or after `at` when `zone`'s clocks show `hhmm` (DST-safe: a
    wall time skipped by a spring-forward maps to the instant after the gap)."""
    wall = parse_hhmm(hhmm)
    local = at.astimezone(zone)
    for days in range(0, 3):
        day = (local + timedelta(days=days)).date()
        candidate = local_instant(datetime.combine(day, wall), zone)
        if candidate >= at:
            return candidate
    raise AssertionError("unreachable: a wall time recurs within two days")


def advance(definition: Definition, step: int, due_at: datetime, facts: Facts) -> Advance:
    """Run the steps from `step` (due at `due_at`) up to the next wait, or the end.

    A send to a suppressed person stops the run (reason `unsubscribed`): nothing else is
    sent to them. Steps past the last one complete the run."""
    done: list[Done] = []
    steps = definition.steps
    while step < len(steps):
        node = steps[step]
        if isinstance(node, SendStep):
            if facts.suppressed:
                return Advance(done, "stopped", step, due_at, "unsubscribed")
            done.append(Done(step, "send", "sent", node))
            step += 1
        elif isinstance(node, WaitStep):
            done.append(Done(step, "wait", "waited"))
            return Advance(done, "active", step + 1, due_at + timedelta(seconds=node.seconds()))
        elif isinstance(node, WaitUntilStep):
            zone = facts.zone or zone_or_none(node.timezone) or ZoneInfo("UTC")
            until = next_local(due_at, node.at, zone)
            done.append(Done(step, "wait_until", "waited"))
            return Advance(done, "active", step + 1, until)
        elif isinstance(node, BranchStep):
            taken = node.condition in facts.engaged.get(node.step, frozenset())
            target = node.then if taken else (node.otherwise or step + 1)
            done.append(Done(step, "branch", "then" if taken else "else"))
            step = target
        elif isinstance(node, StopStep):
            done.append(Done(step, "stop", "stopped"))
            return Advance(done, "completed", step + 1, due_at)
        else:  # pragma: no cover - the definition's union is closed
            raise TypeError(f"unknown step {node!r}")
    return Advance(done, "completed", step, due_at)


def branch_sources(definition: Definition) -> list[int]:
    """The send steps whose engagement some branch reads: the facts to look up."""
    return sorted({n.step for n in definition.steps if isinstance(n, BranchStep)})
