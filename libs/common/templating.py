"""Campaign templates: Jinja2 in its sandbox, checked when a campaign is created or started.

The API validates with `check_template` (an error names the line), the dispatcher renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape


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


@lru_cache(maxsize=256)
def compile_template(source: str, *, html: bool) -> Template:
    # Campaign content is immutable once sending starts: compile each part once, not per mail.
    return environment(autoescape=html).from_string(source)


def render(source: str, context: dict[str, Any], *, html: bool) -> str:
    return compile_template(source, html=html).render(context)


@dataclass(frozen=True)
class Placeholder:
    """A `{{ name }}` in a template: the only construct a substitution-only template has."""

    name: str


TemplatePiece = str | Placeholder


def simple_template_pieces(source: str) -> list[TemplatePiece] | None:
    """Split a template made only of text and `{{ name }}` placeholders into its pieces.

    Returns None for anything richer (filters, attributes, control blocks, globals): such a
    template must be rendered per recipient. A simple one can be sent as one shared body with
    per-recipient substitutions, which is what makes large SendGrid batches one request.
    """
    env = environment(False)
    template = env.parse(source)
    pieces: list[TemplatePiece] = []
    for statement in template.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces.append(node.data)
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                if node.name in env.globals:
                    return None
                pieces.append(Placeholder(node.name))
            else:
                return None
    return pieces


def format_value(value: Any, *, html: bool) -> str:
    """What `{{ name }}` prints for `value`, exactly as `render` would (missing = empty)."""
    return str(escape(value)) if html else str(value)


__all__ = [
    "Placeholder",
    "TemplatePiece",
    "TemplateProblem",
    "check_template",
    "compile_template",
    "format_value",
    "merge_fields_used",
    "render",
    "simple_template_pieces",
]
