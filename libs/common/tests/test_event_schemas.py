"""The JSON Schemas in docs/events/ are what internal publishers code against: keep them
in step with the models."""

from __future__ import annotations

import json
from pathlib import Path

from libs.common.events import export_json_schemas


def test_exported_schemas_match_the_models(repo_root: Path) -> None:
    for topic, schema in export_json_schemas().items():
        path = repo_root / "docs" / "events" / f"{topic}.v1.json"
        assert path.exists(), f"{path} missing: run `mailfleet export-schemas`"
        assert json.loads(path.read_text()) == schema, (
            f"{path} is stale: run `mailfleet export-schemas`"
        )
