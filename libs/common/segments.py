"""Segments: a saved filter over recipients, written as JSON, compiled to parameterised SQL.

Pure: no database, no HTTP. `parse` validates a filter (limits included) and raises
`SegmentError` naming the bad node by its JSON path (`$.and[1].op`); `compile_filter`
turns the parsed tree into SQL fragments whose every user-supplied value, field names
included, is a bind parameter (`r.fields ->> $3`). No text of a filter ever becomes SQL.

What a filter means (docs/design.md, "Segments"):
- It is a predicate on one recipient row `r` (a row of `recipients`: one address on one
  list). Merge-field conditions read that row's `fields`; every other condition is about
  the row's address: list membership (the address is on the list), suppression, and
  engagement from the delivery log (by address, whichever list the mail went to).
- A segment's people are the distinct addresses of the rows it matches.
- Every condition is two-valued: a missing field is not equal to anything, is not a
  number, and is empty; so `not` is the plain complement.

Nodes:
    {"and": [node, ...]}, {"or": [node, ...]}, {"not": node}
    {"field": name, "op": "eq", "value": "Pune"}          exact text
    {"field": name, "op": "in", "value": ["a", "b"]}      exact text, any of
    {"field": name, "op": "contains" | "starts_with", "value": "x"}   A-Z case-insensitive
    {"field": name, "op": "gt" | "gte" | "lt" | "lte", "value": 30}       numbers
    {"field": name, "op": "gt" | "gte" | "lt" | "lte", "value": "2026-01-31"}  dates
    {"field": name, "op": "is_empty"}                      missing, null or ""
    {"list": "<list uuid>"}                                the address is on that list
    {"suppressed": true | false | "unsubscribe" | "bounce" | "spamreport" | "manual"}
    {"engaged": "received" | "opened" | "clicked" | "soft_bounced",
     "campaign": "<uuid>" | "within_days": N}             neither: ever
    {"never": "opened" | "clicked", "campaign": ... | "within_days": ...}
        received (in that campaign / window) and never opened (clicked) there
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias
from uuid import UUID

# Limits on every input (the API also bounds the body's size).
MAX_DEPTH = 8
MAX_NODES = 200
MAX_CHILDREN = 50
MAX_IN_VALUES = 1000
MAX_VALUE_CHARS = 500
MAX_FIELD_CHARS = 100
MAX_WITHIN_DAYS = 3650
# A number a field may be compared as: at most this many characters (and a 3-digit
# exponent), so that no field value makes PostgreSQL's numeric cast fail or run long.
MAX_NUMBER_CHARS = 40

# The same pattern in Python and in SQL (POSIX ERE): what counts as a number in a field.
NUMBER_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
# A date field: ISO 8601, YYYY-MM-DD, alone or followed by a time ('T' or ' ').
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ]|$)"

TEXT_OPS = ("eq", "in", "contains", "starts_with")
ORDER_OPS = ("gt", "gte", "lt", "lte")
OPS = (*TEXT_OPS, *ORDER_OPS, "is_empty")
SUPPRESSION_REASONS = ("unsubscribe", "bounce", "spamreport", "manual")
ENGAGEMENTS = ("received", "opened", "clicked", "soft_bounced")
NEVER = ("opened", "clicked")

Op = Literal["eq", "in", "contains", "starts_with", "gt", "gte", "lt", "lte", "is_empty"]
Engagement = Literal["received", "opened", "clicked", "soft_bounced"]


class SegmentError(ValueError):
    """A filter that cannot be used; `path` is the JSON path of the bad node or member."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# ---- the parsed tree ----------------------------------------------------------------


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class FieldCond:
    name: str
    op: Op
    # str for eq/contains/starts_with, tuple[str, ...] for in, Decimal for number
    # comparisons, date for date comparisons, None for is_empty.
    value: str | tuple[str, ...] | Decimal | date | None = None


@dataclass(frozen=True)
class InList:
    list_id: UUID


@dataclass(frozen=True)
class Suppressed:
    reason: str | None  # None: any reason


@dataclass(frozen=True)
class Engaged:
    kind: Engagement
    campaign: UUID | None = None
    within_days: int | None = None


