"""`/openapi.json` names every problem an operation can answer, as problem+json."""

from __future__ import annotations

from services.api.tests.support import Api

METHODS = ("get", "post", "put", "patch", "delete")


async def test_every_operation_documents_its_problems(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    checked = 0
    for path, item in spec["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation["responses"]
            expected = set()
            if operation.get("security"):
                expected |= {"401", "403", "429", "503"}
            if "requestBody" in operation:
                expected |= {"400", "413", "422"}
            if operation.get("parameters"):
                expected.add("422")
            assert expected <= set(responses), (method, path, sorted(responses))
            for code, response in responses.items():
                if code.startswith(("4", "5")) and path != "/readyz":
                    assert "application/problem+json" in response["content"], (method, path, code)
            checked += 1
    assert checked > 40
    assert (
        "/api/v1/templates" in spec["paths"]
        and "/api/v1/campaigns/{campaign_id}/test" in (spec["paths"])
    )


async def test_405_names_every_method_of_the_path(api: Api) -> None:
    answer = await api.client.put("/api/v1/lists", headers=api.auth("viewer"))
    assert answer.status_code == 405
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["allow"] == "GET, POST"
