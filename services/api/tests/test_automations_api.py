"""/api/v1/automations: create (validated, 422 naming the bad node), list, get with stats,
edit (a new version; runs keep theirs), pause and resume (audited), runs; and the
`joined` contact.event a recipient added through the API publishes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from conftest import first_events
from libs.common.events import ContactEvent, Topic
from services.api.tests.support import Api

BASE = "/api/v1/automations"


async def _setup(api: Api) -> tuple[str, str]:
    editor = api.auth("editor")
    listed = await api.client.post("/api/v1/lists", json={"name": "auto"}, headers=editor)
    template = await api.client.post(
        "/api/v1/templates",
        json={"name": "welcome", "subject": "Hi", "html": "<p>Hi {{ first_name }}</p>"},
        headers=editor,
    )
    assert listed.status_code == 201 and template.status_code == 201, template.text
    return listed.json()["id"], template.json()["id"]


def _welcome(list_id: str, template_id: str, days: int = 3) -> dict[str, Any]:
    send = {"kind": "send", "template_id": template_id, "from_email": "hi@example.com"}
    return {
        "trigger": {"kind": "joined", "list_id": list_id},
        "steps": [send, {"kind": "wait", "days": days}, send],
        "goal": {"event": "purchase"},
    }


async def test_create_edit_pause_resume_and_read(api: Api, pool: asyncpg.Pool) -> None:
    list_id, template_id = await _setup(api)
    editor = api.auth("editor")
    created = await api.client.post(
        BASE, json={"name": "Welcome", "definition": _welcome(list_id, template_id)},
        headers=editor,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["version"] == 1 and body["status"] == "active" and body["steps"] == []
    automation_id = body["id"]
    # A run on version 1 (as the service starts one), with its first mail sent and opened.
    run_id = await pool.fetchval(
        "INSERT INTO automation_runs (automation_id, version, enrol_key, email, trigger,"
        " due_at, started_at, step) VALUES ($1, 1, 'a@example.com', 'a@example.com', 'joined:api',"
        " now(), now(), 2) RETURNING id",
        uuid.UUID(automation_id),
    )
    message_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO automation_steps (run_id, step, kind, outcome, message_id, done_at)"
        " VALUES ($1, 0, 'send', 'sent', $2, now()), ($1, 1, 'wait', 'waited', NULL, now())",
        run_id,
        message_id,
    )
    await pool.execute(
        "INSERT INTO delivery_events (event_id, campaign_id, recipient_id, email, event,"
        " provider, occurred_at, matched) VALUES ($1, $2, 0, 'a@example.com', 'open', 'sink',"
        " now(), true)",
        f"open-{message_id}",
        message_id,
    )
    edited = await api.client.patch(
        f"{BASE}/{automation_id}",
        json={"definition": _welcome(list_id, template_id, days=5)},
        headers=editor,
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["version"] == 2
    assert edited.json()["definition"]["steps"][1]["days"] == 5
    assert await pool.fetchval("SELECT version FROM automation_runs WHERE id = $1", run_id) == 1
    shown = (await api.client.get(f"{BASE}/{automation_id}", headers=api.auth("viewer"))).json()
    assert shown["runs"] == {"active": 1}
    assert shown["steps"] == [
        {"version": 1, "step": 0, "sent": 1, "opened": 1, "clicked": 0, "goal": 0}
    ]
    paused = await api.client.post(f"{BASE}/{automation_id}/pause", headers=editor)
    assert paused.json()["status"] == "paused"
    resumed = await api.client.post(f"{BASE}/{automation_id}/resume", headers=editor)
    assert resumed.json()["status"] == "active"
    actions = await pool.fetch(
        "SELECT action FROM audit_log WHERE target_kind = 'automation' AND target_id = $1"
        " ORDER BY created_at, id",
        automation_id,
    )
    assert [a["action"] for a in actions] == [
        "automation.create", "automation.update", "automation.pause", "automation.resume",
    ]  # fmt: skip
    runs = (await api.client.get(f"{BASE}/{automation_id}/runs", headers=editor)).json()
    assert [r["id"] for r in runs["items"]] == [run_id]
    run = (await api.client.get(f"{BASE}/{automation_id}/runs/{run_id}", headers=editor)).json()
    assert [(s["step"], s["outcome"]) for s in run["steps"]] == [(0, "sent"), (1, "waited")]
    listed = await api.client.get(BASE, params={"limit": 200}, headers=api.auth("viewer"))
    assert automation_id in {a["id"] for a in listed.json()["items"]}
    assert (await api.client.post(f"{BASE}/{automation_id}/pause", headers=api.auth("viewer"))
            ).status_code == 403  # fmt: skip
    missing = await api.client.get(f"{BASE}/{uuid.uuid4()}/runs/1", headers=editor)
    assert missing.status_code == 404


async def test_bad_definitions_are_422_naming_the_node(api: Api) -> None:
    list_id, template_id = await _setup(api)
    editor = api.auth("editor")
    unknown = _welcome(list_id, str(uuid.uuid4()))
    answer = await api.client.post(BASE, json={"name": "x", "definition": unknown}, headers=editor)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "body.definition.steps.0.template_id"
    backwards = _welcome(list_id, template_id)
    backwards["steps"].append({"kind": "branch", "if": "opened", "step": 0, "then": 1})
    answer = await api.client.post(
        BASE, json={"name": "x", "definition": backwards}, headers=editor
    )
    assert answer.status_code == 422 and "steps.3.then" in answer.text
    too_many = _welcome(list_id, template_id)
    too_many["steps"] = too_many["steps"] * 20
    answer = await api.client.post(BASE, json={"name": "x", "definition": too_many}, headers=editor)
    assert answer.status_code == 422 and "Traceback" not in answer.text


async def test_a_recipient_added_by_the_api_publishes_joined(api: Api) -> None:
    list_id, _ = await _setup(api)
    started = datetime.now(UTC)
    email = f"joiner-{uuid.uuid4().hex[:8]}@example.com"
    added = await api.client.post(
        f"/api/v1/lists/{list_id}/recipients", json={"email": email}, headers=api.auth("editor")
    )
    assert added.status_code == 201, added.text
    found = await first_events(
        api.settings.kafka_bootstrap_servers, Topic.CONTACT_EVENT, ContactEvent,
        lambda e: e.email == email,
    )  # fmt: skip
    assert len(found) == 1
    (event,) = found
    assert event.action == "joined" and event.source == "api"
    assert str(event.list_id) == list_id and event.occurred_at >= started
