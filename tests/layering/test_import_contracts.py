"""The import-linter contracts in pyproject.toml fail the build when a service imports
another service, or a library imports a service.

The contracts are read from the real pyproject.toml and checked against a small synthetic
tree with the same package names, so the test shows the contracts themselves bite (the
real tree is checked by `lint-imports` in `make lint`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _tree(root: Path, modules: dict[str, str]) -> None:
    for dotted, source in modules.items():
        path = root.joinpath(*dotted.split("."))
        path.mkdir(parents=True, exist_ok=True)
        (path / "__init__.py").write_text(source)
    (root / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())


def _services() -> list[str]:
    return sorted(p.name for p in (REPO / "services").iterdir() if (p / "__init__.py").exists())


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _clean_modules() -> dict[str, str]:
    modules = {"libs": "", "libs.common": "", "services": ""}
    for name in _services():
        modules[f"services.{name}"] = "import libs.common\n"
        modules[f"services.{name}.tests"] = ""
        # Tests beside a service may start another service's code (an ignored import).
        modules[f"services.{name}.tests.test_it"] = "import services.importer\n"
    return modules


def test_clean_tree_passes(tmp_path: Path) -> None:
    _tree(tmp_path, _clean_modules())
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("services.api", "import services.dispatcher\n"),
        ("services.tracker", "from services import importer\n"),
        ("libs.common", "import services.scheduler\n"),
    ],
)
def test_cross_service_import_fails(tmp_path: Path, module: str, source: str) -> None:
    modules = _clean_modules()
    modules[module] = source
    _tree(tmp_path, modules)
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
