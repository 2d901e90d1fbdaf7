"""Which metrics the dashboards and alert rules name, and which ones the services export.

Used by tests/deploy/test_metric_names.py (against the code's registry) and by
tests/e2e/test_metrics_e2e.py (against each running service's /metrics).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"

# Metrics the issue asks for that the owning service does not export yet. Dashboards and
# rules already use them (so they work the day the metric appears); the tests accept them
# as missing, and say so. Remove an entry once its service exports the metric.
PENDING: dict[str, str] = {}

# Labels Prometheus attaches to every target (prometheus.yml / ServiceMonitor), and `le`.
TARGET_LABELS = {"service", "instance", "job", "le"}

_METRIC = re.compile(r"(?<![A-Za-z0-9_:])(mailfleet[_:][A-Za-z0-9_:]*|up)(?![A-Za-z0-9_:(])")
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(mailfleet_[A-Za-z0-9_]*)\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@dataclass(frozen=True)
class Query:
    where: str  # "overview.json: Emails/s" or "rules mailfleet.yml: MailfleetServiceDown"
    expr: str


def dashboard_queries() -> Iterator[Query]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield Query(f"{path.name}: {panel['title']}", target["expr"])


def rule_queries() -> Iterator[Query]:
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                yield Query(f"rules {path.name}: {name}", rule["expr"])


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def metrics_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression (ours all start with `mailfleet`; plus `up`)."""
    return {m.group(1) for m in _METRIC.finditer(expr)}


def referenced_metrics() -> dict[str, list[str]]:
    """Every metric a dashboard or rule names (minus recording rules), with where."""
    recorded = recorded_names()
    found: dict[str, list[str]] = {}
    for query in [*dashboard_queries(), *rule_queries()]:
        for name in metrics_in(query.expr) - recorded - {"up"}:
            found.setdefault(name, []).append(query.where)
    return found


def exported_names(exposition: str) -> set[str]:
    """Sample names a /metrics page exports, including families without samples yet
    (a labelled counter shows only its HELP and TYPE lines until first incremented)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind in ("histogram", "summary"):
                names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def label_problems(expr: str, labels_of: dict[str, set[str]]) -> list[str]:
    """Label names a query filters or groups by that its metrics do not have."""
    problems = []
    for match in _SELECTOR.finditer(expr):
        metric = match.group(1)
        known = labels_of.get(_family(metric), set()) | TARGET_LABELS
        problems += [
            f"{metric} has no label {label!r}"
            for label in _MATCHER.findall(match.group(2))
            if label not in known
        ]
    used = {_family(m) for m in metrics_in(expr)}
    available = set().union(*(labels_of.get(m, set()) for m in used)) | TARGET_LABELS
    for grouping in _GROUPING.findall(expr):
        for label in (part.strip() for part in grouping.split(",")):
            if label and label not in available:
                problems.append(f"grouping by {label!r}, which none of {sorted(used)} has")
    return problems


def _family(name: str) -> str:
    for suffix in (*_HISTOGRAM_SUFFIXES, "_total"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def code_metric_modules() -> list[str]:
    """Every module that defines prometheus metrics, found by file name (new ones count)."""
    modules = ["libs.common.metrics", "libs.web.middleware"]
    modules += [
        f"services.{path.parent.name}.metrics"
        for path in sorted(ROOT.glob("services/*/metrics.py"))
    ]
    return modules


def registry_labels() -> dict[str, set[str]]:
    """Import every metrics module and read label names from the default registry
    (family name without `_total`/`_bucket`, as prometheus_client keys them)."""
    from prometheus_client import REGISTRY

    for module in code_metric_modules():
        importlib.import_module(module)
    labels: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 (no public API)
        for family in collector.describe() if hasattr(collector, "describe") else []:
            labels[family.name] = set(getattr(collector, "_labelnames", ()))
    labels["mailfleet:consumer_lag:sum"] = {"service", "topic"}
    return labels
