"""Webhooks refuse unsigned posts (issue 12, item 3): with a verification key, an
unsigned or tampered post is refused; without one, every post is refused unless
MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS is set outside production, which is warned about."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from libs.common.settings import Settings
from services.edge.app import create_app
from services.edge.tests.support import (
    PROBLEM,
    WEBHOOK_PATH,
    public_key_b64,
    running_edge,
    sendgrid_event,
    signed,
)
from services.edge.webhook_policy import UNSIGNED_WARNING, webhook_policy

# The attack: one post suppresses an address for good.
FORGED = orjson.dumps([sendgrid_event("spamreport", email="ceo@client.example")])


async def test_unsigned_and_tampered_posts_are_refused_with_a_key(
    settings: Settings, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    key = public_key_b64(signing_key)
    async with running_edge(settings, sendgrid_webhook_verification_key=key) as edge:
        unsigned = await edge.client.post(WEBHOOK_PATH, content=FORGED)
        headers = signed(signing_key, FORGED)
        tampered = await edge.client.post(
            WEBHOOK_PATH, content=FORGED.replace(b"ceo@", b"cfo@"), headers=headers
        )
        genuine = await edge.client.post(WEBHOOK_PATH, content=FORGED, headers=headers)
    for refused in (unsigned, tampered):
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["type"].endswith("/bad-signature")
    assert genuine.status_code == 200 and genuine.json()["published"] == 1


async def test_without_a_key_every_post_is_refused_by_default(settings: Settings) -> None:
    """The default before this change accepted it: no key meant no check at all."""
    assert not Settings().allow_unsigned_webhooks  # the default refuses
    async with running_edge(settings, sendgrid_webhook_verification_key="") as edge:
        answer = await edge.client.post(WEBHOOK_PATH, content=FORGED)
    # 503, so that SendGrid keeps retrying until the key is configured: nothing is lost.
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"].endswith("/misconfigured")
    assert "SENDGRID_WEBHOOK_VERIFICATION_KEY" in answer.json()["detail"]


async def test_unsigned_posts_only_when_allowed_outside_production(settings: Settings) -> None:
    allowed = settings.model_copy(update={"allow_unsigned_webhooks": True})
    policy = webhook_policy(allowed)
    assert policy.accept_unsigned and policy.warning == UNSIGNED_WARNING
    async with running_edge(allowed) as edge:
        answer = await edge.client.post(WEBHOOK_PATH, content=FORGED)
    assert answer.status_code == 200

    production = allowed.model_copy(update={"environment": "production"})
    with pytest.raises(SystemExit, match="MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS"):
        create_app(production)


def test_an_unusable_key_stops_the_edge_at_start(settings: Settings) -> None:
    with pytest.raises(SystemExit, match="SENDGRID_WEBHOOK_VERIFICATION_KEY"):
        create_app(settings.model_copy(update={"sendgrid_webhook_verification_key": "not a key"}))
