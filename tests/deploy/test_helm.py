"""The Helm chart lints, renders for default and production-like values, and every rendered
manifest validates against the Kubernetes 1.31 schemas (helm-python-sdk, kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.metric_refs import ROOT

helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate"
)

CHART = ROOT / "deploy" / "helm" / "mailfleet"
KUBERNETES = "1.31"
SERVICES = [
    "api",
    "edge",
    "importer",
    "scheduler",
    "dispatcher",
    "dispatcher-messages",
    "tracker",
    "guard",
    "webhooks",
    "automations",
]
HTTP_PORTS = {"api": 8000, "edge": 8001}
CRDS = {"monitoring.coreos.com/v1"}  # not in the Kubernetes schemas; checked by hand

PRODUCTION: dict[str, Any] = {
    "image": {"repository": "registry.example.com/mailfleet", "tag": "1.4.2"},
    "imagePullSecrets": [{"name": "regcred"}],
    "kafka": {
        "bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092,kafka-2.kafka:9092",
        "batchReadyPartitions": 24,
        "replicationFactor": 3,
    },
    "secrets": {"existingSecret": "mailfleet-prod"},
    "config": {
        "publicUrl": "https://mail.example.com",
        "smtpCaSecret": "smtp-relay-ca",
        "extraEnv": {"MAILFLEET_PROVIDER_CONCURRENCY": "32"},
    },
    "api": {"replicas": 3, "service": {"type": "ClusterIP", "port": 443}},
    "edge": {
        "replicas": 4,
        "ingress": {
            "className": "nginx",
            "host": "mail.example.com",
            "tls": [{"hosts": ["mail.example.com"], "secretName": "mail-tls"}],
        },
    },
    "scheduler": {"replicas": 2},
    "tracker": {"replicas": 3},
    "dispatcher": {"autoscaling": {"minReplicas": 4, "maxReplicas": 24}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "nodeSelector": {"workload": "mail"},
    "tolerations": [{"key": "mail", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "mailfleet"}},
                    },
                }
            ]
        }
    },
}
DEFAULT: dict[str, Any] = {
    "secrets": {"databaseUrl": "postgresql://mailfleet:pw@postgres:5432/mailfleet"}
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(str(CHART))
    try:
        files = chart.render(values, name="mf", namespace="mail")
    finally:
        chart.close()
    docs: list[dict[str, Any]] = []
    for path, text in files.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
def test_chart_lints_without_warnings(values: dict[str, Any]) -> None:
    result = helm_python.lint(str(CHART), values, strict=True, namespace="mail")
    assert result["errors"] == [], result
    # severity 1 is INFO (e.g. "icon is recommended"); 2 WARNING, 3 ERROR.
    assert [m for m in result["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("values", [DEFAULT, PRODUCTION], ids=["default", "production"])
def test_rendered_manifests_are_valid_kubernetes(values: dict[str, Any]) -> None:
    docs = render(values)
    assert len(docs) > 15
    for doc in docs:
        if doc["apiVersion"] in CRDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_default_values_give_every_service_its_objects() -> None:
    docs = render(DEFAULT)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {f"mf-mailfleet-{s}" for s in SERVICES}
    assert set(by_kind(docs, "Service")) == set(deployments)
    assert set(by_kind(docs, "PodDisruptionBudget")) == set(deployments)
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mf-mailfleet-dispatcher"
    assert "replicas" not in deployments["mf-mailfleet-dispatcher"]["spec"]  # the HPA owns it
    # Transactional mail has dispatchers of its own: one program, two lanes.
    lanes = {}
    for name in ("dispatcher", "dispatcher-messages"):
        (container,) = deployments[f"mf-mailfleet-{name}"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["run", "dispatcher"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        lanes[name] = env["MAILFLEET_DISPATCHER_LANES"]
    assert lanes == {"dispatcher": "batches", "dispatcher-messages": "messages"}
    jobs = by_kind(docs, "Job")
    commands = {j["spec"]["template"]["spec"]["containers"][0]["args"][0] for j in jobs.values()}
    assert commands == {"migrate", "create-topics"}
    for job in jobs.values():
        assert "pre-upgrade" in job["metadata"]["annotations"]["helm.sh/hook"]
    (secret,) = by_kind(docs, "Secret").values()
    assert secret["stringData"]["DATABASE_URL"].startswith("postgresql://")
    assert len(secret["stringData"]["MAILFLEET_SECRET_KEY"]) >= 32  # generated
    config = by_kind(docs, "ConfigMap")["mf-mailfleet-config"]["data"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert by_kind(docs, "ServiceMonitor") == {}


def test_pods_probe_health_and_shut_down_gracefully() -> None:
    for name, deployment in by_kind(render(DEFAULT), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        component = name.removeprefix("mf-mailfleet-")
        port = HTTP_PORTS.get(component, 9100)
        assert container["ports"][0]["containerPort"] == port, name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert pod["terminationGracePeriodSeconds"] > 30, name
        env = {e["name"]: e["value"] for e in container["env"]}
        if component not in HTTP_PORTS:
            assert env["MAILFLEET_METRICS_PORT"] == "9100", name


def test_production_values_use_the_existing_secret_and_a_service_monitor() -> None:
    docs = render(PRODUCTION)
    assert by_kind(docs, "Secret") == {}
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        refs = [e.get("secretRef", {}).get("name") for e in pod["containers"][0]["envFrom"]]
        assert "mailfleet-prod" in refs
        assert pod["containers"][0]["image"] == "registry.example.com/mailfleet:1.4.2"
        assert pod["nodeSelector"] == {"workload": "mail"}
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["maxReplicas"] == 24
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    relabel = monitor["spec"]["endpoints"][0]["relabelings"][0]
    assert relabel["targetLabel"] == "service"  # the label the alert rules group by
    config = by_kind(docs, "ConfigMap")["mf-mailfleet-config"]["data"]
    assert config["MAILFLEET_REPLICATION_FACTOR"] == "3"
    assert config["MAILFLEET_PROVIDER_CONCURRENCY"] == "32"


def test_smtp_verifies_tls_and_mounts_a_private_ca_when_given() -> None:
    default = by_kind(render(DEFAULT), "ConfigMap")["mf-mailfleet-config"]["data"]
    assert default["SMTP_TLS"] == "auto" and "SMTP_CA_FILE" not in default
    docs = render(PRODUCTION)
    config = by_kind(docs, "ConfigMap")["mf-mailfleet-config"]["data"]
    assert config["SMTP_CA_FILE"] == "/etc/mailfleet/smtp-ca/ca.crt"
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["smtp-ca"] == "/etc/mailfleet/smtp-ca"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["smtp-ca"]["secret"]["secretName"] == "smtp-relay-ca"


def test_more_dispatchers_than_partitions_is_refused() -> None:
    values = {"dispatcher": {"autoscaling": {"maxReplicas": 20}}}  # 12 partitions by default
    with pytest.raises(helm_python.HelmError, match="maxReplicas may not exceed"):
        render(values)


def test_every_top_level_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    tops = [i for i, line in enumerate(lines) if line[:1].isalpha()]
    undocumented = []
    for n, start in enumerate(tops):
        end = tops[n + 1] if n + 1 < len(tops) else len(lines)
        above = lines[start - 1] if start else ""
        if not above.startswith("#") and not any("#" in line for line in lines[start:end]):
            undocumented.append(lines[start].split(":")[0])
    assert undocumented == []


@pytest.mark.parametrize("values", [DEFAULT, PRODUCTION], ids=["default", "production"])
def test_only_the_edge_gets_an_ingress(values: dict[str, Any]) -> None:
    """Two separate Services, and an Ingress for the edge's public paths only (issue 12)."""
    docs = render(values)
    (ingress,) = by_kind(docs, "Ingress").values()
    backends = {
        (p["path"], p["backend"]["service"]["name"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    public = ("/u/", "/unsubscribe/", "/webhooks/", "/o/", "/c/", "/s/", "/confirm/")
    assert backends == {(p, "mf-mailfleet-edge") for p in public}
    services = by_kind(docs, "Service")
    assert services["mf-mailfleet-api"]["spec"]["type"] == "ClusterIP"
    assert services["mf-mailfleet-edge"]["spec"]["ports"][0]["name"] == "http"
