"""MAILFLEET_ENV=production refuses each insecure default, naming the setting to fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from libs.common.settings import Settings, check_production, production_problems

# Every setting the production profile looks at, set to a value it accepts.
SECURE: dict[str, object] = {
    "MAILFLEET_ENV": "production",
    "MAILFLEET_SECRET_KEY": "s" * 43,
    "MAILFLEET_PUBLIC_URL": "https://mail.example.com",
    "MAILFLEET_BOOTSTRAP_API_KEY": "mf_" + "k" * 43,
    "MAILFLEET_DEFAULT_PROVIDER": "sendgrid",
    "SENDGRID_WEBHOOK_VERIFICATION_KEY": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
    "SMTP_PORT": 587,
    "SMTP_STARTTLS": True,
    "SMTP_TLS": "auto",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_USERNAME": "mailfleet",
    "KAFKA_SASL_PASSWORD": "pw",
}


def production(**changes: object) -> Settings:
    values = {**SECURE, **changes}
    return Settings(**values)  # type: ignore[arg-type]


def refusal(settings: Settings) -> str:
    with pytest.raises(SystemExit) as raised:
        check_production(settings)
    return str(raised.value)


def test_secure_production_settings_start() -> None:
    assert production_problems(production()) == []
    check_production(production())


def test_development_keeps_its_conveniences() -> None:
    assert production_problems(Settings(MAILFLEET_ENV="development")) == []  # type: ignore[call-arg]


def test_refuses_without_secret_key() -> None:
    assert "MAILFLEET_SECRET_KEY" in refusal(production(MAILFLEET_SECRET_KEY=""))


def test_refuses_without_public_url() -> None:
    assert "MAILFLEET_PUBLIC_URL" in refusal(production(MAILFLEET_PUBLIC_URL=""))


def test_refuses_a_relative_public_url() -> None:
    assert "MAILFLEET_PUBLIC_URL" in refusal(production(MAILFLEET_PUBLIC_URL="/mail"))


def test_refuses_a_plain_http_public_url() -> None:
    message = refusal(production(MAILFLEET_PUBLIC_URL="http://mail.example.com"))
    assert "MAILFLEET_PUBLIC_URL" in message and "https://" in message


def test_refuses_sendgrid_without_webhook_verification_key() -> None:
    message = refusal(production(SENDGRID_WEBHOOK_VERIFICATION_KEY=""))
    assert "SENDGRID_WEBHOOK_VERIFICATION_KEY" in message


@pytest.mark.parametrize("default_provider", ["smtp", "sendgrid"])
def test_refuses_smtp_without_tls(default_provider: str) -> None:
    """Also when SMTP is not the default: a campaign may name it as its provider."""
    insecure = production(
        MAILFLEET_DEFAULT_PROVIDER=default_provider,
        SMTP_STARTTLS=False,
        SMTP_TLS="none",
        SMTP_PORT=25,
    )
    assert "SMTP_TLS" in refusal(insecure)


def test_refuses_without_bootstrap_admin_credentials() -> None:
    assert "MAILFLEET_BOOTSTRAP_API_KEY" in refusal(production(MAILFLEET_BOOTSTRAP_API_KEY=""))


def test_refuses_plaintext_kafka_unless_acknowledged() -> None:
    assert "KAFKA_SECURITY_PROTOCOL" in refusal(production(KAFKA_SECURITY_PROTOCOL="PLAINTEXT"))
    acknowledged = production(
        KAFKA_SECURITY_PROTOCOL="PLAINTEXT", MAILFLEET_KAFKA_ALLOW_PLAINTEXT=True
    )
    assert production_problems(acknowledged) == []


def test_a_service_process_refuses_to_start() -> None:
    """The real start path: `mailfleet run scheduler` exits at once with the reason."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILFLEET_", "KAFKA_"))}
    env.update(
        {
            "MAILFLEET_ENV": "production",
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", "from libs.common.cli import main; main()", "run", "scheduler"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "MAILFLEET_SECRET_KEY" in done.stderr
    assert "MAILFLEET_PUBLIC_URL" in done.stderr
