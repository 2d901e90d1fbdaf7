"""Helpers for the edge's tests (importable from test modules, unlike conftest)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from services.api.tests.support import running
from services.edge.app import create_app
from services.edge.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER

WEBHOOK_PATH = "/webhooks/sendgrid"
PROBLEM = "application/problem+json"


@dataclass
class Edge:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    @property
    def producer(self) -> EventProducer:
        return self.app.state.resources.events  # type: ignore[no-any-return]


@asynccontextmanager
async def running_edge(settings: Settings, **overrides: Any) -> AsyncIterator[Edge]:
    configured = settings.model_copy(update=overrides)
    app = create_app(configured)
    async with running(app) as client:
        yield Edge(app, client, configured)


def public_key_b64(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    """The key as SendGrid's settings page shows it: base64 of the DER public key."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def signed(key: ec.EllipticCurvePrivateKey, body: bytes, at: float | None = None) -> dict[str, str]:
    """Headers as SendGrid sends them: ECDSA P-256/SHA-256 over timestamp + body."""
    timestamp = str(int(time.time() if at is None else at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: timestamp,
        "content-type": "application/json",
    }


def sendgrid_event(kind: str = "delivered", **fields: Any) -> dict[str, Any]:
    return {
        "email": "someone@example.com",
        "timestamp": 1_900_000_000,
        "event": kind,
        "sg_event_id": f"sg-{uuid.uuid4().hex}",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    } | fields
