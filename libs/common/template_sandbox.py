"""The Jinja sandbox with bounds on what one render may cost (issue 11, item 7).

Templates come from users. Jinja's sandbox keeps them away from Python internals, not from
spending unbounded time or memory: `{% for i in range(10**5) %}{% for j in range(10**5) %}`
loops for hours, `{{ 'x' * 10**9 }}` allocates a gigabyte. A render runs in a worker
thread, and a thread cannot be killed, so every bound is enforced inside the render:

- time: a CPU-time budget of the rendering thread, looked at on calls, filters, operators
  and every loop iteration (a Python-level loop cannot escape it);
- size: operations that amplify (`*`, `**`, `+`, `%`, `~`, `format`, `join`, `replace`,
  `center`, `indent`, `wordwrap`, …) are refused *before* they run when their result would
  exceed the output limit. One C-level call such as `'x' * 10**9` holds the GIL, and so the
  service's event loop, for as long as it runs: checking afterwards would be too late;
- output: a template's output and every block's are measured before they are joined.

A refused render raises `TemplateTooCostly`, whose message names the limit.
"""

from __future__ import annotations

import functools
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

DEFAULT_TIME_S = 0.1
DEFAULT_MAX_BYTES = 2 * 1024 * 1024
# `range()` in a template: Jinja's own sandbox bound.
MAX_RANGE = 100_000
# Integers beyond this many bits take seconds to multiply and cannot be printed anyway
# (Python refuses to print more than 4,300 digits).
MAX_INT_BITS = 65_536
_SCALAR_WEIGHT = 32
_MAX_NESTING = 64
# The clock is read on every 16th check: reading it costs about as much as a Jinja call.
_CLOCK_EVERY = 16


class TemplateTooCostly(Exception):
    """The template would take longer or write more than a message may."""


@dataclass(frozen=True)
class RenderLimits:
    """Per message: CPU time of its render and bytes of its subject, HTML and text together."""

    time_s: float = DEFAULT_TIME_S
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_settings(cls, timeout_ms: int, max_bytes: int) -> RenderLimits:
        return cls(time_s=timeout_ms / 1000, max_bytes=max_bytes)


class RenderBudget:
    """What one message may still spend. Time is the rendering thread's CPU time, counted
    only while one of its templates renders (compiling a template does not count)."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.max_chars = limits.max_bytes  # a character is at least one byte
        self.written = 0
        self._spent = 0.0
        self._since: float | None = None
        self._ticks = 0

    def start(self) -> None:
        self._since = time.thread_time()

    def pause(self) -> None:
        if self._since is not None:
            self._spent += time.thread_time() - self._since
            self._since = None

    def tick(self) -> None:
        self._ticks += 1
        if self._ticks % _CLOCK_EVERY == 0:
            self.check_time()

    def check_time(self) -> None:
        if self._since is None:
            return
        if self._spent + time.thread_time() - self._since > self.limits.time_s:
            raise TemplateTooCostly(
                f"rendering took longer than {self.limits.time_s * 1000:g} ms"
                " (MAILFLEET_RENDER_TIMEOUT_MS)"
            )

    def check_size(self, chars: int, what: str) -> None:
        if chars > self.max_chars:
            raise TemplateTooCostly(
                f"{what} would be about {chars:,} characters, more than the"
                f" {self.limits.max_bytes:,} bytes a message may have (MAILFLEET_RENDER_MAX_BYTES)"
            )

    def add_output(self, chars: int) -> None:
        self.written += chars
        if self.written > self.max_chars:
            self.check_size(self.written, "the message")


# Outside a render (Jinja folds constant expressions while compiling): sizes are bounded
# by the default limits, time is not counted.
_COMPILING = RenderBudget(RenderLimits())
_ACTIVE: ContextVar[RenderBudget | None] = ContextVar("render_budget", default=None)


def active_budget() -> RenderBudget:
    return _ACTIVE.get() or _COMPILING


class budget_active:  # noqa: N801 - used as a context manager, like contextlib's
    """Makes `budget` the one the sandbox charges, in this thread, while the block runs."""

    def __init__(self, budget: RenderBudget) -> None:
        self._budget = budget

    def __enter__(self) -> RenderBudget:
        self._token = _ACTIVE.set(self._budget)
        self._budget.start()
        return self._budget

    def __exit__(self, *_: object) -> None:
        self._budget.pause()
        _ACTIVE.reset(self._token)


# ----- how big a value is once printed -----


def weight(value: Any, cap: int) -> int:
    """About how many characters `str(value)` has; stops counting once past `cap`.

    Containers count every element each time it appears (`[s, s]` prints `s` twice).
    """
    return _weight(value, cap, 0)


def _weight(value: Any, cap: int, depth: int) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bytes | bytearray):
        return 4 * len(value)
    if isinstance(value, bool | float) or value is None:
        return _SCALAR_WEIGHT
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, Namespace):
        # Its repr prints its attributes; they are kept under this (private) name.
        value = object.__getattribute__(value, "_Namespace__attrs")
    if isinstance(value, dict):
        items: Iterable[Any] = (x for pair in value.items() for x in pair)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return _SCALAR_WEIGHT  # macros, loop objects, undefined: short reprs
    if depth > _MAX_NESTING:
        return cap + 1
    total = 2
    for item in items:
        total += _weight(item, cap - total, depth + 1) + 2
        if total > cap:
            return total
    return total


def _check_weight(value: Any, what: str) -> None:
    budget = active_budget()
    budget.check_size(weight(value, budget.max_chars), what)


# ----- sizes of amplifying operations, before they run -----

_PERCENT_FIELD = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?"
    r"[hlL]?(?P<conversion>[diouxXeEfFgGcrsa%])"
)
_DIGITS = re.compile(r"\d+")
_LONG_NUMBER = re.compile(r"\d{5}")


def percent_format_size(template: str, values: Any, cap: int) -> int:
    """Characters of `template % values`, estimated from its fields' widths and values."""
    if "*" not in template and not _LONG_NUMBER.search(template):
        # Every width and precision is written out with at most 4 digits (a `*` takes its
        # width from the values): a quick upper bound will do.
        quick = len(template) + template.count("%") * (20_000 + weight(values, cap))
        if quick <= cap:
            return quick
    total = len(template)
    position = 0
    for field in _PERCENT_FIELD.finditer(template):
        if field["conversion"] == "%":
            continue
        if "*" in (field["width"], field["precision"]):
            raise TemplateTooCostly("'*' widths are not allowed in a template's % formatting")
        total += int(field["width"] or 0) + int(field["precision"] or 0)
        if field["key"] is not None and isinstance(values, dict):
            total += weight(values.get(field["key"]), cap)
        elif isinstance(values, tuple):
            total += weight(values[position], cap) if position < len(values) else 0
            position += 1
        else:
            total += weight(values, cap)
        if total > cap:
            break
    return total


def brace_format_size(
    template: str, args: tuple[Any, ...], kwargs: dict[str, Any], cap: int
) -> int:
    """Characters of `template.format(*args, **kwargs)`, estimated the same way."""
    total = len(template)
    auto = 0
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if spec and "{" in spec:
            raise TemplateTooCostly("nested replacement fields are not allowed in a format spec")
        total += sum(int(d) for d in _DIGITS.findall(spec or ""))
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if root == "":
            root, auto = str(auto), auto + 1
        value = args[int(root)] if root.isdigit() and int(root) < len(args) else kwargs.get(root)
        total += weight(value, cap)
        if total > cap:
            break
    return total


def _is_sequence(value: Any) -> bool:
    return isinstance(value, str | bytes | list | tuple)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    budget = active_budget()
    cap = budget.max_chars
    if operator == "*":
        if _is_sequence(left) and isinstance(right, int):
            budget.check_size(weight(left, cap) * max(right, 0), "'*' on a sequence")
        elif _is_sequence(right) and isinstance(left, int):
            budget.check_size(weight(right, cap) * max(left, 0), "'*' on a sequence")
        elif isinstance(left, int) and isinstance(right, int):
            _check_int_bits(left.bit_length() + right.bit_length())
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        _check_int_bits(max(left.bit_length(), 1) * max(right, 0))
    elif operator == "+" and _is_sequence(left) and _is_sequence(right):
        budget.check_size(weight(left, cap) + weight(right, cap), "'+'")
    elif operator == "%" and isinstance(left, str):
        budget.check_size(percent_format_size(left, right, cap), "'%' formatting")


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateTooCostly(f"a number of {bits:,} bits is too large for a template")


