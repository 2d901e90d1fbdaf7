"""The public edge keeps working while the admin API is down (issue 12).

The edge while the admin API is down (issue 12): one-click unsubscribes and provider
webhooks posted to the edge are all folded, once each, and show in the API once it is
back. Nothing is lost.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from libs.common.embedded import wait_for_port
from libs.common.settings import Settings
from libs.common.unsubscribe import make_token
from services.edge.tests.support import WEBHOOK_PATH, public_key_b64, sendgrid_event, signed
from tests.e2e.harness import RunningStack, start_stack

# Recipients of the campaign: half unsubscribe by link, half bounce by webhook.
EDGE_OUTAGE_RECIPIENTS = int(os.environ.get("MAILFLEET_E2E_EDGE_RECIPIENTS", "40"))
SECRET = "e2e-secret"  # what start_stack gives every service as MAILFLEET_SECRET_KEY


async def _sent_campaign(stack: RunningStack, recipients: int) -> str:
    api = stack.client()
    try:
        list_id = await api.create_list("edge outage")
        rows = "".join(f"reader{i}.{uuid.uuid4().hex[:6]}@example.com\n" for i in range(recipients))
        job = await api.wait_import(await api.import_csv(list_id, f"email\n{rows}".encode()))
        assert job["status"] == "completed" and job["rows_imported"] == recipients, job
        campaign_id = await api.create_campaign(
            name="edge outage",
            subject="Hello",
            html="<p>Hi</p>",
            from_email="news@example.com",
            list_id=list_id,
        )
        await api.schedule(campaign_id)
        done = await api.wait_campaign(campaign_id)
        assert done["status"] == "completed", done
        return campaign_id
    finally:
        await api.close()


async def _api_is_down(api_url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(f"{api_url}/healthz")
    except httpx.TransportError:
        return True
    return False


async def _post_to_edge_while_api_down(
    stack: RunningStack,
    key: ec.EllipticCurvePrivateKey,
    campaign_id: str,
    unsubscribing: list[asyncpg.Record],
    bouncing: list[asyncpg.Record],
) -> None:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=60) as edge:
        for delivery in unsubscribing:
            token = make_token(SECRET, uuid.UUID(campaign_id), delivery["recipient_id"])
            for _ in range(2):  # a mail client and then the reader: one unsubscribe
                answer = await edge.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
                assert answer.status_code == 200, answer.text
        events = [
            sendgrid_event(
                "bounce",
                email=d["email"],
                campaign_id=campaign_id,
                recipient_id=str(d["recipient_id"]),
                type="bounce",
            )
            for d in bouncing
        ]
        body = orjson.dumps(events)
        for _ in range(2):  # SendGrid retries a post: its events count once
            answer = await edge.post(WEBHOOK_PATH, content=body, headers=signed(key, body))
            assert answer.status_code == 200, answer.text
            assert answer.json()["published"] == len(bouncing)


@pytest.mark.timeout(600)
async def test_edge_loses_nothing_while_the_admin_api_is_down(
    settings: Settings,
    pool: asyncpg.Pool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    stack = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("edge-outage-logs"),
        env={"SENDGRID_WEBHOOK_VERIFICATION_KEY": public_key_b64(key)},
    )
    try:
        campaign_id = await _sent_campaign(stack, EDGE_OUTAGE_RECIPIENTS)
        deliveries = await pool.fetch(
            "SELECT recipient_id, email FROM deliveries WHERE campaign_id = $1"
            " ORDER BY recipient_id",
            uuid.UUID(campaign_id),
        )
        assert len(deliveries) == EDGE_OUTAGE_RECIPIENTS
        half = len(deliveries) // 2
        unsubscribing, bouncing = deliveries[:half], deliveries[half:]

        await stack.supervisor.hold("api")
        assert await _api_is_down(stack.api_url)
        await _post_to_edge_while_api_down(stack, key, campaign_id, unsubscribing, bouncing)
        stack.supervisor.release("api")
        port = int(stack.api_url.rsplit(":", 1)[1])
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60)

        stats = await _wait_for_folded(stack, campaign_id, len(unsubscribing), len(bouncing))
        assert (stats["unsubscribed"], stats["bounced"]) == (len(unsubscribing), len(bouncing))
        suppressed = await pool.fetch(
            "SELECT email, reason FROM suppressions WHERE email = ANY($1::text[])",
            [d["email"] for d in deliveries],
        )
        expected = {d["email"]: "unsubscribe" for d in unsubscribing}
        expected |= {d["email"]: "bounce" for d in bouncing}
        assert {r["email"]: r["reason"] for r in suppressed} == expected
    finally:
        await stack.stop()


async def _wait_for_folded(
    stack: RunningStack, campaign_id: str, unsubscribes: int, bounces: int
) -> dict[str, int]:
    """The campaign's stats through the API, once every event posted to the edge shows."""
    api = stack.client()
    try:
        async with asyncio.timeout(120):
            while True:
                stats: dict[str, int] = (await api.campaign(campaign_id))["stats"]
                if stats["unsubscribed"] >= unsubscribes and stats["bounced"] >= bounces:
                    return stats
                await asyncio.sleep(0.2)  # polling a remote read model: nothing local to await
    finally:
        await api.close()
