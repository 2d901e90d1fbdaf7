"""Health, readiness and metrics of the edge (the Ingress does not route these paths)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.edge.broker import broker_ready
from services.edge.deps import Resources

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The broker is not reachable."}})
async def readyz(resources: Resources) -> JSONResponse:
    """Ready when the broker answers with the edge's topics (the edge needs nothing else)."""
    broker = resources.producer is not None and await broker_ready(resources.settings)
    return JSONResponse(
        {"status": "ready" if broker else "not ready", "checks": {"broker": broker}},
        status_code=200 if broker else 503,
    )


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
