"""docker-compose.yml validates with Debian's docker-compose (no engine needed) and has what
the issue asks for: every service, scaled dispatchers, health checks, restart policies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metric_refs import ROOT

COMPOSE = shutil.which("docker-compose")


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker-compose config` of a copy of the project with .env made from .env.example."""
    if COMPOSE is None:
        pytest.skip("docker-compose not installed: `make tools` (apt-get install docker-compose)")
    project = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yml", project)
    shutil.copy(ROOT / ".env.example", project / ".env")
    shutil.copytree(ROOT / "deploy", project / "deploy")
    check = subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", "config", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    full = subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", "config"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config: dict[str, Any] = yaml.safe_load(full.stdout)
    return config


def test_every_component_runs_with_health_checks_and_restart_policies(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    wanted = {
        "kafka",
        "postgres",
        "init",
        "api",
        "edge",
        "importer",
        "scheduler",
        "dispatcher",
        "dispatcher-messages",
        "tracker",
        "guard",
        "automations",
        "prometheus",
        "grafana",
    }
    assert wanted <= set(services)
    for name in wanted - {"init"}:
        assert services[name].get("restart") == "unless-stopped", name
        assert services[name].get("healthcheck", {}).get("test"), name
    assert services["dispatcher"]["deploy"]["replicas"] >= 2
    # Transactional mail has dispatchers of its own (it must not wait behind campaigns).
    lanes = {
        name: services[name]["environment"]["MAILFLEET_DISPATCHER_LANES"]
        for name in ("dispatcher", "dispatcher-messages")
    }
    assert lanes == {"dispatcher": "batches", "dispatcher-messages": "messages"}
    assert services["dispatcher-messages"]["command"] == ["run", "dispatcher"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_services_get_time_to_shut_down_and_wait_for_the_init_job(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    init = services["init"]
    assert "mailfleet migrate" in " ".join(init["entrypoint"])
    assert "mailfleet create-topics" in " ".join(init["entrypoint"])
    for name in ("api", "edge", "importer", "scheduler", "dispatcher", "tracker", "guard"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        # 30 s of graceful shutdown needs more than Docker's default 10 s before SIGKILL.
        assert services[name]["stop_grace_period"] in ("40s", "45s", "60s"), name
        assert services[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_secrets_come_from_the_env_file_only(resolved: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "change-me"
    example = (ROOT / ".env.example").read_text()
    for variable in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "MAILFLEET_SECRET_KEY"):
        assert f"\n{variable}=" in example


def test_prometheus_and_grafana_mount_files_that_exist() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("prometheus", "grafana"):
        for volume in raw["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    if COMPOSE is None:
        pytest.skip("docker-compose not installed")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / ".env").write_text("MAILFLEET_SECRET_KEY=x\n")
    done = subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


def test_only_the_edge_is_published_beyond_the_host(resolved: dict[str, Any]) -> None:
    """The admin API needs no public exposure (issue 12): loopback only; the edge is public."""
    services = resolved["services"]

    def published(service: str) -> list[tuple[str, int]]:
        """(host address, container port) of each published port, long or short syntax."""
        found = []
        for port in services[service]["ports"]:
            if isinstance(port, dict):
                found.append((str(port.get("host_ip", "")), int(port["target"])))
            else:
                *host, _, target = str(port).split(":")
                found.append((host[0] if host else "", int(target.split("/")[0])))
        return found

    assert published("api") == [("127.0.0.1", 8000)]
    assert published("edge") == [("", 8001)]
    assert services["edge"]["command"] == ["run", "edge"]
