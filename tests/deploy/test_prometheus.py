"""promtool validates the scrape config and the alert rules and runs the rules' unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_refs import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed: `make tools` (apt-get install prometheus) provides it",
)


def promtool(*args: str | Path, cwd: Path = PROMETHEUS) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@needs_promtool
def test_scrape_config_is_valid_and_loads_the_rules(tmp_path: Path) -> None:
    # The config names the rules where the Prometheus container mounts them; point a copy
    # at the repository's rules so that `check config` checks them too.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    output = promtool("check", "config", copy)
    assert "SUCCESS" in output and "rules found" in output


@needs_promtool
def test_rules_are_valid() -> None:
    output = promtool("check", "rules", *sorted((PROMETHEUS / "rules").glob("*.yml")))
    assert "SUCCESS" in output


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    output = promtool("test", "rules", *sorted((PROMETHEUS / "tests").glob("*_test.yml")))
    assert "SUCCESS" in output


def test_every_service_is_scraped_with_a_service_label() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    labelled: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            labelled.add(static.get("labels", {}).get("service", ""))
        for relabel in job.get("relabel_configs", []):
            if relabel.get("target_label") == "service":
                labelled.add(relabel["replacement"])
    assert {"api", "edge", "importer", "scheduler", "dispatcher", "tracker", "guard"} <= labelled


def test_every_alert_the_issue_asks_for_exists_and_is_unit_tested() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "mailfleet.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    wanted = {
        "MailfleetConsumerLagGrowing",
        "MailfleetProviderErrorRate",
        "MailfleetProviderBreakerOpen",
        "MailfleetDeadLetters",
        "MailfleetCampaignStuck",
        "MailfleetServiceDown",
        "MailfleetGuardPausedCampaign",
    }
    assert wanted <= alerts
    tests = yaml.safe_load((PROMETHEUS / "tests" / "mailfleet_test.yml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - tested == set(), "alerts without a firing unit test"