def bounded_range(*args: int) -> range:
    budget = active_budget()
    budget.tick()
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateTooCostly(f"range() of {len(numbers):,} numbers (at most {MAX_RANGE:,})")
    return numbers


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    from jinja2.utils import generate_lorem_ipsum

    active_budget().check_size(int(n) * int(max) * 12, "lipsum()")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


# ----- method calls on strings, bytes and ints -----


def _str_method_size(value: str | bytes, method: str, args: tuple[Any, ...]) -> int | None:
    """Characters of `value.method(*args)` for the methods that can amplify, else None."""
    if method in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        return max(len(value), args[0])
    if method == "expandtabs":
        tab = args[0] if args and isinstance(args[0], int) else 8
        return len(value) * max(tab, 1)
    if method == "replace" and len(args) >= 2:
        return _replaced_size(value, args[0], args[1], args[2] if len(args) > 2 else -1)
    if method == "translate" and args and isinstance(args[0], dict):
        longest = max((weight(v, 1 << 30) for v in args[0].values()), default=1)
        return len(value) * max(longest, 1)
    return None


def _replaced_size(value: Any, old: Any, new: Any, count: Any) -> int:
    if not isinstance(value, str | bytes) or not isinstance(old, str | bytes):
        return 0
    found = value.count(old) if old else len(value) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(value) + found * max(len(new) - len(old), 0) if isinstance(new, str | bytes) else 0


def _joined_size(separator: str | bytes, items: list[Any], cap: int) -> int:
    return len(separator) * max(len(items) - 1, 0) + weight(items, cap)


# ----- filters -----

# Filters that never turn their input into text: their input is not weighed.
_NOT_PRINTING = frozenset(
    "abs attr batch count d default dictsort first float groupby int items last length list"
    " map max min random reject rejectattr reverse round select selectattr slice sort sum"
    " unique".split()
)


_AMPLIFYING_FILTERS = frozenset(["center", "indent", "wordwrap", "replace", "format"])
_PRECHECKED = _AMPLIFYING_FILTERS | {"join", "sum"}
_SCALARS = (str, int, float, type(None))


