"""The template sandbox's bounds (issue 11, item 7): a user template cannot run for long,
nor build a huge value, and ordinary templates render as before."""

from __future__ import annotations

import time
from typing import Any

import pytest

from libs.common.template_sandbox import RenderBudget, RenderLimits, weight
from libs.common.templating import TemplateTooCostly, costly_problem, render

# Each of these ran for minutes or allocated gigabytes before the bounds (never run them
# against an unbounded sandbox).
RUNAWAYS = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "range": "{% for i in range(10**9) %}x{% endfor %}",
    "string times": "{{ 'x' * 10**9 }}",
    "times string": "{{ 10**9 * 'x' }}",
    "list times": "{{ ['abcdefgh'] * 10**8 }}",
    "list of big strings": "{% set s = 'x' * 100000 %}{{ [s] * 1000 }}",
    "power": "{{ 9 ** 999999999 }}",
    "int squaring": "{% set n = 10 ** 10000 %}{{ (n * n * n * n * n * n * n) > 1 }}",
    "percent width": "{{ '%999999999d' % 1 }}",
    "percent star": "{{ '%*d' % (999999999, 1) }}",
    "format method": "{{ '{:>999999999}'.format(1) }}",
    "format repeats": "{% set s = 'x' * 100000 %}{{ ('{0}' * 100).format(s) }}",
    "format filter": "{{ '%999999999s'|format('x') }}",
    "center filter": "{{ 'x'|center(999999999) }}",
    "center method": "{{ 'x'.center(999999999) }}",
    "ljust method": "{{ 'x'.ljust(999999999) }}",
    "indent": "{{ ('\n' * 100000)|indent(100000) }}",
    "wordwrap": "{{ ('x' * 100000)|wordwrap(1, wrapstring='y' * 100000) }}",
    "replace filter": "{{ ('x' * 100000)|replace('', 'y' * 100000) }}",
    "replace method": "{{ ('x' * 100000).replace('x', 'y' * 100000) }}",
    "join of a range": "{{ range(100000)|join('y' * 100000) }}",
    "join method": "{{ ('y' * 100000).join(range(100000)|map('string')) }}",
    "join repeated": "{% set s = 'x' * 100000 %}{{ ([s] * 100)|join }}",
    "concat repeated": "{% set s = 'x' * 1500000 %}{{ s ~ s ~ s ~ s }}",
    "plus": "{% set s = 'x' * 1500000 %}{{ s + s }}",
    "doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "macro output": (
        "{% macro m() %}{% for i in range(100000) %}{{ caller() }}{% endfor %}{% endmacro %}"
        "{% call m() %}" + "x" * 1000 + "{% endcall %}"
    ),
    "output": "{% for i in range(100000) %}" + "x" * 1000 + "{% endfor %}",
    "recursive macro": "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "expandtabs": "{{ ('\t' * 100000).expandtabs(100000) }}",
    "to_bytes": "{{ (1).to_bytes(999999999, 'big') }}",
    "sum of lists": "{{ ([[1]] * 100000)|sum(start=[]) }}",
    "lipsum": "{{ lipsum(100000, max=100000) }}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_a_runaway_template_is_refused_quickly(source: str) -> None:
    started = time.monotonic()
    with pytest.raises((TemplateTooCostly, RecursionError)) as refused:
        render(source, {}, html=True)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert str(refused.value)


def test_the_reason_names_the_limit() -> None:
    with pytest.raises(
        TemplateTooCostly, match=r"longer than 100 ms \(MAILFLEET_RENDER_TIMEOUT_MS"
    ):
        render(RUNAWAYS["nested loops"], {}, html=False)
    with pytest.raises(TemplateTooCostly, match=r"MAILFLEET_RENDER_MAX_BYTES"):
        render(RUNAWAYS["string times"], {}, html=False)
    with pytest.raises(TemplateTooCostly, match=r"range\(\) of 1,000,000,000 numbers"):
        render(RUNAWAYS["range"], {}, html=False)


