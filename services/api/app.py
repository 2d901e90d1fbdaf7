"""The REST API service: wiring only (routes, middleware, lifespan, uvicorn)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from libs.common import db
from libs.common.broker_epoch import BrokerEpoch
from libs.common.kafka import EventProducer, wait_for_broker
from libs.common.logging import configure, get_logger
from libs.common.settings import Settings, get_settings
from services.api.bootstrap import ensure_admin_key
from services.api.deps import ApiResources
from services.api.middleware import RequestContextMiddleware
from services.api.openapi_docs import document_problems
from services.api.problems import install_problem_handlers
from services.api.ratelimit import FailureLimiter
from services.api.routes import (
    api_keys,
    campaign_control,
    campaign_test_sends,
    campaigns,
    import_rejections,
    lists,
    ops,
    recipients,
    senders,
    suppressions,
    templates,
    unsubscribe,
    webhooks,
)

log = get_logger(__name__)

# JSON bodies (campaign HTML included) stay under this; uploads have their own limit.
JSON_BODY_LIMIT = 4 * 1024 * 1024
AUTH_FAILURES_PER_MINUTE = 30


def _announce(key: str) -> None:
    log.warning("generated admin API key; it is shown only now", api_key=key)
    print(f"\nmailfleet admin API key (shown once): {key}\n", flush=True)  # noqa: T201


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    resources: ApiResources = app.state.resources
    settings = resources.settings
    settings.require_infrastructure()
    await db.migrate(settings.database_url)
    pool = await db.create_pool(settings.database_url, max_size=settings.db_pool_size)
    producer: EventProducer | None = None
    try:
        await wait_for_broker(settings, BrokerEpoch(pool))
        producer = EventProducer(settings)
        await producer.start()
        generated = await ensure_admin_key(pool, settings.bootstrap_api_key)
        if generated:
            _announce(generated)
        resources.pool, resources.producer = pool, producer
        log.info("api started")
        yield
    finally:
        resources.pool, resources.producer = None, None
        if producer is not None:
            await producer.stop()
        await pool.close()
        log.info("api stopped")


def create_app(
    settings: Settings, *, auth_failures_per_minute: int = AUTH_FAILURES_PER_MINUTE
) -> FastAPI:
    app = FastAPI(
        title="mailfleet",
        version="1",
        summary="Bulk email campaigns: lists, imports, campaigns, scheduling.",
        description="Authenticate with `Authorization: Bearer <api key>`. "
        "Every error is an RFC 9457 `application/problem+json` document.",
        lifespan=_lifespan,
    )
    app.state.resources = ApiResources(
        settings=settings, auth_failures=FailureLimiter(auth_failures_per_minute, 60.0)
    )
    install_problem_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        json_body_limit=JSON_BODY_LIMIT,
        streaming_suffixes=("/imports",),
    )
    for module in (ops, lists, campaigns, campaign_control, api_keys, unsubscribe):
        app.include_router(module.router)
    for module in (suppressions, webhooks, templates, recipients, campaign_test_sends):
        app.include_router(module.router)
    app.include_router(import_rejections.router)
    app.include_router(senders.router)
    document_problems(app)
    return app


def run() -> None:
    import uvicorn

    settings = get_settings()
    configure("api", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )
