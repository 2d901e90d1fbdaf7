"""A campaign's audience: lists and segments, minus exclusion lists and segments, as SQL.

Pure: no database, no HTTP. `parse` validates a definition (limits included) and raises
`AudienceError` naming the bad member by its JSON path (`$.lists[2]`); `build` turns a
definition, and the filters of the segments it names, into one parameterised SELECT of
the sendable audience. The API counts with it before planning; the scheduler plans with
it (the count, `_plan_batches`, `_plan_zoned_batches`). No text of a definition or of a
filter ever becomes SQL: ids and every filter value are bind parameters.

What an audience means (docs/design.md, "Campaign audiences"):
- Candidates: the rows of `recipients` on any of `lists`, and the rows any of `segments`
  matches (a segment is a predicate on one row, libs/common/segments.py), whose `status`
  is 'active' (double opt-in: unconfirmed and unsubscribed rows are never mailed).
- Minus every address that is on one of `exclude_lists` (any status), that one of
  `exclude_segments` matches on any of its rows, or that is suppressed.
- One row per address: the row of the first list in `lists` order that holds the address,
  else the row of the first segment in `segments` order that matches it; the lowest row
  id breaks ties. That row's merge fields are the ones the mail is rendered with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from libs.common import segments

MAX_PER_KIND = 20
KINDS = ("lists", "segments", "exclude_lists", "exclude_segments")


class AudienceError(ValueError):
    """A definition that cannot be used; `path` is the JSON path of the bad member."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Audience:
    lists: tuple[UUID, ...] = ()
    segments: tuple[UUID, ...] = ()
    exclude_lists: tuple[UUID, ...] = ()
    exclude_segments: tuple[UUID, ...] = ()

    @classmethod
    def of_list(cls, list_id: UUID) -> Audience:
        return cls(lists=(list_id,))

    @classmethod
    def of_campaign(cls, audience: Any, list_id: UUID | None) -> Audience:
        """A campaign row's definition: its `audience`, else the `list_id` shorthand."""
        if audience is not None:
            return parse(audience)
        if list_id is None:
            raise AudienceError("$", "the campaign has neither an audience nor a list")
        return cls.of_list(list_id)

    def to_json(self) -> dict[str, list[str]]:
        return {kind: [str(i) for i in getattr(self, kind)] for kind in KINDS}

    @property
    def segment_ids(self) -> tuple[UUID, ...]:
        """Every segment named, included or excluded, each once, in order."""
        return tuple(dict.fromkeys((*self.segments, *self.exclude_segments)))

    @property
    def list_ids(self) -> tuple[UUID, ...]:
        return tuple(dict.fromkeys((*self.lists, *self.exclude_lists)))

    @property
    def primary_list(self) -> UUID | None:
        return self.lists[0] if self.lists else None


def parse(value: Any) -> Audience:
    """The validated definition (JSON already decoded); AudienceError if it is bad."""
    if not isinstance(value, Mapping):
        raise AudienceError("$", "must be an object")
    for key in value:
        if key not in KINDS:
            raise AudienceError(
                f"$.{str(key)[:40]}", f"unexpected member; one of {', '.join(KINDS)}"
            )
    ids: dict[str, tuple[UUID, ...]] = {}
    for kind in KINDS:
        raw = value.get(kind, [])
        path = f"$.{kind}"
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise AudienceError(path, "must be an array of ids")
        if len(raw) > MAX_PER_KIND:
            raise AudienceError(path, f"at most {MAX_PER_KIND} ids")
        seen: set[UUID] = set()
        parsed: list[UUID] = []
        for i, item in enumerate(raw):
            one = _uuid(item, f"{path}[{i}]")
            if one in seen:
                raise AudienceError(f"{path}[{i}]", "named twice")
            seen.add(one)
            parsed.append(one)
        ids[kind] = tuple(parsed)
    if not ids["lists"] and not ids["segments"]:
        raise AudienceError("$.lists", "an audience needs at least one list or segment")
    for kind, other in (("exclude_lists", "lists"), ("exclude_segments", "segments")):
        for i, one in enumerate(ids[kind]):
            if one in ids[other]:
                raise AudienceError(f"$.{kind}[{i}]", f"is also in {other}")
    return Audience(**ids)