def test_limits_are_per_message_and_configurable() -> None:
    limits = RenderLimits(time_s=5.0, max_bytes=10_000)
    assert len(render("{{ 'x' * 10000 }}", {}, html=False, budget=RenderBudget(limits))) == 10000
    with pytest.raises(TemplateTooCostly):
        render("{{ 'x' * 10001 }}", {}, html=False, budget=RenderBudget(limits))
    # Parts of one message share its budget.
    shared = RenderBudget(limits)
    render("{{ 'x' * 6000 }}", {}, html=False, budget=shared)
    with pytest.raises(TemplateTooCostly, match="the message"):
        render("{% for i in range(6) %}{{ 'y' * 1000 }}{% endfor %}", {}, html=True, budget=shared)


def test_compiling_a_large_template_is_not_charged() -> None:
    source = "".join(f"<p>{{{{ f{i} }}}} {{% if a{i} %}}x{{% endif %}}</p>" for i in range(400))
    budget = RenderBudget(RenderLimits(time_s=0.05))
    assert render(source, {"f1": "one"}, html=True, budget=budget).startswith("<p> </p><p>one ")


ORDINARY: list[tuple[str, dict[str, Any], bool, str]] = [
    ("Hi {{ name }}", {"name": "<Ada>"}, True, "Hi &lt;Ada&gt;"),
    ("{{ '<b>'|safe ~ name }}", {"name": "<i>"}, True, "<b>&lt;i&gt;"),
    ("{{ 'a' ~ 1 ~ none }}", {}, False, "a1None"),
    (
        "{% for x in items %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}"
        "{% endfor %}",
        {"items": ["a", "b", "c"]},
        False,
        "1/3,2/3,3/3",
    ),
    ("{% for x in [] %}x{% else %}none{% endfor %}", {}, False, "none"),
    ("{% for x in range(5) if x is odd %}{{ x }}{% endfor %}", {}, False, "13"),
    (
        "{{ range(3)|list|join('-') }} {{ items|join(', ') }}",
        {"items": [1, 2]},
        False,
        "0-1-2 1, 2",
    ),
    ("{{ '%05.1f|%s' % (3.14159, 'x') }}", {}, False, "003.1|x"),
    ("{{ '{}-{name}'.format(1, name='n') }}", {}, False, "1-n"),
    ("{{ '%s and %s'|format('a', 'b') }}", {}, False, "a and b"),
    (
        "{{ 'ab'|center(6) }}|{{ 'x' * 3 }}|{{ [1] * 2 }}|{{ 2 ** 10 }}",
        {},
        False,
        "  ab  |xxx|[1, 1]|1024",
    ),
    ("{{ 'a-b'|replace('-', '+') }} {{ 'a\nb'|indent(2) }}", {}, False, "a+b a\n  b"),
    ("{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}{{ m(2) }}", {}, True, "<1><2>"),
    (
        "{% macro m() %}[{{ caller() }}]{% endmacro %}{% call m() %}in{% endcall %}",
        {},
        False,
        "[in]",
    ),
    (
        "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
        {},
        False,
        "6",
    ),
    ("{% filter upper %}hey {{ name }}{% endfilter %}", {"name": "you"}, False, "HEY YOU"),
    ("{{ missing }}|{{ price * 2 if price }}", {}, False, "|"),
    (
        "{{ items|sum }} {{ items|max }} {{ 'x,y'.split(',')|first }}",
        {"items": [1, 5]},
        False,
        "6 5 x",
    ),
]


@pytest.mark.parametrize(("source", "context", "html", "expected"), ORDINARY)
def test_ordinary_templates_render_as_before(
    source: str, context: dict[str, Any], html: bool, expected: str
) -> None:
    assert render(source, context, html=html) == expected


def test_weight_counts_repeated_references_and_stops_at_the_cap() -> None:
    big = "x" * 1000
    assert weight([big, big], 10**9) >= 2000
    assert weight({"k": big}, 10**9) >= 1000
    assert 100 < weight([big] * 10**6, 100) < 2000  # stopped early


def test_costly_problem_names_the_part_and_ignores_other_failures() -> None:
    limits = RenderLimits()
    problem = costly_problem({"subject": "Hi", "html": RUNAWAYS["string times"]}, limits)
    assert problem is not None and problem.part == "html" and "MAILFLEET_RENDER" in problem.message
    # Needs merge fields it does not have here: not a cost problem.
    assert costly_problem({"subject": "{{ price * 2 }}", "html": "{{ 1 / 0 }}"}, limits) is None
