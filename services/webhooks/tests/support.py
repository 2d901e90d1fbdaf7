"""Helpers of the webhooks tests: an HTTPS receiver that verifies every signature, and
endpoints written the way the API writes them."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import trustme
from aiohttp import web

from libs.webhooks.secret_box import seal
from libs.webhooks.signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    generate_secret,
    verify,
)


@dataclass
class Received:
    event_id: str
    event_type: str
    campaign_id: str | None
    status: int  # what the receiver answered
    body: dict[str, Any]


Answer = Callable[[dict[str, Any]], int]


@dataclass
class Receiver:
    """An HTTPS server with a certificate from a CA the test made. Every request is
    checked against the endpoint's secret; a bad signature is recorded and answered 401."""

    secrets: dict[str, str] = field(default_factory=dict)  # path -> secret
    answer: Answer = lambda body: 200  # noqa: E731
    received: list[Received] = field(default_factory=list)
    bad_signatures: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    # Requests to these paths wait for their event before being answered (a slow endpoint).
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        secret = self.secrets.get(request.path)
        try:
            if secret is None:
                raise SignatureError(f"no endpoint at {request.path}")
            verify(secret, raw, request.headers.get(SIGNATURE_HEADER, ""))
        except SignatureError as exc:
            self.bad_signatures.append(str(exc))
            self._changed()
            return web.Response(status=401)
        body = orjson.loads(raw)
        assert request.headers[EVENT_ID_HEADER] == body["id"]
        gate = self.gates.get(request.path)
        if gate is not None:
            await gate.wait()
        status = self.answer(body)
        self.received.append(Received(body["id"], body["type"], body["campaign_id"], status, body))
        self._changed()
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "https://example.com/"})
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def _changed(self) -> None:
        self.changed.set()

    def delivered(self, path_campaigns: set[str] | None = None) -> list[Received]:
        return [
            r
            for r in self.received
            if 200 <= r.status < 300 and (path_campaigns is None or r.campaign_id in path_campaigns)
        ]


@dataclass
class Tls:
    ca_file: Path
    server: ssl.SSLContext


def make_tls(tmp: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp / "webhook-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca_file, server)


async def start_receiver(receiver: Receiver, tls: Tls) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"https://127.0.0.1:{port}"
    return runner


async def add_endpoint(
    pool: asyncpg.Pool,
    secret_key: str,
    url: str,
    event_types: list[str],
    receiver: Receiver | None = None,
) -> uuid.UUID:
    """An endpoint as the API stores it (secret sealed); registers its secret with the
    receiver under the URL's path."""
    secret = generate_secret()
    endpoint_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO webhook_endpoints (url, event_types, secret_sealed) VALUES ($1, $2, $3)"
        " RETURNING id",
        url,
        event_types,
        seal(secret_key, secret),
    )
    if receiver is not None:
        path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
        receiver.secrets[path] = secret
    return endpoint_id


async def retire_endpoints(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> None:
    """Later tests re-read the topics from the start: keep their events off these."""
    await pool.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = ANY($1)", ids)


async def wait_for(
    condition: Callable[[], Awaitable[Any] | Any], timeout: float = 30.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


async def log_rows(pool: asyncpg.Pool, endpoint_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT event_id, event_type, order_key, status, attempts, last_status_code,"
        " last_error FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY seq",
        endpoint_id,
    )
    return [dict(r) for r in rows]
