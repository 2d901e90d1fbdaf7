"""Health, readiness and metrics: unauthenticated, for orchestrators and Prometheus."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from libs.common import db
from libs.common.broker_epoch import BrokerEpoch
from libs.common.kafka import ensure_topics
from services.api.deps import Resources

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "The database or the broker is not reachable."}},
)
async def readyz(resources: Resources) -> JSONResponse:
    """Ready when the database and the broker answer."""
    database = resources.pool is not None and await db.ping(resources.pool)
    try:
        epoch = BrokerEpoch(resources.pool) if resources.pool is not None else None
        await asyncio.wait_for(ensure_topics(resources.settings, epoch), 3)
        broker = True
    except Exception:  # any client error means "not reachable"
        broker = False
    ok = database and broker
    return JSONResponse(
        {
            "status": "ready" if ok else "not ready",
            "checks": {"database": database, "broker": broker},
        },
        status_code=200 if ok else 503,
    )


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
