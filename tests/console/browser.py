"""Chromium for the browser tests: Debian's package, driven by PyPI playwright.

Never `playwright install` (it downloads a browser build, which these machines cannot).
When /usr/bin/chromium is missing it is installed with apt, as `make tools` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# Screens are saved here as PNG test artifacts (not committed).
SCREENSHOTS = Path(
    os.environ.get(
        "MAILFLEET_CONSOLE_SCREENSHOTS",
        Path(__file__).resolve().parents[2] / ".mailfleet" / "console-screenshots",
    )
)


def ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if not sudo or shutil.which("sudo"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        ):
            subprocess.run([*sudo, *command], env=env, capture_output=True, check=False)  # noqa: S603
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is missing and could not be installed (apt-get install chromium)")
    return CHROMIUM
