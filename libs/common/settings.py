"""All configuration, read from the environment: one settings class for every service."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderName = Literal["sink", "sendgrid", "smtp"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # Infrastructure. Empty means "embedded": `mailfleet dev` starts a local broker/database.
    database_url: str = Field("", alias="DATABASE_URL")
    kafka_bootstrap_servers: str = Field("", alias="KAFKA_BOOTSTRAP_SERVERS")
    db_pool_size: int = Field(10, alias="MAILFLEET_DB_POOL_SIZE", ge=2, le=200)

    # HTTP.
    api_host: str = Field("127.0.0.1", alias="MAILFLEET_API_HOST")
    api_port: int = Field(8000, alias="MAILFLEET_API_PORT")
    public_url: str = Field("", alias="MAILFLEET_PUBLIC_URL")
    bootstrap_api_key: str = Field("", alias="MAILFLEET_BOOTSTRAP_API_KEY")
    metrics_port: int = Field(0, alias="MAILFLEET_METRICS_PORT")
    max_upload_bytes: int = Field(200 * 1024 * 1024, alias="MAILFLEET_MAX_UPLOAD_BYTES", gt=0)
    secret_key: str = Field("", alias="MAILFLEET_SECRET_KEY")

    # Admin console (services/api/console): the first admin, and how long a sign-in lasts.
    admin_email: str = Field("", alias="MAILFLEET_ADMIN_EMAIL", max_length=320)
    admin_password: str = Field("", alias="MAILFLEET_ADMIN_PASSWORD", max_length=1024)
    console_idle_timeout_seconds: int = Field(
        1800, alias="MAILFLEET_CONSOLE_IDLE_TIMEOUT_SECONDS", ge=60
    )
    console_absolute_timeout_seconds: int = Field(
        12 * 3600, alias="MAILFLEET_CONSOLE_ABSOLUTE_TIMEOUT_SECONDS", ge=60
    )

    # Sending.
    default_provider: ProviderName = Field("sink", alias="MAILFLEET_DEFAULT_PROVIDER")
    sendgrid_api_key: str = Field("", alias="SENDGRID_API_KEY")
    sendgrid_api_url: str = Field("https://api.sendgrid.com", alias="SENDGRID_API_URL")
    # Base64 public key of the signed Event Webhook, as SendGrid shows it. Empty: webhook
    # posts are refused (see MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS for local setups).
    sendgrid_webhook_verification_key: str = Field("", alias="SENDGRID_WEBHOOK_VERIFICATION_KEY")
    sink_url: str = Field("http://127.0.0.1:8025", alias="MAILFLEET_SINK_URL")
    smtp_host: str = Field("localhost", alias="SMTP_HOST")
    smtp_port: int = Field(25, alias="SMTP_PORT")
    smtp_username: str = Field("", alias="SMTP_USERNAME")
    smtp_password: str = Field("", alias="SMTP_PASSWORD")
    # "auto": implicit TLS on port 465, STARTTLS on any other; "none" for a local relay
    # only. The server's certificate is always verified (system CAs plus SMTP_CA_FILE).
    smtp_tls: Literal["auto", "starttls", "implicit", "none"] = Field("auto", alias="SMTP_TLS")
    smtp_ca_file: str = Field("", alias="SMTP_CA_FILE")
    provider_concurrency: int = Field(8, alias="MAILFLEET_PROVIDER_CONCURRENCY", ge=1, le=256)
    delivery_mode: Literal["at_most_once", "at_least_once"] = Field(
        "at_most_once", alias="MAILFLEET_DELIVERY"
    )

    # A campaign ends `failed` when more than this share of its audience failed.
    failure_threshold: float = Field(0.2, alias="MAILFLEET_FAILURE_THRESHOLD", ge=0, le=1)

    # User templates, per message: CPU time of its render, and bytes of its subject, HTML
    # and text together. Past either the message fails alone (preview/schedule: 422).
    render_timeout_ms: int = Field(100, alias="MAILFLEET_RENDER_TIMEOUT_MS", ge=1, le=60_000)
    render_max_bytes: int = Field(
        2 * 1024 * 1024, alias="MAILFLEET_RENDER_MAX_BYTES", ge=1024, le=64 * 1024 * 1024
    )

    # Planning.
    batch_size: int = Field(500, alias="MAILFLEET_BATCH_SIZE", ge=1, le=1000)
    default_timezone: str = Field("UTC", alias="MAILFLEET_DEFAULT_TIMEZONE")
    scheduler_tick_seconds: float = Field(0.5, alias="MAILFLEET_SCHEDULER_TICK_SECONDS", gt=0)
    # A batch emitted this long ago and still not accounted for by the tracker is emitted
    # again (the send ledger keeps the re-emission from mailing anyone twice).
    reemit_after_seconds: float = Field(300.0, alias="MAILFLEET_REEMIT_AFTER_SECONDS", gt=0)

    # Kafka topic partition counts (created at start by every service).
    batch_ready_partitions: int = Field(12, alias="MAILFLEET_BATCH_READY_PARTITIONS", ge=1)
    default_partitions: int = Field(6, alias="MAILFLEET_DEFAULT_PARTITIONS", ge=1)
    replication_factor: int = Field(1, alias="MAILFLEET_REPLICATION_FACTOR", ge=1)
    # Tansu (and Kafka with defaults) answer a waiting fetch only at this deadline: keep it
    # short so that one campaign's stages hand over quickly.
    kafka_fetch_max_wait_ms: int = Field(100, alias="MAILFLEET_KAFKA_FETCH_MAX_WAIT_MS", ge=1)
    kafka_session_timeout_ms: int = Field(6000, alias="MAILFLEET_KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = Field(1000, alias="MAILFLEET_KAFKA_HEARTBEAT_MS")

    # Public edge (services/edge): unsubscribe links and provider webhooks, the only part
    # that faces the internet. MAILFLEET_PUBLIC_URL is the edge's public URL.
    edge_host: str = Field("127.0.0.1", alias="MAILFLEET_EDGE_HOST")
    edge_port: int = Field(8001, alias="MAILFLEET_EDGE_PORT", ge=1, le=65535)
    # Accept webhook posts without a signature when no verification key is set. Local and
    # test setups only: refused in production, warned about at start.
    allow_unsigned_webhooks: bool = Field(False, alias="MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS")
    # "production" refuses insecure settings (the production profile owns the full list;
    # on merge keep ONE field for MAILFLEET_ENV).
    env: Literal["development", "production"] = Field("development", alias="MAILFLEET_ENV")

    # Logging.
    log_level: str = Field("INFO", alias="MAILFLEET_LOG_LEVEL")

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}, e.g. 'Europe/Berlin'") from exc
        return value

    def public_base_url(self) -> str:
        """Where unsubscribe links point: the edge, at its public URL when one is set."""
        return self.public_url or f"http://{self.edge_host}:{self.edge_port}"

    def require_infrastructure(self) -> None:
        """Fail with a clear message when a service is started without broker or database."""
        missing = [
            name
            for name, value in (
                ("DATABASE_URL", self.database_url),
                ("KAFKA_BOOTSTRAP_SERVERS", self.kafka_bootstrap_servers),
            )
            if not value
        ]
        if missing:
            raise SystemExit(
                f"{', '.join(missing)} not set: run the whole stack with `mailfleet dev` "
                "(embedded broker and database) or set them to your servers."
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
