"""Ops endpoints, problem+json for every error, request ids, body limits, OpenAPI."""

from __future__ import annotations

import uuid

import pytest

from libs.common.settings import Settings
from services.api.app import JSON_BODY_LIMIT, create_app
from services.api.tests.support import Api, running

PROBLEM = "application/problem+json"


async def test_healthz_readyz_need_no_key(api: Api) -> None:
    health = await api.client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "broker": True}


async def test_metrics_count_requests_by_route_template(api: Api) -> None:
    list_id = uuid.uuid4()
    await api.client.get(f"/api/v1/lists/{list_id}", headers=api.auth("viewer"))
    text = (await api.client.get("/metrics")).text
    assert 'route="/api/v1/lists/{list_id}"' in text
    assert str(list_id) not in text
    assert "mailfleet_api_requests_total" in text
    assert "mailfleet_api_request_duration_seconds_bucket" in text


async def test_docs_and_openapi(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = (await api.client.get("/openapi.json")).json()
    schedule = spec["paths"]["/api/v1/campaigns/{campaign_id}/schedule"]["post"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(schedule["responses"])
    assert PROBLEM in schedule["responses"]["409"]["content"]
    upload = spec["paths"]["/api/v1/lists/{list_id}/imports"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()


async def test_unknown_path_and_wrong_method_are_problems(api: Api) -> None:
    missing = await api.client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert missing.json()["instance"] == "/api/v1/nothing-here"
    wrong = await api.client.put("/healthz")
    assert wrong.status_code == 405 and wrong.headers["content-type"] == PROBLEM
    assert "PUT" in wrong.json()["detail"]


async def test_malformed_json_is_422_problem(api: Api) -> None:
    answer = await api.client.post(
        "/api/v1/lists",
        content=b"{not json",
        headers=api.auth("editor") | {"content-type": "application/json"},
    )
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM


async def test_request_id_is_kept_or_made(api: Api) -> None:
    given = await api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await api.client.get("/api/v1/lists")
    assert len(made.headers["x-request-id"]) == 32
    assert made.json()["request_id"] == made.headers["x-request-id"]
    hostile = await api.client.get("/healthz", headers={"X-Request-ID": "a" * 500})
    assert hostile.headers["x-request-id"] != "a" * 500


async def test_oversized_json_body_is_413(api: Api) -> None:
    answer = await api.client.post(
        "/api/v1/lists",
        content=b'{"name": "' + b"x" * (JSON_BODY_LIMIT + 10) + b'"}',
        headers=api.auth("editor") | {"content-type": "application/json"},
    )
    assert answer.status_code == 413 and answer.headers["content-type"] == PROBLEM


async def test_unhandled_error_is_500_problem_without_trace(api_settings: Settings) -> None:
    app = create_app(api_settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    async with running(app, raise_app_exceptions=False) as client:
        answer = await client.get("/boom")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == PROBLEM
    assert "secret internals" not in answer.text and "Traceback" not in answer.text
    assert answer.json()["request_id"] == answer.headers["x-request-id"]


async def test_lifespan_refuses_to_start_without_infrastructure() -> None:
    app = create_app(Settings(database_url="", kafka_bootstrap_servers=""))
    with pytest.raises(SystemExit, match="DATABASE_URL"):
        async with running(app):
            pass
