"""Automations end to end (issue 18 item 2): a welcome series on day 0, 3 and 7, driven by
the automations service's injected clock (a file it reads), for people who join a list by
import, by the API and by double opt-in confirmation (a `joined` contact.event from a test
producer: the edge side is another change). Every person gets each step exactly once, at
its time, also when the automations process is SIGKILLed in the middle of a step's sends
and when the broker loses its topics in the middle of another's; an unsubscribe (the
one-click link of a day-0 mail) stops the series; a `custom` contact.event triggers its
own automation.

PEOPLE is 999 (a third by each way) with MAILFLEET_E2E_FULL_SIZE=1, else 150 (CI time)."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from conftest import make_settings
from libs.common import db
from libs.common.embedded import EmbeddedBroker, create_database
from libs.common.events import ContactEvent, Topic
from libs.common.kafka import EventProducer
from tests.e2e.harness import start_stack

PEOPLE = 999 if os.environ.get("MAILFLEET_E2E_FULL_SIZE") else 150
THIRD = PEOPLE // 3
T0 = datetime(2031, 1, 6, 8, 0, tzinfo=UTC)


def set_clock(path: Path, at: datetime) -> None:
    """Move the service's clock: written whole, then renamed (never read half-written)."""
    part = path.with_suffix(".part")
    part.write_text(at.isoformat())
    part.replace(path)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def test_welcome_series_exactly_once_through_kill_and_broker_loss(
    postgres_admin_dsn: str, tmp_path: Path
) -> None:
    dsn = await create_database(postgres_admin_dsn, f"mailfleet_auto_{uuid.uuid4().hex[:8]}")
    await db.migrate(dsn)
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    bootstrap = broker.start()
    clock = tmp_path / "clock"
    set_clock(clock, T0)
    stack = await start_stack(
        dsn,
        bootstrap,
        tmp_path / "logs",
        extra_children=["automations"],
        env={
            "MAILFLEET_AUTOMATIONS_CLOCK_FILE": str(clock),
            "MAILFLEET_AUTOMATIONS_TICK_S": "0.1",
            # Small transactions, so that a kill lands between runs of one step.
            "MAILFLEET_AUTOMATIONS_BATCH": "20",
        },
    )
    api = stack.client()
    http = api.http
    pool = await db.create_pool(dsn, max_size=2)
    producer = EventProducer(make_settings(dsn, bootstrap))
    await producer.start()
    try:
        list_id = await api.create_list("welcome")
        templates = {}
        for day in (0, 3, 7, 99):
            answer = await http.post(
                "/templates", json={"name": f"d{day}", "subject": f"Day {day}", "html": "<p>x</p>"}
            )
            assert answer.status_code == 201, answer.text
            templates[day] = answer.json()["id"]

        def send(day: int) -> dict[str, str]:
            return {"kind": "send", "template_id": templates[day], "from_email": "hi@example.com"}

        welcome = await http.post(
            "/automations",
            json={
                "name": "welcome",
                "definition": {
                    "trigger": {"kind": "joined", "list_id": list_id},
                    "steps": [
                        send(0), {"kind": "wait", "days": 3}, send(3),
                        {"kind": "wait", "days": 4}, send(7),
                    ],
                },
            },
        )  # fmt: skip
        assert welcome.status_code == 201, welcome.text
        welcome_id = uuid.UUID(welcome.json()["id"])
        trial = await http.post(
            "/automations",
            json={
                "name": "trial",
                "definition": {"trigger": {"kind": "event", "event": "trial_started"},
                               "steps": [send(99)]},
            },
        )  # fmt: skip
        assert trial.status_code == 201, trial.text

        # A third by import, a third by the API, a third by confirmation.
        imported = [f"imp{i}@auto.example.com" for i in range(THIRD)]
        by_api = [f"api{i}@auto.example.com" for i in range(THIRD)]
        confirmed = [f"conf{i}@auto.example.com" for i in range(THIRD)]
        everyone = imported + by_api + confirmed
        csv = "email,first_name\n" + "".join(f"{e},P\n" for e in imported)
        job = await api.wait_import(await api.import_csv(list_id, csv.encode()))
        assert job["rows_imported"] == THIRD
        for email in by_api:
            added = await http.post(f"/lists/{list_id}/recipients", json={"email": email})
            assert added.status_code == 201, added.text
        await pool.executemany(
            "INSERT INTO recipients (list_id, email) VALUES ($1, $2)",
            [(uuid.UUID(list_id), e) for e in confirmed],
        )
        await producer.send_many(
            Topic.CONTACT_EVENT,
            [
                (e, ContactEvent(
                    event_id=f"confirm-{e}", action="joined", email=e,
                    list_id=uuid.UUID(list_id), source="confirmation",
                    occurred_at=datetime.now(UTC),
                ))
                for e in confirmed
            ],
        )  # fmt: skip
        await producer.send(
            Topic.CONTACT_EVENT,
            "trial@auto.example.com",
            ContactEvent(
                event_id="trial-1", action="custom", name="trial_started",
                email="trial@auto.example.com", occurred_at=datetime.now(UTC),
            ),
        )  # fmt: skip

        def received(subject: str) -> Counter[str]:
            return Counter(m.email for m in stack.sink.state.messages if m.subject == subject)

        async def all_got(subject: str, n: int) -> bool:
            return sum(received(subject).values()) >= n

        await wait_until(lambda: all_got("Day 0", PEOPLE), "day 0 mails")
        await wait_until(lambda: all_got("Day 99", 1), "the custom event's mail")
        assert set(received("Day 0")) == set(everyone)
        assert received("Day 99") == Counter({"trial@auto.example.com": 1})

        # One person unsubscribes before day 3, by the one-click link of their day-0 mail
        # (edge -> contact.event -> tracker -> suppressions).
        quitter = by_api[0]
        day0 = next(
            m for m in stack.sink.state.messages if m.email == quitter and m.subject == "Day 0"
        )
        headers = {k.lower(): v for k, v in day0.headers.items()}
        link = re.search(r"/u/([^>\s]+)>", headers.get("list-unsubscribe", ""))
        assert link, day0.headers
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as edge:
            answer = await edge.post(f"/u/{link.group(1)}", content=b"List-Unsubscribe=One-Click")
        assert answer.status_code == 200, answer.text

        async def unsubscribed() -> bool:
            return bool(await pool.fetchval("SELECT 1 FROM suppressions WHERE email = $1", quitter))

        await wait_until(unsubscribed, "the unsubscribe folded by the tracker")

        # Day 3: SIGKILL the service while it is sending the day-3 step.
        set_clock(clock, T0 + timedelta(days=3))

        async def some_step_2() -> bool:
            return bool(
                await pool.fetchval("SELECT count(*) > 0 FROM automation_steps WHERE step = 2")
            )

        await wait_until(some_step_2, "day 3 under way")
        stack.supervisor.kill("automations")
        done_at_kill = await pool.fetchval("SELECT count(*) FROM automation_steps WHERE step = 2")
        await wait_until(lambda: all_got("Day 3", PEOPLE - 1), "day 3 mails", timeout=120)

        # Day 7: the day-7 mails are published while no dispatcher reads them, then the
        # broker loses its topics: only PostgreSQL knows they are still to be sent.
        await stack.supervisor.hold("dispatcher-1")
        set_clock(clock, T0 + timedelta(days=7))

        async def all_published() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) = $1 FROM automation_outbox"
                    " WHERE step = 4 AND published_at IS NOT NULL",
                    PEOPLE - 1,
                )
            )

        await wait_until(all_published, "day 7 published")
        broker.stop()
        broker.start()  # same port, empty memory
        stack.supervisor.release("dispatcher-1")
        await wait_until(lambda: all_got("Day 7", PEOPLE - 1), "day 7 mails", timeout=180)
        republished = await pool.fetchval(
            "SELECT count(*) FROM automation_outbox WHERE step = 4 AND publishes > 1"
        )
        runs = await pool.fetch(
            "SELECT email, status, stop_reason FROM automation_runs WHERE automation_id = $1",
            welcome_id,
        )
        steps = await pool.fetch(
            "SELECT r.email, s.step, count(*) AS n FROM automation_steps s"
            " JOIN automation_runs r ON r.id = s.run_id"
            " WHERE r.automation_id = $1 AND s.kind = 'send' GROUP BY r.email, s.step",
            welcome_id,
        )
        stats = (await http.get(f"/automations/{welcome_id}")).json()
        # When each send step ran, by the service's clock.
        times = await pool.fetch(
            "SELECT DISTINCT step, done_at FROM automation_steps WHERE kind = 'send'"
        )
    finally:
        await producer.stop()
        await api.close()
        await pool.close()
        await stack.stop()
        broker.stop()

    # Each step ran at its time: day 0, 3 and 7 of the clock (never at another instant).
    assert sorted((r["step"], r["done_at"]) for r in times) == [
        (0, T0), (2, T0 + timedelta(days=3)), (4, T0 + timedelta(days=7)),
    ]  # fmt: skip
    assert 0 < done_at_kill < PEOPLE, "the kill did not land in the middle of day 3"
    assert republished == PEOPLE - 1
    # Each person got each step exactly once (the quitter day 0 only), in the sink and in
    # the service's own records.
    for subject, wanted in (("Day 0", everyone), ("Day 3", everyone), ("Day 7", everyone)):
        got = received(subject)
        expected = set(wanted) - ({quitter} if subject != "Day 0" else set())
        assert set(got) == expected, subject
        assert max(got.values()) == 1, f"{subject}: someone was mailed twice"
    assert all(r["n"] == 1 for r in steps)
    assert len(steps) == 3 * PEOPLE - 2
    by_email = {r["email"]: r for r in runs}
    assert by_email[quitter]["status"] == "stopped"
    assert by_email[quitter]["stop_reason"] == "unsubscribed"
    assert sum(1 for r in runs if r["status"] == "completed") == PEOPLE - 1
    assert {s["step"]: s["sent"] for s in stats["steps"]} == {0: PEOPLE, 2: PEOPLE - 1,
                                                              4: PEOPLE - 1}  # fmt: skip


pytestmark = pytest.mark.timeout(400)
