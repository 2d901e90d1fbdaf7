"""Subscriber rights: export and erasure of one address (issue 15 item 5).

The person's data is put everywhere it can be: imported into two lists by the real
importer (running in process on the real broker), a rejected import row quoting it, a
manual suppression (and its audit record), a soft-bounce streak, a delivery log row whose
error quotes it, provider events whose details hold it, and the dispatcher's ledger
result. After the erasure, every text, varchar, json and jsonb column of every table is
scanned for the address, and a new import of it counts it `suppressed`.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from libs.common import suppressions
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.api.tests.support import Api
from services.importer.app import main as importer_main

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
async def importer(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    producer = EventProducer(settings)
    await producer.start()
    ctx = ServiceContext("importer", settings, pool, producer, asyncio.Event())
    service = asyncio.create_task(
        importer_main(ctx, group_id=f"importer-people-test-{uuid.uuid4().hex[:8]}")
    )
    try:
        yield
    finally:
        ctx.stop.set()
        await asyncio.wait_for(service, 20)
        await producer.stop()


async def _new_list(api: Api, name: str) -> str:
    answer = await api.client.post("/api/v1/lists", json={"name": name}, headers=api.auth("editor"))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def _import(api: Api, list_id: str, text: str) -> dict[str, Any]:
    answer = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("people.csv", text.encode(), "text/csv")},
        headers=api.auth("editor"),
    )
    assert answer.status_code == 202, answer.text
    import_id = answer.json()["id"]
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = (
            await api.client.get(f"/api/v1/imports/{import_id}", headers=api.auth("viewer"))
        ).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import {import_id} did not finish within {DEADLINE_S} s")


async def _columns_holding(pool: asyncpg.Pool, needle: str) -> list[str]:
    """Every (table.column) of a text-like type in the public schema that holds `needle`."""
    columns = await pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns c"
        " WHERE table_schema = 'public' AND data_type IN"
        " ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY', 'USER-DEFINED')"
        " AND EXISTS (SELECT 1 FROM information_schema.tables t WHERE t.table_schema = 'public'"
        "  AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE')"
    )
    assert len(columns) > 40  # the scan really covers the schema
    found = []
    for col in columns:
        table, column = col["table_name"], col["column_name"]
        hits = await pool.fetchval(
            f'SELECT count(*) FROM "{table}" WHERE strpos(lower("{column}"::text), $1) > 0',  # noqa: S608
            needle,
        )
        if hits:
            found.append(f"{table}.{column}")
    # Bytes columns (webhook bodies as signed): searched as bytes.
    for col in await pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type = 'bytea'"
    ):
        table, column = col["table_name"], col["column_name"]
        hits = await pool.fetchval(
            f'SELECT count(*) FROM "{table}" WHERE position(convert_to($1, \'UTF8\') IN "{column}") > 0',  # noqa: S608, E501
            needle,
        )
        if hits:
            found.append(f"{table}.{column}")
    return found


async def _plant_message_and_webhook(pool: asyncpg.Pool, address: str) -> None:
    """A transactional message to the address, and a webhook body naming it."""
    message_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO message_requests (message_id, idempotency_key, body_hash, recipient, source)"
        " VALUES ($1, $2, '\\x00', $3, 'api')",
        message_id,
        f"key-{message_id}",
        address,
    )
    await pool.execute(
        "INSERT INTO messages (message_id, recipient, status, provider, error, sent_at)"
        " VALUES ($1, $2, 'failed', 'sink', $3, now())",
        message_id,
        address,
        f"refused: 550 <{address}> unknown",
    )
    endpoint = await pool.fetchval(
        "INSERT INTO webhook_endpoints (url, event_types, secret_sealed)"
        " VALUES ('https://hooks.example.com/x', '{delivery.open}', '\\x00') RETURNING id"
    )
    await pool.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, payload,"
        " next_attempt_at) VALUES ($1, $2, 'delivery.open', $3, now())",
        endpoint,
        uuid.uuid4(),
        f'{{"type": "delivery.open", "data": {{"email": "{address}"}}}}'.encode(),
    )


async def _plant_automation_run(pool: asyncpg.Pool, address: str) -> None:
    """A welcome series the address is in, its first step sent (outbox body and all)."""
    automation = uuid.uuid4()
    await pool.execute(
        "INSERT INTO automations (id, name, trigger_kind, trigger_event)"
        " VALUES ($1, 'rights', 'event', 'trial_started')",
        automation,
    )
    run = await pool.fetchval(
        "INSERT INTO automation_runs (automation_id, version, enrol_key, email, trigger, data,"
        " due_at, started_at) VALUES ($1, 1, $2, $2, 'event', $3, now(), now()) RETURNING id",
        automation,
        address,
        {"email": address, "plan": "pro"},
    )
    await pool.execute(
        "INSERT INTO automation_steps (run_id, step, kind, outcome, done_at)"
        " VALUES ($1, 0, 'send', 'sent', now())",
        run,
    )
    await pool.execute(
        "INSERT INTO automation_outbox (message_id, run_id, step, key, payload, published_at,"
        " publishes) VALUES ($1, $2, 0, $3, $4, now(), 1)",
        uuid.uuid4(),
        run,
        address,
        {
            "schema_version": 1,
            "to": address,
            "content": {"subject": "Welcome", "html": "<p>Hi</p>", "from_email": "n@example.com"},
            "data": {"email": address},
        },
    )


async def _plant_history(pool: asyncpg.Pool, list_id: str, address: str) -> uuid.UUID:
    """What the tracker and dispatcher would have written after a campaign mailed it."""
    rid = await pool.fetchval(
        "SELECT id FROM recipients WHERE list_id = $1 AND email = $2", uuid.UUID(list_id), address
    )
    campaign = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " finished_at) VALUES ('rights', 's', 'h', 'news@example.com', $1, 'sink', 'completed',"
        " now()) RETURNING id",
        uuid.UUID(list_id),
    )
    batch = f"{campaign}:0"
    await pool.execute(
        "INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids, emitted)"
        " VALUES ($1, $2, 0, $3, 1)",
        batch,
        campaign,
        [rid],
    )
    await pool.execute(
        "INSERT INTO tracker_batches (batch_id, campaign_id, recipients) VALUES ($1, $2, 1)",
        batch,
        campaign,
    )
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id, sent_at,"
        " error, opened_at) VALUES ($1, $2, $3, 'sent', $4, now(), $5, now())",
        campaign,
        rid,
        address,
        batch,
        f"452 4.2.2 <{address.upper()}>: mailbox full, retried",
    )
    await pool.execute(
        "INSERT INTO delivery_events (event_id, campaign_id, recipient_id, email, event,"
        " provider, occurred_at, matched, detail) VALUES ($1, $2, $3, $4, 'open', 'sendgrid',"
        " now(), true, $5)",
        f"ev-{uuid.uuid4().hex}",
        campaign,
        rid,
        address,
        {"email": address, "useragent": "Mail"},
    )
    await pool.execute(
        "INSERT INTO send_ledger (batch_id, campaign_id, state, owner, result) VALUES"
        " ($1, $2, 'done', 'd1', $3)",
        batch,
        campaign,
        {"outcomes": [{"recipient_id": rid, "email": address, "status": "sent"}]},
    )
    await pool.execute("INSERT INTO soft_bounce_streaks (email, in_a_row) VALUES ($1, 1)", address)
    return campaign


async def test_export_then_erase_leaves_nothing_and_the_person_never_returns(
    api: Api, importer: None, pool: asyncpg.Pool
) -> None:
    tag = uuid.uuid4().hex[:10]
    address = f"ada.{tag}@example.com"
    other = f"alan.{tag}@example.com"
    list_a = await _new_list(api, "rights A")
    list_b = await _new_list(api, "rights B")
    job = await _import(
        api,
        list_a,
        f"email,first_name,city\n{address.upper()},Ada,Pune\n{other},Alan,Paris\n"
        f"{address}-not valid,Ada,again\n",
    )
    assert (job["rows_imported"], job["rows_rejected"]) == (2, 1), job
    # The rejected row quotes the address (plus garbage), so its report holds it too.
    await _import(api, list_b, f"email,first_name\n{address},Ada B\n{address};x,bad\n")
    added = await api.client.post(
        "/api/v1/suppressions", json={"email": address}, headers=api.auth("editor")
    )
    assert added.status_code == 201
    await _plant_history(pool, list_a, address)
    await _plant_message_and_webhook(pool, address)
    await _plant_automation_run(pool, address)
    saved = await api.client.post(
        "/api/v1/segments",
        json={"name": "her", "filter": {"field": "email", "op": "eq", "value": address}},
        headers=api.auth("editor"),
    )
    assert saved.status_code == 201
    assert set(await _columns_holding(pool, address)) >= {
        "recipients.email",
        "suppressions.email",
        "deliveries.email",
        "deliveries.error",
        "delivery_events.email",
        "delivery_events.detail",
        "send_ledger.result",
        "soft_bounce_streaks.email",
        "import_rejections.raw",
        "audit_log.target_id",
        "segments.filter",
        "messages.recipient",
        "messages.error",
        "message_requests.recipient",
        "webhook_deliveries.payload",
    }

    # Export: admin only, everything in one document, and audited without the address.
    refused = await api.client.get(f"/api/v1/people/{address}/export", headers=api.auth("editor"))
    assert refused.status_code == 403
    answer = await api.client.get(
        f"/api/v1/people/{address.upper()}/export", headers=api.auth("admin")
    )
    assert answer.status_code == 200, answer.text
    exported = answer.json()
    assert exported["email"] == address
    assert {r["list_id"] for r in exported["recipients"]} == {list_a, list_b}
    assert {r["fields"]["first_name"] for r in exported["recipients"]} == {"Ada", "Ada B"}
    assert exported["suppression"]["reason"] == "manual"
    assert exported["soft_bounce_streak"]["in_a_row"] == 1
    assert [d["status"] for d in exported["deliveries"]] == ["sent"]
    assert [e["event"] for e in exported["events"]] == ["open"]
    assert len(exported["import_rejections"]) == 2
    assert [a["action"] for a in exported["audit"]] == ["suppression.add"]
    assert exported["consents"] == []

    # Erasure: admin only.
    editor = await api.client.delete(f"/api/v1/people/{address}", headers=api.auth("editor"))
    assert editor.status_code == 403
    erased = await api.client.delete(f"/api/v1/people/{address}", headers=api.auth("admin"))
    assert erased.status_code == 200, erased.text
    body = erased.json()
    key = suppressions.erasure_key(api.settings.secret_key)
    assert body["token"] == await suppressions.erased_token(pool, address, key)
    # The token ends with the HMAC computed in Python: the SQL HMAC is the real one.
    assert body["token"].endswith(":" + suppressions.hmac_part(address, key))
    assert re.fullmatch(r"erased:[0-9a-f]{4}:[0-9a-f]{64}", body["token"])
    assert body["erased"] | {"pending_uploads": 0} == {
        "recipients": 2,
        "deliveries": 1,
        "events": 1,
        "ledger_batches": 1,
        "import_rejections": 2,
        "audit_records": 1,
        "segments": 1,
        "messages": 1,
        "webhook_deliveries": 1,
        "automation_runs": 1,
        "suppression_replaced": "manual",
        "pending_uploads": 0,
    }

    # Nothing anywhere names the address; the other person is untouched.
    assert await _columns_holding(pool, address) == []
    assert "recipients.email" in await _columns_holding(pool, other)
    # The delivery log still reconciles: the row stays, under the token.
    row = await pool.fetchrow(
        "SELECT status, error FROM deliveries WHERE email = $1", body["token"]
    )
    assert row is not None and (row["status"], row["error"]) == ("sent", "[erased]")

    # Audited as the token; the earlier record names the token now, who and what unchanged.
    audit = await api.client.get(
        "/api/v1/audit", params={"target_id": body["token"]}, headers=api.auth("admin")
    )
    actions = [item["action"] for item in audit.json()["items"]]
    assert actions == ["person.erase", "person.export", "suppression.add"], actions
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute(
            "UPDATE audit_log SET target_id = 'x' WHERE target_id = $1", body["token"]
        )

    # Never imported again: a new list (direct COPY) and an existing one (staged upsert).
    fresh = await _new_list(api, "rights again")
    job = await _import(api, fresh, f"email,first_name\n {address.upper()} ,Ada\n{other},Alan\n")
    assert (job["rows_imported"], job["rows_suppressed"]) == (1, 1), job
    job = await _import(api, list_a, f"email,first_name\n{address},Ada\n{other},Alan 2\n")
    assert (job["rows_updated"], job["rows_suppressed"]) == (1, 1), job
    assert await _columns_holding(pool, address) == []
    # Nor added by API.
    by_api = await api.client.post(
        f"/api/v1/lists/{fresh}/recipients", json={"email": address}, headers=api.auth("editor")
    )
    assert by_api.status_code == 409 and "erased" in by_api.text
    # The export now finds nothing; erasing again changes nothing and still answers.
    empty = (
        await api.client.get(f"/api/v1/people/{address}/export", headers=api.auth("admin"))
    ).json()
    assert (empty["recipients"], empty["deliveries"], empty["suppression"]) == ([], [], None)
    again = await api.client.delete(f"/api/v1/people/{address}", headers=api.auth("admin"))
    assert again.status_code == 200 and again.json()["erased"]["recipients"] == 0
    assert await _columns_holding(pool, address) == []


async def test_erasure_waits_for_a_batch_on_its_way(api: Api, pool: asyncpg.Pool) -> None:
    address = f"grace.{uuid.uuid4().hex[:10]}@example.com"
    list_id = await _new_list(api, "in flight")
    added = await api.client.post(
        f"/api/v1/lists/{list_id}/recipients", json={"email": address}, headers=api.auth("editor")
    )
    rid = added.json()["id"]
    campaign = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " started_at) VALUES ('busy', 's', 'h', 'news@example.com', $1, 'sink', 'in_progress',"
        " $2) RETURNING id",
        uuid.UUID(list_id),
        datetime.now(UTC),
    )
    await pool.execute(
        "INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids, emitted)"
        " VALUES ($1, $2, 0, $3, 1)",
        f"{campaign}:0",
        campaign,
        [rid],
    )
    answer = await api.client.delete(f"/api/v1/people/{address}", headers=api.auth("admin"))
    assert answer.status_code == 409, answer.text
    assert str(campaign) in answer.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM recipients WHERE email = $1", address) == 1
    # Once the tracker accounted for the batch, the erasure goes ahead.
    await pool.execute(
        "INSERT INTO tracker_batches (batch_id, campaign_id, recipients) VALUES ($1, $2, 1)",
        f"{campaign}:0",
        campaign,
    )
    answer = await api.client.delete(f"/api/v1/people/{address}", headers=api.auth("admin"))
    assert answer.status_code == 200 and answer.json()["erased"]["recipients"] == 1


async def test_bad_address_is_a_422(api: Api) -> None:
    answer = await api.client.get("/api/v1/people/not-an-address/export", headers=api.auth("admin"))
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "path.email"


def test_erasure_keys_differ_by_secret() -> None:
    one = suppressions.ErasureKey.of(suppressions.erasure_key("k" * 40))
    two = suppressions.ErasureKey.of(suppressions.erasure_key("j" * 40))
    assert len(one.ipad) == len(one.opad) == 64 and one.ipad != one.opad
    assert one.seed != two.seed and one.ipad != two.ipad