def _uuid(value: Any, path: str) -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str) and len(value) <= 40:
        try:
            return UUID(value)
        except ValueError:
            pass
    raise AudienceError(path, "must be an id (a UUID)")


def parse_filters(audience: Audience, filters: Any) -> dict[UUID, segments.Node]:
    """The parsed filter of every segment the audience names, from the copy a campaign
    holds (`{"<segment id>": <filter>}`); AudienceError naming a segment without one."""
    if audience.segment_ids and not isinstance(filters, Mapping):
        raise AudienceError("$.segments", "the campaign holds no copy of its segments' filters")
    parsed: dict[UUID, segments.Node] = {}
    for segment_id in audience.segment_ids:
        raw = filters.get(str(segment_id))
        if raw is None:
            raise AudienceError("$.segments", f"no copy of segment {segment_id}'s filter")
        try:
            parsed[segment_id] = segments.parse(raw)
        except segments.SegmentError as exc:
            raise AudienceError("$.segments", f"segment {segment_id}: {exc}") from exc
    return parsed


@dataclass
class AudienceSql:
    """A SELECT of the audience, one row per address, with the columns `id, email, fields,
    list_id` (and `suppressed`, boolean, when built with `keep_suppressed`). `params` are
    the values of `$first_param` onwards, in order. Put it in a FROM: `FROM ({sql}) AS r`."""

    sql: str
    params: list[Any] = field(default_factory=list)


class Binder:
    """The positional parameters of a statement assembled from parts, numbered from
    `$first` in the order the parts take them."""

    def __init__(self, first: int = 1) -> None:
        self.first = first
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return f"${self.first + len(self.params) - 1}"

    @property
    def next(self) -> int:
        return self.first + len(self.params)

    def take(self, params: list[Any]) -> None:
        """The values of a part built with `first_param=self.next`."""
        self.params.extend(params)

    def segment(self, node: segments.Node, now: datetime) -> segments.Compiled:
        compiled = segments.compile_filter(node, now=now, first_param=self.next)
        self.take(compiled.params)
        return compiled


@dataclass
class _Parts:
    """The pieces every form of the audience's SQL shares."""

    binder: Binder
    exclusions: list[str]  # conditions on `c.email`
    candidates: str | None  # the UNION ALL of rows with their rank; None: one list alone
    one_list: str | None  # the placeholder of that one list


def _parts(
    audience: Audience, filters: Mapping[UUID, segments.Node], now: datetime, first_param: int
) -> _Parts:
    b = Binder(first_param)
    exclusions: list[str] = []
    if audience.exclude_lists:
        p = b.bind(list(audience.exclude_lists))
        exclusions.append(
            "NOT EXISTS (SELECT 1 FROM recipients x"  # noqa: S608
            f" WHERE x.email = c.email AND x.list_id = ANY({p}::uuid[]))"
        )
    for segment_id in audience.exclude_segments:
        compiled = b.segment(filters[segment_id], now)
        exclusions.append(
            f"NOT EXISTS (SELECT 1 FROM recipients r{compiled.joins}"  # noqa: S608
            f" WHERE ({compiled.where}) AND r.email = c.email)"
        )
    if len(audience.lists) == 1 and not audience.segments:
        return _Parts(b, exclusions, None, b.bind(audience.lists[0]))
    parts: list[str] = []
    if audience.lists:
        p = b.bind(list(audience.lists))
        parts.append(
            "SELECT r.id, r.email, r.fields, r.list_id,"  # noqa: S608
            f" array_position({p}::uuid[], r.list_id) AS rank"
            f" FROM recipients r WHERE r.list_id = ANY({p}::uuid[]) AND r.status = 'active'"
        )
    for i, segment_id in enumerate(audience.segments):
        compiled = b.segment(filters[segment_id], now)
        parts.append(
            f"SELECT r.id, r.email, r.fields, r.list_id, {len(audience.lists) + i + 1} AS rank"  # noqa: S608
            f" FROM recipients r{compiled.joins}"
            f" WHERE r.status = 'active' AND ({compiled.where})"
        )
    return _Parts(b, exclusions, " UNION ALL ".join(parts), None)


