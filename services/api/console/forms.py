"""Form errors shown next to their fields. Pure."""

from __future__ import annotations

from pydantic import ValidationError

from libs.web.problems import ProblemError


def _message(text: str, line: int | None) -> str:
    return f"line {line}: {text}" if line else text


def field_errors_from_validation(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "form"
        message = str(error["msg"]).removeprefix("Value error, ")
        errors.setdefault(field, message)
    return errors


def field_errors_from_problem(exc: ProblemError) -> dict[str, str]:
    """`body.html` → `html`; a template error keeps its line number."""
    if not exc.errors:
        return {"form": exc.detail}
    errors: dict[str, str] = {}
    for error in exc.errors:
        field = error.field.removeprefix("body.")
        errors.setdefault(field, _message(error.message, error.line))
    return errors
