"""Every benchmark in bench/ runs, at a small size, so that none rots between the full
runs the README reports (those are minutes long and stay out of CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL_RUNS = {
    "import.py": ["--rows", "2000", "--xlsx-rows", "300", "--crm-rows", "2000",
                  "--crm-xlsx-rows", "300", "--crm-random-order"],
    "e2e.py": ["--recipients", "2000"],
    "console_pages.py": ["--recipients", "2000", "--deliveries", "20000", "--rounds", "2"],
    "dkim_sign.py": ["--messages", "20"],
    "edge_pixel.py": ["--requests", "200"],
    "transactional.py": ["--campaign-recipients", "3000", "--rate", "20", "--seconds", "3"],
    "segment_count.py": ["--recipients", "2000", "--rounds", "2"],
    "webhooks.py": ["--events", "300", "--campaigns", "10", "--blocked", "2000"],
    "plan_audience.py": ["--recipients", "2000", "--rounds", "1"],
    "api_load.py": ["--recipients", "2000", "--deliveries", "4000", "--campaign", "300",
                    "--clients", "3", "--seconds", "1", "--rounds", "1", "--think-ms", "5"],
}  # fmt: skip
# What each prints once it has measured (a figure line, not only its banner).
FIGURES = {
    "import.py": "CRM export, XLSX",
    "e2e.py": "end-to-end emails/s",
    "console_pages.py": "/console/lists",
    "dkim_sign.py": "msg/s",
    "edge_pixel.py": "pixel p50",
    "transactional.py": "transactional p99 beside the campaign",
    "segment_count.py": "baseline: count(*) of the list",
    "webhooks.py": "blocked rows",
    "plan_audience.py": "two lists - segment",
    "api_load.py": "campaign emails/s under",
}


def test_every_benchmark_has_a_small_run() -> None:
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if p.name != "infra.py"}
    assert scripts == set(SMALL_RUNS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", sorted(SMALL_RUNS))
def test_the_benchmark_runs_at_a_small_size(script: str) -> None:
    done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [sys.executable, str(ROOT / "bench" / script), *SMALL_RUNS[script]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert FIGURES[script] in done.stdout, output[-4000:]
    if script == "e2e.py":
        # The peer baseline ran (or says why not: `make install` builds its .venv-celery
        # best effort), and the CPU per email of each process is shown.
        assert "peer: Celery + Redis + sendgrid client" in done.stdout, output[-4000:]
        assert "net us/email" in done.stdout, output[-4000:]