def _filter_precheck(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuses a filter call whose result would be too large; returns its (possibly
    materialised) arguments."""
    budget = active_budget()
    cap = budget.max_chars
    value = args[0] if args else None
    rest = args[1:]
    if name not in _NOT_PRINTING:
        budget.check_size(weight(value, cap), f"the input of |{name}")
    if name == "join":
        items = value if isinstance(value, list | tuple) else list(value or ())
        separator = rest[0] if rest else kwargs.get("d", "")
        budget.check_size(_joined_size(str(separator), list(items), cap), "|join")
        return (items, *rest)
    if name == "sum" and not isinstance(
        kwargs.get("start", rest[1] if len(rest) > 1 else 0), int | float
    ):
        raise TemplateTooCostly("|sum of sequences is not allowed in a template (quadratic)")
    size = _filter_size(name, value, rest, kwargs)
    if size is not None:
        budget.check_size(size, f"|{name}")
    return args


def _filter_size(
    name: str, value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]
) -> int | None:
    if name not in _AMPLIFYING_FILTERS:
        return None
    text = value if isinstance(value, str) else str(value) if value is not None else ""
    arg = rest[0] if rest else None
    if name == "center":
        width = arg if arg is not None else kwargs.get("width", 80)
        return max(len(text), width) if isinstance(width, int) else None
    if name == "indent":
        width = arg if arg is not None else kwargs.get("width", 4)
        pad = width if isinstance(width, int) else len(str(width))
        return len(text) + (text.count("\n") + 1) * max(pad, 0)
    if name == "wordwrap":
        width = arg if isinstance(arg, int) else kwargs.get("width", 79)
        wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
        lines = len(text) // max(int(width), 1) + text.count("\n") + 1
        return len(text) + lines * len(str(wrap))
    if name == "replace":
        new = rest[1] if len(rest) > 1 else kwargs.get("new", "")
        count = rest[2] if len(rest) > 2 else kwargs.get("count")
        return _replaced_size(text, rest[0] if rest else kwargs.get("old", ""), new, count)
    if name == "format":
        return percent_format_size(text, kwargs or tuple(rest), active_budget().max_chars)
    return None


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    # A filter marked pass_context/pass_eval_context/pass_environment gets that first.
    passes = getattr(function, "jinja_pass_arg", None) is not None

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = active_budget()
        budget.tick()
        values = args[1:] if passes else args
        # A filter that does not amplify, on a string or a number, cannot pass the limits.
        if name in _PRECHECKED or (values and not isinstance(values[0], _SCALARS)):
            checked = _filter_precheck(name, values, kwargs)
            args = (*args[:1], *checked) if passes else checked
        result = function(*args, **kwargs)
        if isinstance(result, str | bytes) and len(result) > budget.max_chars:
            budget.check_size(len(result), f"the result of |{name}")
        return result

    return guarded


# ----- the environment -----


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles every `for` loop to iterate through `environment.iterate`, and every `~`
    to pass its operands through `environment.checked_pieces` (neither goes through the
    sandbox otherwise)."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(nodes.For)):
            loop.iter = nodes.Call(
                nodes.EnvironmentAttribute("iterate"), [loop.iter], [], None, None
            )
        super().visit_Template(node, frame)

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # Jinja's own visit_Concat, with the operands checked before they are joined.
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"{join}(environment.checked_pieces((")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write(")))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.globals["range"] = bounded_range
        self.globals["lipsum"] = bounded_lipsum
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}

    # `concat` joins a template's output, and the buffers of macros, call blocks and
    # `{% set %}` blocks: the total is checked before the (C-level) join.
    def concat(self, pieces: Iterable[str]) -> str:
        pieces = list(pieces)
        active_budget().check_size(sum(map(len, pieces)), "the output")
        return "".join(pieces)

    def checked_pieces(self, pieces: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of `a ~ b ~ c`, refused when their text would be too large."""
        budget = active_budget()
        budget.tick()
        budget.check_size(sum(weight(p, budget.max_chars) for p in pieces), "'~'")
        return pieces

    def iterate(self, iterable: Any) -> Iterator[Any]:
        budget = active_budget()
        budget.tick()
        for item in iterable:
            budget.tick()
            yield item

    def _finalize(self, value: Any) -> Any:
        # Printing a string or a number amplifies nothing (the total is checked when the
        # output is joined); a container prints every element, however often it repeats.
        if isinstance(value, str | int | float) or value is None:
            return value
        budget = active_budget()
        budget.tick()
        budget.check_size(weight(value, budget.max_chars), "a printed value")
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        active_budget().tick()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = active_budget()
        budget.tick()
        args = _check_call(__obj, args, budget)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | bytes):
            budget.check_size(len(result), "a call's result")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        template: str = value.__self__
        is_map = value.__name__ == "format_map"

        @functools.wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            budget = active_budget()
            named = args[0] if is_map and args and isinstance(args[0], dict) else kwargs
            positional = () if is_map else args
            budget.check_size(
                brace_format_size(template, positional, named, budget.max_chars), "format()"
            )
            return wrapper(*args, **kwargs)

        return checked


def _check_call(function: Any, args: tuple[Any, ...], budget: RenderBudget) -> tuple[Any, ...]:
    """Refuses an amplifying method call on a str, bytes or int before it runs."""
    owner = getattr(function, "__self__", None)
    method = getattr(function, "__name__", "")
    if isinstance(owner, str | bytes):
        if method == "join" and args:
            items = list(args[0])
            budget.check_size(_joined_size(owner, items, budget.max_chars), "join()")
            return (items, *args[1:])
        size = _str_method_size(owner, method, args)
        if size is not None:
            budget.check_size(size, f"{method}()")
    elif isinstance(owner, int) and method == "to_bytes" and args and isinstance(args[0], int):
        budget.check_size(args[0], "to_bytes()")
    return args


__all__ = [
    "BoundedSandbox",
    "RenderBudget",
    "RenderLimits",
    "TemplateTooCostly",
    "active_budget",
    "budget_active",
    "weight",
]