def build(
    audience: Audience,
    filters: Mapping[UUID, segments.Node],
    *,
    now: datetime,
    first_param: int = 1,
    keep_suppressed: bool = False,
) -> AudienceSql:
    """The sendable audience (module doc): suppressed addresses left out, or, with
    `keep_suppressed`, kept and flagged (the plan's count of the audience and of the
    suppressed). `now` fixes what a segment's "within N days" counts from.

    One list and no segments is the common case and the fast one: a list holds each
    address once, so no deduplication is needed, and the list's index narrows the scan.
    """
    parts = _parts(audience, filters, now, first_param)
    exclusions = list(parts.exclusions)
    if keep_suppressed:
        # A join (hashed, or merged), not a probe of the suppressions per row.
        columns = "c.id, c.email, c.fields, c.list_id, s.email IS NOT NULL AS suppressed"
        suppressions = " LEFT JOIN suppressions s ON s.email = c.email"
    else:
        columns = "c.id, c.email, c.fields, c.list_id"
        suppressions = ""
        exclusions.append("NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = c.email)")
    where = "".join(f" AND {cond}" for cond in exclusions)
    if parts.candidates is None:
        sql = (
            f"SELECT {columns} FROM recipients c{suppressions}"  # noqa: S608
            f" WHERE c.list_id = {parts.one_list}::uuid AND c.status = 'active'{where}"
        )
    else:
        sql = (
            f"SELECT DISTINCT ON (c.email) {columns}"  # noqa: S608
            f" FROM ({parts.candidates}) AS c{suppressions} WHERE true{where}"
            " ORDER BY c.email, c.rank, c.id"
        )
    return AudienceSql(sql, parts.binder.params)


def build_count(
    audience: Audience,
    filters: Mapping[UUID, segments.Node],
    *,
    now: datetime,
    first_param: int = 1,
) -> AudienceSql:
    """A SELECT of one number: the audience's addresses, suppressed ones included (the
    plan's `audience_total`). No row has to win per address, so a combined audience counts
    distinct addresses (hashed), without the sort on three keys `build` needs."""
    parts = _parts(audience, filters, now, first_param)
    where = "".join(f" AND {cond}" for cond in parts.exclusions)
    if parts.candidates is None and not parts.exclusions:
        # One whole list: its size (the sum its writers keep, migration 0031) less its
        # recipients who are not active, read through their partial index (migration
        # 0036): no scan of the list, however large, in a request that shows a draft.
        sql = (
            "SELECT (SELECT coalesce(sum(delta), 0)::bigint FROM list_recipient_counts"  # noqa: S608
            f" WHERE list_id = {parts.one_list}::uuid)"
            " - (SELECT count(*) FROM recipients c"
            f" WHERE c.list_id = {parts.one_list}::uuid AND c.status <> 'active')"
        )
    elif parts.candidates is None:
        sql = (
            "SELECT count(*) FROM recipients c"  # noqa: S608
            f" WHERE c.list_id = {parts.one_list}::uuid AND c.status = 'active'{where}"
        )
    else:
        sql = (
            "SELECT count(*) FROM (SELECT DISTINCT c.email"  # noqa: S608
            f" FROM ({parts.candidates}) AS c WHERE true{where}) AS people"
        )
    return AudienceSql(sql, parts.binder.params)
