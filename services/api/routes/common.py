"""Small pieces shared by the route modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from libs.web.problems import FieldError, ProblemError
from services.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, BadCursor

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=200, description="`next_cursor` of the previous page; omit for the first."),
]
DEFAULT_PAGE = DEFAULT_LIMIT


def not_found(what: str, ident: object) -> ProblemError:
    return ProblemError(404, f"no {what} with id {ident}", kind="not-found")


def bad_cursor(exc: BadCursor) -> ProblemError:
    return ProblemError(
        422,
        str(exc),
        kind="validation",
        errors=[FieldError(field="query.cursor", message=str(exc))],
    )