Node: TypeAlias = And | Or | Not | FieldCond | InList | Suppressed | Engaged


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents first."""
    yield node
    if isinstance(node, And | Or):
        for child in node.children:
            yield from walk(child)
    elif isinstance(node, Not):
        yield from walk(node.child)


# ---- parsing and validation --------------------------------------------------------


@dataclass
class _Budget:
    nodes: int = 0


def parse(value: Any) -> Node:
    """The validated tree of a filter (JSON already decoded); SegmentError if it is bad."""
    return _parse(value, "$", 1, _Budget())


def _parse(value: Any, path: str, depth: int, budget: _Budget) -> Node:
    if depth > MAX_DEPTH:
        raise SegmentError(path, f"nested deeper than {MAX_DEPTH} levels")
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise SegmentError(path, f"a filter has at most {MAX_NODES} nodes")
    if not isinstance(value, dict):
        raise SegmentError(path, "a node must be an object")
    keys = set(value)
    for combinator in ("and", "or"):
        if combinator in keys:
            _only(value, path, {combinator})
            children = value[combinator]
            where = f"{path}.{combinator}"
            if not isinstance(children, list) or not children:
                raise SegmentError(where, "must be a non-empty array of nodes")
            if len(children) > MAX_CHILDREN:
                raise SegmentError(where, f"at most {MAX_CHILDREN} nodes")
            parsed = tuple(
                _parse(child, f"{where}[{i}]", depth + 1, budget)
                for i, child in enumerate(children)
            )
            return And(parsed) if combinator == "and" else Or(parsed)
    if "not" in keys:
        _only(value, path, {"not"})
        return Not(_parse(value["not"], f"{path}.not", depth + 1, budget))
    if "field" in keys:
        return _parse_field(value, path)
    if "list" in keys:
        _only(value, path, {"list"})
        return InList(_uuid(value["list"], f"{path}.list"))
    if "suppressed" in keys:
        _only(value, path, {"suppressed"})
        return _parse_suppressed(value["suppressed"], f"{path}.suppressed")
    if "engaged" in keys or "never" in keys:
        return _parse_engagement(value, path)
    raise SegmentError(
        path,
        "unknown node: expected one of and, or, not, field, list, suppressed, engaged, never",
    )


def _only(value: dict[str, Any], path: str, allowed: set[str]) -> None:
    for key in value:
        if key not in allowed:
            raise SegmentError(f"{path}.{_key(key)}", "unexpected member in this node")


def _key(key: object) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", text) else repr(text[:40])


def _uuid(value: Any, path: str) -> UUID:
    if isinstance(value, str) and len(value) <= 40:
        try:
            return UUID(value)
        except ValueError:
            pass
    raise SegmentError(path, "must be an id (a UUID)")


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SegmentError(path, "must be a string")
    if len(value) > MAX_VALUE_CHARS:
        raise SegmentError(path, f"at most {MAX_VALUE_CHARS} characters")
    if "\x00" in value:
        raise SegmentError(path, "must not contain NUL characters")
    return value


def _parse_field(value: dict[str, Any], path: str) -> FieldCond:
    _only(value, path, {"field", "op", "value"})
    name = value["field"]
    if not isinstance(name, str) or not name:
        raise SegmentError(f"{path}.field", "must be a non-empty string")
    if len(name) > MAX_FIELD_CHARS or "\x00" in name:
        raise SegmentError(f"{path}.field", f"at most {MAX_FIELD_CHARS} characters, no NUL")
    op = value.get("op")
    if op not in OPS:
        raise SegmentError(f"{path}.op", f"must be one of {', '.join(OPS)}")
    where = f"{path}.value"
    if op == "is_empty":
        if "value" in value:
            raise SegmentError(where, "is_empty takes no value")
        return FieldCond(name, "is_empty")
    if "value" not in value:
        raise SegmentError(where, f"{op} needs a value")
    raw = value["value"]
    if op == "in":
        if not isinstance(raw, list) or not raw:
            raise SegmentError(where, "must be a non-empty array of strings")
        if len(raw) > MAX_IN_VALUES:
            raise SegmentError(where, f"at most {MAX_IN_VALUES} values")
        return FieldCond(
            name, "in", tuple(_text(item, f"{where}[{i}]") for i, item in enumerate(raw))
        )
    if op in ORDER_OPS:
        return FieldCond(name, op, _order_value(raw, where))
    return FieldCond(name, op, _text(raw, where))


def _order_value(raw: Any, path: str) -> Decimal | date:
    if isinstance(raw, bool):
        raise SegmentError(path, "must be a number, or a date as YYYY-MM-DD")
    if isinstance(raw, int | float):
        try:
            number = Decimal(str(raw))
        except InvalidOperation as exc:
            raise SegmentError(path, "must be a finite number") from exc
        if not number.is_finite() or abs(number.adjusted()) > 100:
            raise SegmentError(path, "must be a finite number between 1e-100 and 1e100")
        return number
    if isinstance(raw, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise SegmentError(path, "must be a number, or a date as YYYY-MM-DD")


def _parse_suppressed(raw: Any, path: str) -> Node:
    if raw is True:
        return Suppressed(None)
    if raw is False:
        return Not(Suppressed(None))
    if raw in SUPPRESSION_REASONS:
        return Suppressed(str(raw))
    raise SegmentError(path, f"must be true, false, or one of {', '.join(SUPPRESSION_REASONS)}")


def _parse_engagement(value: dict[str, Any], path: str) -> Node:
    never = "never" in value
    key = "never" if never else "engaged"
    _only(value, path, {key, "campaign", "within_days"})
    kind = value[key]
    choices = NEVER if never else ENGAGEMENTS
    if kind not in choices:
        raise SegmentError(f"{path}.{key}", f"must be one of {', '.join(choices)}")
    if "campaign" in value and "within_days" in value:
        raise SegmentError(f"{path}.within_days", "give either campaign or within_days")
    campaign = _uuid(value["campaign"], f"{path}.campaign") if "campaign" in value else None
    days = value.get("within_days")
    if days is not None and (
        isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_WITHIN_DAYS
    ):
        raise SegmentError(f"{path}.within_days", f"must be a whole number 1-{MAX_WITHIN_DAYS}")
    if never:
        # Received there, and never opened (clicked) there.
        return And(
            (
                Engaged("received", campaign, days),
                Not(Engaged(kind, campaign, days)),
            )
        )
    return Engaged(kind, campaign, days)


# ---- compiling ---------------------------------------------------------------------


@dataclass
class Compiled:
    """SQL to put after `FROM recipients r`: `joins`, then `WHERE <where>`, a predicate on
    the row `r`. `params` are the values of `$first_param` onwards, in order.

    `count_sql()` is the count of distinct addresses, planned for speed: when the filter
    is `list X AND <conditions about the address only>` (no merge field anywhere), every
    row of one address gives the same answer, so it counts the rows on list X alone,
    which hold each address once (no DISTINCT, and the list's index narrows the scan).
    """

    joins: str
    where: str
    params: list[Any] = field(default_factory=list)
    # Set for the fast count: the top-level list's placeholder, and the predicate without
    # that list's condition.
    scope_list: str | None = None
    scoped_where: str | None = None

    def count_sql(self, also: str | None = None) -> str:
        """How many distinct addresses the segment holds (params: `self.params`); `also`
        is a further condition on `r` (fixed SQL of the caller's, e.g. the lists of a
        campaign), whose parameters come after these."""
        extra = f" AND {also}" if also else ""
        if self.scope_list is not None:
            return (
                f"SELECT count(*) FROM recipients r{self.joins}"  # noqa: S608
                f" WHERE r.list_id = {self.scope_list}::uuid AND {self.scoped_where}{extra}"
            )
        return (
            "SELECT count(*) FROM (SELECT DISTINCT r.email"  # noqa: S608
            f" FROM recipients r{self.joins} WHERE {self.where}{extra}) AS people"
        )


class _Compiler:
    def __init__(self, now: datetime, first_param: int) -> None:
        self.now = now
        self.first = first_param
        self.params: list[Any] = []
        self.joins: list[str] = []
        self._sets: dict[tuple[Any, ...], list[str]] = {}
        self._parts: dict[tuple[Any, ...], list[tuple[str, bool]]] = {}
        self._list_params: dict[UUID, str] = {}

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return f"${self.first + len(self.params) - 1}"

    def list_param(self, list_id: UUID) -> str:
        if list_id not in self._list_params:
            self._list_params[list_id] = self.bind(list_id)
        return self._list_params[list_id]

    # Address-level conditions (list membership, suppression, engagement) are sets of
    # addresses: `parts` are the SELECTs of a set's addresses, `set_key` says when
    # two nodes name the same set.

    @staticmethod
    def set_key(node: InList | Suppressed | Engaged) -> tuple[Any, ...]:
        if isinstance(node, InList):
            return ("list", node.list_id)
        if isinstance(node, Suppressed):
            return ("suppressed", node.reason)
        return ("engaged", node.kind, node.campaign, node.within_days)

    def parts(self, node: InList | Suppressed | Engaged) -> list[tuple[str, bool]]:
        """The set as SELECTs of addresses whose union it is, each with whether it holds an
        address at most once (then it needs no DISTINCT). Built (and its values bound)
        once per set."""
        key = self.set_key(node)
        if key not in self._parts:
            self._parts[key] = self._build_parts(node)
        return self._parts[key]

    def _build_parts(self, node: InList | Suppressed | Engaged) -> list[tuple[str, bool]]:
        if isinstance(node, InList):
            select = (
                "SELECT m.email FROM recipients m"  # noqa: S608
                f" WHERE m.list_id = {self.list_param(node.list_id)}::uuid"
            )
            return [(select, True)]
        if isinstance(node, Suppressed):
            if node.reason is None:
                return [("SELECT s.email FROM suppressions s", True)]
            select = f"SELECT s.email FROM suppressions s WHERE s.reason = {self.bind(node.reason)}::text"  # noqa: S608
            return [(select, True)]
        if node.campaign is None:
            return self.summary_parts(node)
        return [(self.delivery_select(node), False)]

    def joined(self, node: InList | Suppressed | Engaged) -> str:
        """Inside `or`/`not`, or for a set of several parts: a LEFT JOIN on each part's
        distinct addresses, and the condition that one found the row's address (hash
        joins, whatever the sizes: a UNION's size is one the planner cannot guess, and it
        chose a million index lookups for one). Equal sets share their joins."""
        key = self.set_key(node)
        aliases = self._sets.get(key)
        if aliases is None:
            aliases = []
            for select, unique in self.parts(node):
                alias = f"s{len(self.joins) + 1}"
                distinct = f"(SELECT DISTINCT email FROM ({select}) AS q)"  # noqa: S608
                rows = f"({select})" if unique else distinct
                self.joins.append(f" LEFT JOIN {rows} AS {alias} ON {alias}.email = r.email")
                aliases.append(alias)
            self._sets[key] = aliases
        return "(" + " OR ".join(f"{a}.email IS NOT NULL" for a in aliases) + ")"

    def exists(self, node: InList | Suppressed | Engaged) -> str:
        """At the top level: EXISTS, which PostgreSQL plans as a semi-join (NOT EXISTS: an
        anti-join), with no DISTINCT to build; a set of several parts is joined."""
        parts = self.parts(node)
        if len(parts) > 1:
            return self.joined(node)
        select = parts[0][0]
        return f"EXISTS (SELECT 1 FROM ({select}) AS q WHERE q.email = r.email)"  # noqa: S608

    def top(self, node: Node) -> list[str]:
        """The conditions of the top-level conjunction (nested `and`s flattened)."""
        if isinstance(node, And):
            return [cond for child in node.children for cond in self.top(child)]
        if isinstance(node, InList | Suppressed | Engaged):
            return [self.exists(node)]
        if isinstance(node, Not) and isinstance(node.child, InList | Suppressed | Engaged):
            return [f"(NOT {self.exists(node.child)})"]
        return [self.node(node)]

    def node(self, node: Node) -> str:
        if isinstance(node, And):
            return "(" + " AND ".join(self.node(c) for c in node.children) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.node(c) for c in node.children) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.node(node.child)})"
        if isinstance(node, FieldCond):
            return self.field(node)
        if isinstance(node, InList):
            # The row's own list answers without the join for most rows.
            p = self.list_param(node.list_id)
            return f"(r.list_id = {p}::uuid OR {self.joined(node)})"
        return self.joined(node)

    def field(self, node: FieldCond) -> str:
        text = f"(r.fields ->> {self.bind(node.name)})"
        op, value = node.op, node.value
        if op == "is_empty":
            return f"(coalesce({text}, '') = '')"
        if op == "eq":
            cond = f"{text} = {self.bind(value)}::text"
        elif op == "in":
            cond = f"{text} = ANY({self.bind(list(value))}::text[])"  # type: ignore[arg-type]
        elif op == "contains":
            # lower() under the "C" collation lowers A-Z only, whatever the database's
            # locale, so the reference evaluation can say exactly what it does.
            cond = f'strpos(lower({text} COLLATE "C"), lower({self.bind(value)}::text COLLATE "C")) > 0'
        elif op == "starts_with":
            cond = f'starts_with(lower({text} COLLATE "C"), lower({self.bind(value)}::text COLLATE "C"))'
        else:
            sign = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
            if isinstance(value, Decimal):
                # CASE keeps the cast from seeing a value that is no number.
                cond = (
                    f"(CASE WHEN length({text}) <= {MAX_NUMBER_CHARS}"
                    f" AND {text} ~ '{NUMBER_PATTERN}' THEN {text}::numeric END)"
                    f" {sign} {self.bind(value)}::numeric"
                )
            else:
                # ISO dates compare as text: no cast that an impossible date could fail.
                assert isinstance(value, date)
                cond = (
                    f"(CASE WHEN {text} ~ '{DATE_PATTERN}' THEN left({text}, 10) END)"
                    f' {sign} {self.bind(value.isoformat())}::text COLLATE "C"'
                )
        return f"coalesce({cond}, false)"

    def summary_parts(self, node: Engaged) -> list[tuple[str, bool]]:
        """Engagement with any campaign: the per-address summary (libs/stats/engagement.py),
        one row per person. Sends of campaigns not summarised yet (running, or just over)
        come from the delivery log, read by campaign: a second part."""
        column = {
            "received": "e.last_sent_at",
            "opened": "e.last_opened_at",
            "clicked": "e.last_clicked_at",
            "soft_bounced": "e.last_soft_bounced_at",
        }[node.kind]
        cutoff = (
            self.now - timedelta(days=node.within_days) if node.within_days is not None else None
        )
        p = self.bind(cutoff) if cutoff is not None else None
        when = f"{column} >= {p}::timestamptz" if p else f"{column} IS NOT NULL"
        summary = f"SELECT e.email FROM engagement_summary e WHERE {when}"  # noqa: S608
        if node.kind != "received":
            return [(summary, True)]
        recent = f" AND d.sent_at >= {p}::timestamptz" if p else ""
        since = f" AND (c.finished_at IS NULL OR c.finished_at >= {p}::timestamptz)" if p else ""
        unsummarised = (
            f"SELECT d.email FROM deliveries d WHERE d.status = 'sent'{recent}"  # noqa: S608
            " AND d.campaign_id IN (SELECT c.id FROM campaigns c WHERE NOT EXISTS"
            f" (SELECT 1 FROM engagement_summarised x WHERE x.campaign_id = c.id){since})"
        )
        return [(summary, True), (unsummarised, False)]

    def delivery_select(self, node: Engaged) -> str:
        """Engagement with one campaign: its rows of the delivery log."""
        conditions: list[str] = []
        if node.campaign is not None:
            conditions.append(f"d.campaign_id = {self.bind(node.campaign)}::uuid")
        cutoff = (
            self.now - timedelta(days=node.within_days) if node.within_days is not None else None
        )
        if node.kind == "received":
            conditions.append("d.status = 'sent'")
            if cutoff is not None:
                p = self.bind(cutoff)
                conditions.append(f"d.sent_at >= {p}::timestamptz")
                # A delivery was sent before its campaign finished: only campaigns still
                # running or finished since the cut-off can hold one (a cheap pre-filter
                # that lets the delivery log be read by campaign, through its key).
                conditions.append(
                    "d.campaign_id IN (SELECT c.id FROM campaigns c WHERE c.finished_at IS NULL"  # noqa: S608
                    f" OR c.finished_at >= {p}::timestamptz)"
                )
        else:
            column = {
                "opened": "d.opened_at",
                "clicked": "d.clicked_at",
                "soft_bounced": "d.bounced_at",
            }[node.kind]
            conditions.append(f"{column} IS NOT NULL")
            if node.kind == "soft_bounced":
                conditions.append("d.bounce_type = 'soft'")
            if cutoff is not None:
                conditions.append(f"{column} >= {self.bind(cutoff)}::timestamptz")
        return "SELECT d.email FROM deliveries d WHERE " + " AND ".join(conditions)  # noqa: S608


def compile_filter(node: Node, *, now: datetime, first_param: int = 1) -> Compiled:
    """SQL for `node` over `recipients r`; `now` fixes what "within N days" counts from."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    compiler = _Compiler(now, first_param)
    conjuncts = _conjuncts(node)
    conditions = compiler.top(node)
    compiled = Compiled("".join(compiler.joins), " AND ".join(conditions), compiler.params)
    has_fields = any(isinstance(each, FieldCond) for each in walk(node))
    scope = next((c for c in conjuncts if isinstance(c, InList)), None)
    if scope is not None and not has_fields:
        # `top` emitted one condition per conjunct, in order: drop the scope list's own.
        rest = [cond for c, cond in zip(conjuncts, conditions, strict=True) if c is not scope]
        compiled.scope_list = compiler.list_param(scope.list_id)
        compiled.scoped_where = " AND ".join(rest) or "true"
    return compiled


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, And):
        return [each for child in node.children for each in _conjuncts(child)]
    return [node]


def referenced_ids(node: Node) -> tuple[set[UUID], set[UUID]]:
    """The list ids and campaign ids a filter names (the API checks they exist)."""
    lists: set[UUID] = set()
    campaigns: set[UUID] = set()
    for each in walk(node):
        if isinstance(each, InList):
            lists.add(each.list_id)
        elif isinstance(each, Engaged) and each.campaign is not None:
            campaigns.add(each.campaign)
    return lists, campaigns
