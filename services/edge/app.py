"""The public edge: wiring only (routes, middleware, lifespan, uvicorn).

Everything the internet must reach lives here, apart from the admin API: unsubscribe
links and the preference centre, the subscribe form and confirmation links, open and click
tracking, and provider webhooks. It keeps no state and decides nothing from the database
(it reads two views for display and routing, see directory.py), verifies signed tokens and
webhook signatures, and publishes events to Kafka; any number of instances may run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from libs.common.kafka import EventProducer
from libs.common.logging import configure, get_logger
from libs.common.process import freeze_startup_objects
from libs.common.settings import Settings, get_settings
from libs.web.middleware import RequestContextMiddleware
from libs.web.problems import install_problem_handlers
from libs.web.security_headers import SecurityHeadersMiddleware
from libs.web.server import serve
from services.edge.broker import wait_for_topics
from services.edge.deps import EdgeResources
from services.edge.routes import ops, subscribe, tracking, unsubscribe, webhooks
from services.edge.webhook_policy import WebhookMisconfigured, webhook_policy

log = get_logger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    resources: EdgeResources = app.state.resources
    settings = resources.settings
    if not settings.kafka_bootstrap_servers:
        raise SystemExit(
            "KAFKA_BOOTSTRAP_SERVERS not set: run the whole stack with `mailfleet dev` or "
            "set it to your brokers (the edge needs no database)."
        )
    if resources.webhooks.warning:
        log.warning(resources.webhooks.warning)
    if not settings.secret_key:
        log.warning(
            "MAILFLEET_SECRET_KEY is not set: unsubscribe links answer 503, tracking links 404"
        )
    await wait_for_topics(settings)
    producer = EventProducer(settings)
    await producer.start()
    resources.producer = producer
    log.info("edge started")
    freeze_startup_objects()
    try:
        yield
    finally:
        await resources.hits.drain()
        await resources.directory.close()
        resources.producer = None
        await producer.stop()
        log.info("edge stopped")


def create_app(settings: Settings) -> FastAPI:
    try:
        policy = webhook_policy(settings)
    except WebhookMisconfigured as exc:
        raise SystemExit(str(exc)) from exc
    app = FastAPI(
        title="mailfleet edge",
        version="1",
        summary="The public part of mailfleet: unsubscribe links and provider webhooks.",
        description="Every error is an RFC 9457 `application/problem+json` document.",
        lifespan=_lifespan,
        # Nothing to browse on the public side; the document is in the repository's docs.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.resources = EdgeResources(settings=settings, webhooks=policy)
    install_problem_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        json_body_limit=webhooks.WEBHOOK_BODY_LIMIT,
        streaming_suffixes=(),
    )
    app.add_middleware(SecurityHeadersMiddleware)
    for module in (ops, unsubscribe, subscribe, webhooks, tracking):
        app.include_router(module.router)
    return app


def run() -> None:
    settings = get_settings()
    configure("edge", settings.log_level)
    serve(create_app(settings), settings.edge_host, settings.edge_port)
