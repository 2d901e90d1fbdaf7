"""SendGrid's Event Webhook on the edge: signature checks, translation, publishing to
delivery.event, and (with the real tracker running) a webhook bounce ending up as a
suppression."""

from __future__ import annotations

import base64
import time
import uuid

import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import make_settings
from libs.common.events import DeliveryEvent
from services.api.tests.support import find_event
from services.edge.routes.webhooks import WEBHOOK_BODY_LIMIT
from services.edge.sendgrid_events import parse_batch, to_delivery_event, translate
from services.edge.tests.support import PROBLEM, Edge, public_key_b64, sendgrid_event, signed
from services.edge.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BadVerificationKey,
    SignatureRefused,
    WebhookVerifier,
)
from services.tracker.tests.support import new_campaign, running_tracker, wait_for

PATH = "/webhooks/sendgrid"


# ----- the pure parts -----


def test_verifier_accepts_sendgrid_signature_and_refuses_others(
    signing_key: ec.EllipticCurvePrivateKey,
) -> None:
    verifier = WebhookVerifier.from_key(public_key_b64(signing_key))
    body = b'[{"event":"open"}]'
    headers = signed(signing_key, body, at=1_000_000)
    signature, timestamp = headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
    verifier.check(body, signature, timestamp, now=1_000_000 + 599)
    refusals = {
        "tampered": (body + b" ", signature, timestamp, 1_000_000),
        "stale": (body, signature, timestamp, 1_000_000 + 601),
        "future": (body, signature, timestamp, 1_000_000 - 601),
        "unsigned": (body, None, None, 1_000_000),
        "garbage": (body, "not base64!", timestamp, 1_000_000),
        "not utf-8": (b"\xff" + body, signature, timestamp, 1_000_000),
        "bad timestamp": (body, signature, "yesterday", 1_000_000),
    }
    for case, (raw, sig, ts, now) in refusals.items():
        with pytest.raises(SignatureRefused):
            verifier.check(raw, sig, ts, now=now)
            pytest.fail(f"{case} was accepted")


def test_verification_key_must_be_a_p256_public_key() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert WebhookVerifier.from_key(pem).key == pem  # PEM armour is tolerated
    for bad in (
        "not a key",
        public_key_b64(rsa.generate_private_key(65537, 2048)),
        public_key_b64(ec.generate_private_key(ec.SECP384R1())),
    ):
        with pytest.raises(BadVerificationKey):
            WebhookVerifier.from_key(bad)


def test_sendgrid_events_become_delivery_events() -> None:
    campaign_id = uuid.uuid4()
    bounce = to_delivery_event(
        sendgrid_event(
            "bounce",
            campaign_id=str(campaign_id),
            recipient_id="42",
            type="bounce",
            reason="550 5.1.1 no such user",
            status="5.1.1",
            sg_machine_open=False,
            category=["news", "x\x00y"],
            ignored={"nested": True},
        )
    )
    assert (bounce.campaign_id, bounce.recipient_id, bounce.event) == (campaign_id, 42, "bounce")
    assert bounce.provider == "sendgrid" and bounce.provider_message_id is not None
    assert bounce.occurred_at.timestamp() == 1_900_000_000
    assert bounce.detail == {
        "type": "bounce",
        "reason": "550 5.1.1 no such user",
        "status": "5.1.1",
        "sg_machine_open": False,
        "category": ["news", "xy"],
    }
    nested = to_delivery_event(
        sendgrid_event("click", custom_args={"campaign_id": str(campaign_id), "recipient_id": 7})
    )
    assert (nested.campaign_id, nested.recipient_id) == (campaign_id, 7)
    foreign = to_delivery_event(sendgrid_event("open"))
    assert foreign.campaign_id is None and foreign.recipient_id is None

    batch = [
        sendgrid_event(),
        "not an object",
        sendgrid_event(sg_event_id=None),
        sendgrid_event(timestamp="yesterday"),
        sendgrid_event(campaign_id="spring-sale"),
        sendgrid_event(recipient_id="r-1"),
        sendgrid_event(email=""),
        sendgrid_event("group_resubscribe"),
    ]
    result = translate(batch)
    assert result.received == 8 and len(result.events) == 1
    assert [(s.index, s.kind) for s in result.skipped] == [
        (1, "malformed"),
        (2, "malformed"),
        (3, "malformed"),
        (4, "malformed"),
        (5, "malformed"),
        (6, "malformed"),
        (7, "unsupported"),
    ]
    assert len(parse_batch(b'{"event": "open"}')) == 1
    with pytest.raises(ValueError):
        parse_batch(b'"text"')


# ----- over HTTP, with the broker -----


