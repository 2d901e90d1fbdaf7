"""Campaign templates: Jinja2 in its sandbox, checked when a campaign is created or started.

The API validates with `check_template` (an error names the line) and `costly_problem` (a
template too costly to render is refused), the dispatcher renders. Every render is bounded
in time and size (see `template_sandbox`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError, meta, nodes
from markupsafe import escape

from libs.common.settings import Settings
from libs.common.template_sandbox import (
    BoundedSandbox,
    RenderBudget,
    RenderLimits,
    TemplateTooCostly,
    budget_active,
)


@lru_cache(maxsize=2)
def environment(autoescape: bool) -> BoundedSandbox:
    # Sandboxed: templates come from users and must not reach Python internals, nor spend
    # unbounded time or memory. Undefined merge fields render empty rather than failing a send.
    return BoundedSandbox(autoescape=autoescape, keep_trailing_newline=True)


def render_limits(settings: Settings) -> RenderLimits:
    return RenderLimits.from_settings(settings.render_timeout_ms, settings.render_max_bytes)


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


def render(
    source: str, context: dict[str, Any], *, html: bool, budget: RenderBudget | None = None
) -> str:
    """`source` rendered with `context`. Charges `budget` (one per message: its parts share
    it), or a budget of the default limits; raises `TemplateTooCostly` past it."""
    template = compile_template(source, html=html)  # compiling is not charged
    budget = budget or RenderBudget(RenderLimits())
    with budget_active(budget):
        # The sandbox's `concat` measures the output before joining it.
        output = template.render(context)
        budget.add_output(len(output))
    return output


_PARTS = ("subject", "html", "text")


def costly_problem(parts: dict[str, str | None], limits: RenderLimits) -> TemplateProblem | None:
    """Render the given parts with no merge fields, as one message; say which part goes past
    `limits`, or None. Other failures are not problems here: a template may need its merge
    fields (`{{ price * 2 }}`), and then fails only for a recipient without them."""
    budget = RenderBudget(limits)
    for part in _PARTS:
        source = parts.get(part)
        if source is None or check_template(part, source) is not None:
            continue
        try:
            render(source, {}, html=part == "html", budget=budget)
        except TemplateTooCostly as exc:
            return TemplateProblem(part, None, str(exc))
        except Exception:  # noqa: S112 - user code may fail in any way without its fields
            continue
    return None


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
    "RenderBudget",
    "RenderLimits",
    "TemplateTooCostly",
    "costly_problem",
    "render_limits",
    "TemplatePiece",
    "TemplateProblem",
    "check_template",
    "compile_template",
    "format_value",
    "merge_fields_used",
    "render",
    "simple_template_pieces",
]
