"""Make `/openapi.json` name every problem an operation can answer.

Some problems come from layers around the routes rather than from the routes themselves:
authentication (401, 403, 429; 503 while the database is not connected yet), request
parsing (400, 422) and the body limit (413). They are added to the generated document
once, from what each operation declares (a security requirement, a body, parameters),
instead of being repeated on every route; FastAPI's default 422 (plain JSON) is replaced by
the problem+json document the API really sends.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from libs.web.problems import PROBLEM_MEDIA_TYPE, problem_description

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_AUTH_PROBLEMS = (401, 403, 429, 503)
_BODY_PROBLEMS = (400, 413, 422)
_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def problem_codes(operation: dict[str, Any]) -> set[int]:
    codes: set[int] = set()
    if operation.get("security"):
        codes.update(_AUTH_PROBLEMS)
    if "requestBody" in operation:
        codes.update(_BODY_PROBLEMS)
    if operation.get("parameters"):
        codes.add(422)
    return codes


def _problem(code: int) -> dict[str, Any]:
    return {
        "description": problem_description(code),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": dict(_PROBLEM_REF)}},
    }


def _is_fastapi_default_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def add_problem_responses(spec: dict[str, Any]) -> None:
    for path_item in spec.get("paths", {}).values():
        for method in _METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if "422" in responses and _is_fastapi_default_422(responses["422"]):
                responses["422"] = _problem(422)
            for code in sorted(problem_codes(operation)):
                responses.setdefault(str(code), _problem(code))


def document_problems(app: FastAPI) -> None:
    """Wrap `app.openapi` so that the document it builds (once) lists every problem."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_problem_responses(build())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