async def test_signed_post_is_published_to_delivery_event(
    signed_edge: Edge, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    campaign_id = uuid.uuid4()
    bounce = sendgrid_event(
        "bounce",
        campaign_id=str(campaign_id),
        recipient_id="3",
        type="bounce",
        reason="550 no such user",
    )
    click = sendgrid_event("click", url="https://example.com/a", campaign_id=str(campaign_id))
    body = orjson.dumps([bounce, {"event": "open"}, click, sendgrid_event("group_resubscribe")])
    answer = await signed_edge.client.post(PATH, content=body, headers=signed(signing_key, body))
    assert answer.status_code == 200, answer.text
    receipt = answer.json()
    assert (receipt["received"], receipt["published"], receipt["skipped"]) == (4, 2, 2)
    assert [(p["index"], p["kind"]) for p in receipt["problems"]] == [
        (1, "malformed"),
        (3, "unsupported"),
    ]

    key, value = await find_event(
        signed_edge.settings, "delivery.event", lambda v: v["event_id"] == bounce["sg_event_id"]
    )
    published = DeliveryEvent.model_validate(value)
    assert key == str(campaign_id).encode()  # all of a campaign's events meet in one tracker
    assert (published.campaign_id, published.recipient_id) == (campaign_id, 3)
    assert published.provider_message_id == bounce["sg_message_id"]
    assert published.detail == {"type": "bounce", "reason": "550 no such user"}
    _, clicked = await find_event(
        signed_edge.settings, "delivery.event", lambda v: v["event_id"] == click["sg_event_id"]
    )
    assert clicked["detail"]["url"] == "https://example.com/a"


@pytest.mark.parametrize("case", ["tampered", "wrong key", "stale", "unsigned", "garbage"])
async def test_bad_signatures_are_refused(
    signed_edge: Edge, signing_key: ec.EllipticCurvePrivateKey, case: str
) -> None:
    body = orjson.dumps([sendgrid_event()])
    headers = signed(signing_key, body)
    if case == "tampered":
        body = body.replace(b"someone@", b"other@")
    elif case == "wrong key":
        headers = signed(ec.generate_private_key(ec.SECP256R1()), body)
    elif case == "stale":
        headers = signed(signing_key, body, at=time.time() - 11 * 60)
    elif case == "unsigned":
        headers = {"content-type": "application/json"}
    else:
        headers[SIGNATURE_HEADER] = base64.b64encode(b"x" * 70).decode()
    answer = await signed_edge.client.post(PATH, content=body, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["type"].endswith("/bad-signature")


async def test_unsigned_posts_are_accepted_only_when_allowed(edge: Edge) -> None:
    assert not edge.settings.sendgrid_webhook_verification_key
    assert edge.settings.allow_unsigned_webhooks
    body = orjson.dumps([sendgrid_event("open", campaign_id=str(uuid.uuid4()))])
    answer = await edge.client.post(PATH, content=body)
    assert answer.status_code == 200 and answer.json()["published"] == 1
    legacy = await edge.client.post("/api/v1/webhooks/sendgrid", content=body)
    assert legacy.status_code == 200


async def test_bodies_that_are_not_batches_are_refused(edge: Edge) -> None:
    not_json = await edge.client.post(PATH, content=b"[{")
    assert not_json.status_code == 400 and not_json.headers["content-type"] == PROBLEM
    too_big = await edge.client.post(PATH, content=b" " * (WEBHOOK_BODY_LIMIT + 1))
    assert too_big.status_code == 413 and too_big.headers["content-type"] == PROBLEM


async def test_webhook_bounce_becomes_a_suppression(
    signed_edge: Edge,
    signing_key: ec.EllipticCurvePrivateKey,
    pool: asyncpg.Pool,
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    """End to end with the real tracker: a hard bounce suppresses the address and counts."""
    campaign_id = await new_campaign(pool)
    email = f"gone-{uuid.uuid4().hex[:12]}@example.com"
    await pool.execute(
        "INSERT INTO campaign_stats (campaign_id, audience_total, sent) VALUES ($1, 1, 1)",
        campaign_id,
    )
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, recipient_id, email, status, message_id, batch_id)"
        " VALUES ($1, 1, $2, 'sent', 'm-1', $3)",
        campaign_id,
        email,
        f"{campaign_id}:0",
    )
    body = orjson.dumps(
        [
            sendgrid_event(
                "bounce",
                email=email,
                campaign_id=str(campaign_id),
                recipient_id="1",
                type="bounce",
            )
        ]
    )
    answer = await signed_edge.client.post(PATH, content=body, headers=signed(signing_key, body))
    assert answer.status_code == 200 and answer.json()["published"] == 1

    settings = make_settings(database_url, kafka_bootstrap)
    producer = signed_edge.app.state.resources.events
    async with running_tracker(settings, pool, producer):
        reason = await wait_for(
            lambda: pool.fetchval("SELECT reason FROM suppressions WHERE email = $1", email),
            what="the bounced address to be suppressed",
        )
    assert reason == "bounce"
    campaign = await pool.fetchrow(
        "SELECT bounced FROM campaign_stats WHERE campaign_id = $1", campaign_id
    )
    assert campaign["bounced"] == 1
