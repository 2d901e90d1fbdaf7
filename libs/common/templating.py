"""Campaign templates: Jinja2 in its sandbox, checked when a campaign is created or started.

The API validates with `check_template` (an error names the line), the dispatcher renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


@lru_cache(maxsize=2)
def environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    # Sandboxed: templates come from users and must not reach Python internals.
    # Undefined merge fields render empty rather than failing a send.
    return ImmutableSandboxedEnvironment(autoescape=autoescape, keep_trailing_newline=True)


@dataclass(frozen=True)
class TemplateProblem:
    part: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f" line {self.line}" if self.line else ""
        return f"{self.part}{where}: {self.message}"


def check_template(part: str, source: str) -> TemplateProblem | None:
    """Parse `source`; return what is wrong with it, or None."""
    try:
        environment(autoescape=part == "html").parse(source)
    except TemplateSyntaxError as exc:
        return TemplateProblem(part, exc.lineno, exc.message or "syntax error")
    return None


def merge_fields_used(source: str) -> set[str]:
    return set(meta.find_undeclared_variables(environment(False).parse(source)))


def render(source: str, context: dict[str, Any], *, html: bool) -> str:
    return environment(autoescape=html).from_string(source).render(context)


__all__ = ["TemplateProblem", "check_template", "merge_fields_used", "render"]
