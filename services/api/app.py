"""The REST API service: wiring only (routes, middleware, lifespan, uvicorn)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

from fastapi import FastAPI

from libs.common import db
from libs.common.broker_epoch import BrokerEpoch
from libs.common.kafka import EventProducer, wait_for_broker
from libs.common.logging import configure, get_logger
from libs.common.process import freeze_startup_objects
from libs.common.settings import Settings, get_settings
from libs.web.middleware import RequestContextMiddleware
from libs.web.problems import install_problem_handlers
from libs.web.security_headers import (
    CONSOLE_HTML_POLICY,
    DOCS_HTML_POLICY,
    SecurityHeadersMiddleware,
)
from libs.web.server import serve
from services.api.bootstrap import ensure_admin_key, operator_terminal, show_generated_key
from services.api.console.bootstrap import ensure_first_admin
from services.api.console.install import install_console
from services.api.deps import ApiResources
from services.api.openapi_docs import document_problems
from services.api.ratelimit import FailureLimiter
from services.api.routes import (
    ab_tests,
    api_keys,
    audit,
    automations,
    campaign_control,
    campaign_test_sends,
    campaigns,
    import_rejections,
    lists,
    messages,
    ops,
    people,
    recipients,
    segments,
    senders,
    suppressions,
    templates,
    webhooks,
)

log = get_logger(__name__)

# JSON bodies (campaign HTML included) stay under this; uploads have their own limit.
JSON_BODY_LIMIT = 4 * 1024 * 1024
AUTH_FAILURES_PER_MINUTE = 30


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    resources: ApiResources = app.state.resources
    settings = resources.settings
    settings.require_infrastructure()
    await db.migrate_when_ready(settings.database_url)
    pool = await db.create_pool_when_ready(settings.database_url, max_size=settings.db_pool_size)
    producer: EventProducer | None = None
    try:
        await wait_for_broker(settings, BrokerEpoch(pool))
        producer = EventProducer(settings)
        await producer.start()
        terminal = resources.terminal
        generated = await ensure_admin_key(
            pool, settings.bootstrap_api_key, may_generate=terminal is not None
        )
        if generated and terminal is not None:
            show_generated_key(generated, terminal)
            # The key itself never goes into a log line.
            log.warning("generated an admin API key; shown on the terminal only")
        await ensure_first_admin(pool, settings.admin_email, settings.admin_password)
        resources.pool, resources.producer = pool, producer
        log.info("api started")
        freeze_startup_objects()
        yield
    finally:
        resources.pool, resources.producer = None, None
        if producer is not None:
            await producer.stop()
        await pool.close()
        log.info("api stopped")


def create_app(
    settings: Settings,
    *,
    auth_failures_per_minute: int = AUTH_FAILURES_PER_MINUTE,
    terminal: TextIO | None = None,
) -> FastAPI:
    """`terminal`: where a generated admin key is shown (default: stderr if it is a tty)."""
    app = FastAPI(
        title="mailfleet",
        version="1",
        summary="Bulk email campaigns: lists, imports, campaigns, scheduling.",
        description="Authenticate with `Authorization: Bearer <api key>`. "
        "Every error is an RFC 9457 `application/problem+json` document.",
        lifespan=_lifespan,
    )
    app.state.resources = ApiResources(
        settings=settings,
        auth_failures=FailureLimiter(auth_failures_per_minute, 60.0),
        terminal=terminal if terminal is not None else operator_terminal(),
    )
    install_problem_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        json_body_limit=JSON_BODY_LIMIT,
        streaming_suffixes=("/imports",),
    )
    # Outermost, so that problems answered by the layers inside carry the headers too.
    app.add_middleware(
        SecurityHeadersMiddleware,
        html_policies={
            app.docs_url or "/docs": DOCS_HTML_POLICY,
            app.redoc_url or "/redoc": DOCS_HTML_POLICY,
            "/console": CONSOLE_HTML_POLICY,
        },
    )
    for module in (ops, lists, campaigns, campaign_control, ab_tests, api_keys):
        app.include_router(module.router)
    for module in (suppressions, templates, recipients, campaign_test_sends):
        app.include_router(module.router)
    app.include_router(import_rejections.router)
    install_console(app, settings)
    app.include_router(audit.router)
    app.include_router(senders.router)
    app.include_router(messages.router)
    app.include_router(segments.router)
    app.include_router(people.router)
    app.include_router(webhooks.router)
    app.include_router(automations.router)
    document_problems(app)
    return app


def run() -> None:
    settings = get_settings()
    configure("api", settings.log_level)
    serve(create_app(settings), settings.api_host, settings.api_port)
