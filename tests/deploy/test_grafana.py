"""The dashboards: generated from deploy/grafana/build_dashboards.py, loadable as Grafana
dashboard models (grafana-foundation-sdk), and wired to the provisioned datasource."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.metric_refs import DASHBOARDS, ROOT

GRAFANA = ROOT / "deploy" / "grafana"
EXPECTED = {"overview.json", "pipeline.json", "provider.json", "importer.json"}


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def boards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def test_committed_json_is_what_the_builder_writes() -> None:
    build = builder()
    generated = {name: build.render(board) for name, board in build.all_dashboards().items()}
    committed = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert set(committed) == EXPECTED
    stale = [name for name in EXPECTED if generated[name] != committed[name]]
    assert stale == [], "run .venv/bin/python deploy/grafana/build_dashboards.py"


def test_dashboards_load_as_grafana_models() -> None:
    sdk = pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk")
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard, prometheus, stat, timeseries

    assert sdk is not None
    plugins.register_default_plugins()
    options_type = {"timeseries": timeseries.Options, "stat": stat.Options}
    for name, raw in boards().items():
        model = dashboard.Dashboard.from_json(raw)
        assert model.uid == raw["uid"] and model.title == raw["title"], name
        panels = [p for p in model.panels if isinstance(p, dashboard.Panel)]
        rows = [p for p in model.panels if isinstance(p, dashboard.RowPanel)]
        assert len(panels) + len(rows) == len(raw["panels"]), name
        assert rows and panels, name
        for panel in panels:
            where = f"{name}: {panel.title}"
            assert isinstance(panel.options, options_type[panel.type_val]), where
            assert panel.targets, where
            for target in panel.targets:
                assert isinstance(target, prometheus.Dataquery), where
                assert target.expr, where
        # The model writes back the same queries it read.
        again = json.loads(json.dumps(model, cls=JSONEncoder))
        assert [t["expr"] for p in again["panels"] for t in p.get("targets", [])] == [
            t["expr"] for p in raw["panels"] for t in p.get("targets", [])
        ], name


def test_panels_are_laid_out_and_use_the_datasource_variable() -> None:
    for name, board in boards().items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus", name
        occupied: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']}"
            cells = {
                (grid["x"] + dx, grid["y"] + dy)
                for dx in range(grid["w"])
                for dy in range(grid["h"])
            }
            assert not cells & occupied, f"{name}: {panel['title']} overlaps another panel"
            occupied |= cells
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", name


def test_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/mailfleet.yml").read_text())
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(
        v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")
    )
    assert mounts["./deploy/grafana/dashboards"] == providers["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = datasources["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
