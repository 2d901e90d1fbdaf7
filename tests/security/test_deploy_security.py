"""Every security setting reaches compose and Helm, and both run the production profile."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common.settings import Settings
from tests.deploy.metric_refs import ROOT
from tests.deploy.test_compose import resolved  # noqa: F401 (fixture)

SECURITY_SETTINGS = [
    "MAILFLEET_ENV",
    "MAILFLEET_TRUSTED_PROXIES",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "MAILFLEET_KAFKA_ALLOW_PLAINTEXT",
    "MAILFLEET_IMPORT_REJECTIONS_RETENTION_DAYS",
    "SENDGRID_WEBHOOK_VERIFICATION_KEY",
    "MAILFLEET_SECRET_KEY",
    "MAILFLEET_PUBLIC_URL",
    "MAILFLEET_BOOTSTRAP_API_KEY",
]


def test_the_settings_exist() -> None:
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert set(SECURITY_SETTINGS) <= aliases


def test_env_example_lists_every_security_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    missing = [
        name
        for name in SECURITY_SETTINGS
        if name != "MAILFLEET_ENV" and f"\n{name}=" not in example
    ]
    assert missing == []


def test_compose_runs_every_service_in_production(resolved: dict[str, Any]) -> None:  # noqa: F811
    for name in ("api", "importer", "scheduler", "dispatcher", "tracker", "init"):
        environment = resolved["services"][name]["environment"]
        assert environment["MAILFLEET_ENV"] == "production", name
        assert environment["MAILFLEET_KAFKA_ALLOW_PLAINTEXT"] == "true", name


def test_helm_passes_every_security_setting_and_mounts_the_kafka_ca() -> None:
    helm = pytest.importorskip("tests.deploy.test_helm")
    values = {
        "secrets": {"databaseUrl": "postgresql://mailfleet:pw@postgres:5432/mailfleet"},
        "security": {
            "trustedProxies": "10.0.0.0/8",
            "kafka": {"caSecret": "kafka-ca", "saslUsername": "mailfleet"},
        },
    }
    docs = helm.render(values)
    (config,) = helm.by_kind(docs, "ConfigMap").values()
    (secret,) = helm.by_kind(docs, "Secret").values()
    passed = set(config["data"]) | set(secret["stringData"])
    assert set(SECURITY_SETTINGS) <= passed
    assert config["data"]["MAILFLEET_ENV"] == "production"
    assert config["data"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    ca_file = config["data"]["KAFKA_SSL_CAFILE"]
    for workload in [
        *helm.by_kind(docs, "Deployment").values(),
        *helm.by_kind(docs, "Job").values(),
    ]:
        pod = workload["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert ca_file.startswith(mounts["kafka-ca"] + "/")
        assert {
            "name": "kafka-ca",
            "secret": {"secretName": "kafka-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
        } in pod["volumes"]
