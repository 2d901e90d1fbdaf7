"""Outbound webhooks through the whole system: an admin registers an HTTPS endpoint over the
API; a campaign runs (scheduler, dispatcher, tracker as their own processes) and a signed
SendGrid bounce reaches the edge; the webhooks service delivers the campaign's status
changes and the bounce, each once, signed, in order for the campaign."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from libs.common.settings import Settings
from services.edge.tests.support import WEBHOOK_PATH, public_key_b64, sendgrid_event, signed
from services.webhooks.tests.support import Receiver, Tls, make_tls, start_receiver, wait_for
from tests.e2e.harness import RunningStack, plain_campaign, start_stack

SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("webhooks-e2e-tls"))


@pytest.fixture(scope="module")
async def stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, tls: Tls
) -> AsyncIterator[RunningStack]:
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("webhooks-e2e-logs"),
        env={
            "SENDGRID_WEBHOOK_VERIFICATION_KEY": public_key_b64(SENDGRID_KEY),
            "MAILFLEET_WEBHOOK_CA_FILE": str(tls.ca_file),
            "MAILFLEET_WEBHOOK_ALLOWED_TARGETS": "127.0.0.1/32",
            "MAILFLEET_WEBHOOK_POLL_S": "0.05",
        },
        extra_children=["webhooks"],
    )
    yield running
    await running.stop()


async def test_campaign_status_and_bounce_reach_a_signed_https_endpoint(
    stack: RunningStack, tls: Tls
) -> None:
    receiver = Receiver()
    runner = await start_receiver(receiver, tls)
    api = stack.client()
    try:
        # Over the API, as an admin would: 127.0.0.1 is allowed by this stack's settings.
        created = await api._json(  # noqa: SLF001
            "POST",
            "/webhooks",
            201,
            json={
                "url": f"{receiver.url}/e2e",
                "event_types": ["campaign.status", "delivery.bounce"],
            },
        )
        receiver.secrets["/e2e"] = created["secret"]
        campaign_id = await plain_campaign(api, "webhookse2e", 30)
        await api.schedule(campaign_id)
        assert (await api.wait_campaign(campaign_id, timeout=180))["status"] == "completed"
        event = sendgrid_event(
            "bounce",
            email="p0@webhookse2e.example.com",
            type="bounce",
            reason="550 5.1.1 no such user",
            campaign_id=campaign_id,
            recipient_id="1",
            timestamp=int(time.time()),
        )
        body = orjson.dumps([event])
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as edge:
            answer = await edge.post(WEBHOOK_PATH, content=body, headers=signed(SENDGRID_KEY, body))
        assert answer.status_code == 200, answer.text

        def mine() -> list[str]:
            return [r.event_type for r in receiver.delivered({campaign_id})]

        await wait_for(
            lambda: "delivery.bounce" in mine() and "campaign.status" in mine(),
            timeout=90,
            what="the campaign's status and its bounce",
        )
        assert receiver.bad_signatures == []
        delivered = receiver.delivered({campaign_id})
        assert len({r.event_id for r in delivered}) == len(delivered)  # none twice
        statuses = [
            r.body["data"]["status"] for r in delivered if r.event_type == "campaign.status"
        ]
        assert statuses[-1] == "completed"
        bounce = next(r for r in delivered if r.event_type == "delivery.bounce")
        assert bounce.body["data"]["email"] == "p0@webhookse2e.example.com"
        assert bounce.body["data"]["reason"] == "550 5.1.1 no such user"

        # The receiver answers before the sender records the delivery: wait for that.
        async def all_logged() -> dict[str, Any] | None:
            log: dict[str, Any] = await api._json(  # noqa: SLF001
                "GET", f"/webhooks/{created['id']}/deliveries", 200
            )
            return log if {d["status"] for d in log["items"]} == {"delivered"} else None

        log = await wait_for(all_logged, timeout=30, what="every delivery logged as delivered")
        assert {d["event_id"] for d in log["items"]} >= {r.event_id for r in delivered}
    finally:
        await api.close()
        await runner.cleanup()
