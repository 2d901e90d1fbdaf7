"""All configuration, read from the environment: one settings class for every service."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderName = Literal["sink", "sendgrid", "smtp"]

DEFAULT_UNSUBSCRIBE_FOOTER = (
    '<p style="font-size:12px;color:#666666;text-align:center">'
    "You receive this email because you are on our list. "
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)


class DkimKeyConfig(BaseModel):
    """One entry of MAILFLEET_DKIM_KEYS: a From domain, its selector, a PEM private key."""

    domain: str = Field(min_length=1, max_length=253)
    selector: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")
    key_file: str = Field(min_length=1, max_length=4096)


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

    # Sending.
    default_provider: ProviderName = Field("sink", alias="MAILFLEET_DEFAULT_PROVIDER")
    sendgrid_api_key: str = Field("", alias="SENDGRID_API_KEY")
    sendgrid_api_url: str = Field("https://api.sendgrid.com", alias="SENDGRID_API_URL")
    # Base64 public key of the signed Event Webhook, as SendGrid shows it. Empty: unsigned
    # webhook posts are accepted (local and test setups only).
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

    # --- Deliverability (issue 14 items 3 and 6; owner: DKIM / sender check) ---
    # JSON list of {"domain", "selector", "key_file"}: SMTP mail from `domain` is signed
    # with that PEM key (RSA or Ed25519; two entries for one domain give two signatures).
    dkim_keys: list[DkimKeyConfig] = Field(default_factory=list, alias="MAILFLEET_DKIM_KEYS")
    # Appended to every HTML body whose template lacks {{ unsubscribe_url }}.
    unsubscribe_footer: str = Field(
        DEFAULT_UNSUBSCRIBE_FOOTER, alias="MAILFLEET_UNSUBSCRIBE_FOOTER", max_length=10_000
    )
    # The sender check's resolver: comma-separated IPs ("" = the system's resolv.conf).
    dns_nameservers: str = Field("", alias="MAILFLEET_DNS_NAMESERVERS", max_length=1000)
    dns_port: int = Field(53, alias="MAILFLEET_DNS_PORT", ge=1, le=65535)
    # Per sender check (all its queries); scheduling never waits longer than this on DNS.
    dns_timeout_s: float = Field(2.0, alias="MAILFLEET_DNS_TIMEOUT_S", gt=0, le=30)
    # Where bounces go (its MX is checked); "" = the From domain.
    bounce_domain: str = Field("", alias="MAILFLEET_BOUNCE_DOMAIN", max_length=253)
    # --- end deliverability ---

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

    @field_validator("dns_nameservers")
    @classmethod
    def _nameserver_ips(cls, value: str) -> str:
        for server in filter(None, (s.strip() for s in value.split(","))):
            try:
                ipaddress.ip_address(server)
            except ValueError as exc:
                raise ValueError(
                    f"MAILFLEET_DNS_NAMESERVERS: {server!r} is not an IP address"
                ) from exc
        return value

    @field_validator("unsubscribe_footer")
    @classmethod
    def _footer_links(cls, value: str) -> str:
        # Bulk-sender rules (Gmail, Yahoo) want a visible unsubscribe link in every body.
        if "unsubscribe_url" not in value:
            raise ValueError("MAILFLEET_UNSUBSCRIBE_FOOTER must contain {{ unsubscribe_url }}")
        return value

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
