"""The dispatcher tracks a campaign's links exactly when its `tracking` switch is on."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from libs.common.events import BatchRecipient
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.rendering import Content, build_outbox
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.tests.support import insert_content

POLICY = HeaderPolicy("https://m.example.com", "secret")
# Rendered per recipient (not a substitution template): one request per message.
RENDERED = "{% if true %}<p>Hi</p>{% endif %}"


async def _campaign(pool: asyncpg.Pool, tracking: bool) -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('news') RETURNING id")
    campaign: uuid.UUID = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " tracking) VALUES ('c', 's', 'h', 'news@example.com', $1, 'smtp', 'in_progress', $2)"
        " RETURNING id",
        list_id,
        tracking,
    )
    return campaign


async def test_the_switch_decides_rewriting(pool: asyncpg.Pool) -> None:
    repository = ContentRepository(pool)
    people = [BatchRecipient(recipient_id=1, email="a@example.org")]
    for tracking in (True, False):
        campaign = await _campaign(pool, tracking)
        snapshot = await insert_content(
            pool, campaign, html='<a href="https://a.example.org/">a</a>'
        )
        content = await repository.get(snapshot)
        assert content is not None and content.tracking is tracking
        outbox = build_outbox(content, campaign, "b", people, POLICY)
        html = outbox.templated.html if outbox.templated else outbox.individual[0].html
        assert ("https://m.example.com/o/" in html) is tracking
        assert ('href="https://a.example.org/"' in html) is not tracking


async def test_sendgrid_requests_switch_its_own_tracking_off_when_we_track() -> None:
    """Over HTTP to a stand-in for SendGrid's API that keeps each request's JSON."""
    bodies: list[dict[str, Any]] = []

    async def mail_send(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(status=202, headers={"X-Message-Id": uuid.uuid4().hex})

    app = web.Application()
    app.router.add_post("/v3/mail/send", mail_send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    people = [BatchRecipient(recipient_id=i, email=f"r{i}@example.org") for i in (1, 2)]
    campaign = uuid.uuid4()
    try:
        async with aiohttp.ClientSession() as session:
            provider = SendGridProvider(
                "sendgrid",
                f"http://127.0.0.1:{port}",
                "key",
                session,
                concurrency=1,
                limiter=RateLimiter(0),
                retry=RetryPolicy(max_attempts=1, initial_s=0.01, max_wait_s=0.01),
            )
            for tracking, html in ((True, "<p>Hi</p>"), (False, "<p>Hi</p>"), (True, RENDERED)):
                content = Content(
                    uuid.uuid4(), campaign, "S", html, None, "a@example.com", None,
                    tracking=tracking,
                )  # fmt: skip
                box = build_outbox(content, campaign, "b", people, POLICY)

                async def progress(_: Any) -> None:
                    return None

                outcomes = await provider.send(box, progress)
                assert {o.status for o in outcomes} == {"sent"}
    finally:
        await runner.cleanup()
    settings = [b.get("tracking_settings") for b in bodies]
    off = {
        "click_tracking": {"enable": False, "enable_text": False},
        "open_tracking": {"enable": False},
    }
    # One templated request, one untracked, then one request per rendered message.
    assert settings == [off, None, off, off]
