"""All configuration, read from the environment: one settings class for every service."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from libs.webhooks.targets import TargetPolicy

ProviderName = Literal["sink", "sendgrid", "smtp"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """Comma-separated addresses or CIDRs (MAILFLEET_TRUSTED_PROXIES); ValueError if bad."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP address or CIDR, e.g. 10.0.0.0/8") from exc
    return tuple(networks)


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
    # The niceness the event-driven services (dispatcher, tracker, importer, scheduler,
    # guard, ...) give their process at start. Under CPU contention on one host the API and
    # the edge, which people and mailbox clients wait on, run first; alone, bulk work runs
    # at full speed (niceness only orders who waits). 0 leaves the priority alone.
    bulk_nice: int = Field(10, alias="MAILFLEET_BULK_NICE", ge=0, le=19)
    # How long a background service may take to stop after SIGTERM before it logs what is
    # still running and exits anyway. Under Kubernetes' default grace period (30 s; the chart
    # gives 45 s), so that the log says what hung rather than a bare SIGKILL.
    shutdown_budget_s: float = Field(25.0, alias="MAILFLEET_SHUTDOWN_BUDGET_S", gt=0, le=3600)

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
    # Topics are created with this `max.message.bytes`; `batch.ready` events are cut to
    # fit under it (issue 11, item 8). Kafka's own default is about 1 MiB.
    kafka_max_message_bytes: int = Field(
        1024 * 1024, alias="MAILFLEET_KAFKA_MAX_MESSAGE_BYTES", ge=64 * 1024, le=64 * 1024 * 1024
    )
    # A handler that raises is retried this many times, the pause doubling from the backoff,
    # before its record goes to the dead-letter topic (a database outage is waited out
    # instead, however long: it is not the record's fault).
    handler_max_attempts: int = Field(5, alias="MAILFLEET_HANDLER_MAX_ATTEMPTS", ge=1, le=100)
    handler_retry_backoff_s: float = Field(
        0.5, alias="MAILFLEET_HANDLER_RETRY_BACKOFF_S", gt=0, le=60
    )

    # Public edge (services/edge): unsubscribe links and provider webhooks, the only part
    # that faces the internet. MAILFLEET_PUBLIC_URL is the edge's public URL.
    edge_host: str = Field("127.0.0.1", alias="MAILFLEET_EDGE_HOST")
    edge_port: int = Field(8001, alias="MAILFLEET_EDGE_PORT", ge=1, le=65535)
    # Accept webhook posts without a signature when no verification key is set. Local and
    # test setups only: refused in production, warned about at start.
    allow_unsigned_webhooks: bool = Field(False, alias="MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS")
    # The public subscribe form (`POST /s/{list public id}`): posts per client IP per
    # minute, and per address per hour (in-memory token buckets in each edge process; the
    # durable cap of one confirmation email per address per hour is the importer's).
    subscribe_per_ip_per_minute: int = Field(
        10, alias="MAILFLEET_SUBSCRIBE_PER_IP_PER_MINUTE", ge=1, le=100_000
    )
    subscribe_per_address_per_hour: int = Field(
        3, alias="MAILFLEET_SUBSCRIBE_PER_ADDRESS_PER_HOUR", ge=1, le=1000
    )
    # ----- Bounces and complaints (issue 14 item 2) -----
    # The domain of the VERP envelope sender `bounces+<token>@<domain>` set on SMTP mail (its
    # MX must deliver into the bounce mailbox). Empty: the From address is the envelope
    # sender, and asynchronous bounces are matched by Message-ID only.
    bounce_domain: str = Field("", alias="MAILFLEET_BOUNCE_DOMAIN")
    # The bounce mailbox, polled over IMAP by `mailfleet run bounces`. Empty host: no poller.
    bounce_imap_host: str = Field("", alias="MAILFLEET_BOUNCE_IMAP_HOST")
    bounce_imap_port: int = Field(993, alias="MAILFLEET_BOUNCE_IMAP_PORT", ge=1, le=65535)
    # "implicit" (IMAPS, port 993) or "none" (a local server only).
    bounce_imap_tls: Literal["implicit", "none"] = Field(
        "implicit", alias="MAILFLEET_BOUNCE_IMAP_TLS"
    )
    bounce_imap_user: str = Field("", alias="MAILFLEET_BOUNCE_IMAP_USER")
    bounce_imap_password: str = Field("", alias="MAILFLEET_BOUNCE_IMAP_PASSWORD")
    bounce_imap_mailbox: str = Field("INBOX", alias="MAILFLEET_BOUNCE_IMAP_MAILBOX")
    # Read reports are moved here; mail that is neither a DSN nor an ARF report, or names
    # no delivery, goes to the second folder for a human to look at.
    bounce_processed_folder: str = Field("Processed", alias="MAILFLEET_BOUNCE_PROCESSED_FOLDER")
    bounce_unparsed_folder: str = Field("Unparsed", alias="MAILFLEET_BOUNCE_UNPARSED_FOLDER")
    bounce_poll_seconds: float = Field(30.0, alias="MAILFLEET_BOUNCE_POLL_SECONDS", gt=0)
    # An address is suppressed after this many soft bounces in a row (a hard bounce at once).
    soft_bounce_limit: int = Field(3, alias="MAILFLEET_SOFT_BOUNCE_LIMIT", ge=1, le=100)
    # ----- end of bounces and complaints -----

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
    # The sender check looks up the MX of MAILFLEET_BOUNCE_DOMAIN (see the bounces block).
    # --- end deliverability ---

    # --- Own open and click tracking (issue 14 item 1) ---
    # A click this soon after the message was rendered for sending is a link scanner's
    # (security gateways follow every link on arrival): kept, flagged `machine`.
    tracking_scanner_seconds: float = Field(
        10.0, alias="MAILFLEET_TRACKING_SCANNER_SECONDS", ge=0, le=3600
    )
    # --- end tracking ---
    # --- Reputation guard (issue 14 item 5; services/guard) ---
    # Sliding windows of `window` seconds, hopping every `hop` seconds, over delivery.result
    # and delivery.event. A campaign is paused when a rate is above its maximum once the
    # window holds at least the minimum volume. 0 turns a rate's check off. A campaign may
    # override each value (API field `guard`).
    guard_window_seconds: int = Field(300, alias="MAILFLEET_GUARD_WINDOW_SECONDS", ge=10, le=86400)
    guard_hop_seconds: float = Field(30.0, alias="MAILFLEET_GUARD_HOP_SECONDS", ge=0.1, le=3600)
    guard_max_hard_bounce_rate: float = Field(
        0.05, alias="MAILFLEET_GUARD_MAX_HARD_BOUNCE_RATE", ge=0, le=1
    )
    guard_min_sends: int = Field(1000, alias="MAILFLEET_GUARD_MIN_SENDS", ge=1, le=10_000_000)
    guard_max_complaint_rate: float = Field(
        0.001, alias="MAILFLEET_GUARD_MAX_COMPLAINT_RATE", ge=0, le=1
    )
    guard_min_delivered: int = Field(
        1000, alias="MAILFLEET_GUARD_MIN_DELIVERED", ge=1, le=10_000_000
    )
    guard_max_deferral_rate: float = Field(
        0.0, alias="MAILFLEET_GUARD_MAX_DEFERRAL_RATE", ge=0, le=1
    )
    guard_max_provider_error_rate: float = Field(
        0.0, alias="MAILFLEET_GUARD_MAX_PROVIDER_ERROR_RATE", ge=0, le=1
    )
    # After an admin resumes a campaign the guard paused, the guard leaves it alone this long.
    guard_hold_off_seconds: float = Field(
        900.0, alias="MAILFLEET_GUARD_HOLD_OFF_SECONDS", ge=0, le=7 * 86400
    )
    # --- end of reputation guard ---

    # --- Transactional messages (issue 18 item 1) ---
    # Categories an admin marks essential (receipts, password resets): their messages
    # ignore unsubscribes (and carry no List-Unsubscribe), never hard bounces, complaints or
    # manual suppressions. Comma-separated, lower-case.
    essential_categories: str = Field(
        "receipt,password_reset,security,account",
        alias="MAILFLEET_ESSENTIAL_CATEGORIES",
        max_length=2000,
        pattern=r"^[a-z0-9_.,-]*$",
    )
    # Messages one dispatcher sends at once on its `message.requested` lane.
    message_concurrency: int = Field(64, alias="MAILFLEET_MESSAGE_CONCURRENCY", ge=1, le=1000)
    # The lane's fetch wait: the broker answers a waiting fetch after this (latency floor).
    message_fetch_max_wait_ms: int = Field(
        10, alias="MAILFLEET_MESSAGE_FETCH_MAX_WAIT_MS", ge=1, le=1000
    )
    # --- end transactional ---

    # Logging.
    log_level: str = Field("INFO", alias="MAILFLEET_LOG_LEVEL")

    # --- Security (issue 12 items 4, 5, 6, 9; see "Production profile" in README.md) ---
    # "production" makes every service refuse to start on an insecure setting
    # (`check_production`); compose and Helm set it. `mailfleet dev` keeps the default.
    environment: Literal["development", "production"] = Field("development", alias="MAILFLEET_ENV")
    # Comma-separated addresses or CIDRs of the reverse proxies in front of the API: only
    # their X-Forwarded-For is believed. Empty: forwarded headers are ignored.
    trusted_proxies: str = Field("", alias="MAILFLEET_TRUSTED_PROXIES", max_length=4000)
    # Kafka transport security, applied to every producer, consumer and admin client
    # (`libs/common/kafka_security.py`).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT", alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str = Field("", alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: str = Field("", alias="KAFKA_SASL_PASSWORD")
    # Production refuses PLAINTEXT unless this says the broker is on a private network
    # nobody else reaches (compose's own broker).
    kafka_allow_plaintext: bool = Field(False, alias="MAILFLEET_KAFKA_ALLOW_PLAINTEXT")
    # PEM bundle of the CA that signed the brokers' certificates; empty: the system CAs.
    kafka_ssl_cafile: str = Field("", alias="KAFKA_SSL_CAFILE")
    # Rejected import rows (they hold personal data) are deleted this many days after
    # their import finished.
    import_rejections_retention_days: int = Field(
        30, alias="MAILFLEET_IMPORT_REJECTIONS_RETENTION_DAYS", ge=1, le=3650
    )
    # --- end of security settings ---

    @field_validator("guard_hop_seconds")
    @classmethod
    def _hop_within_window(cls, value: float, info: ValidationInfo) -> float:
        window = info.data.get("guard_window_seconds")
        if window is not None and value > window:
            raise ValueError(
                f"MAILFLEET_GUARD_HOP_SECONDS ({value}) must not exceed"
                f" MAILFLEET_GUARD_WINDOW_SECONDS ({window})"
            )
        return value

    # --- Outbound webhooks (issue 18 item 3; services/webhooks) ---
    # Comma-separated CIDRs and host names webhooks may reach besides public addresses
    # (private, loopback, link-local and other special ranges are refused by default).
    webhook_allowed_targets: str = Field(
        "", alias="MAILFLEET_WEBHOOK_ALLOWED_TARGETS", max_length=4000
    )
    # PEM bundle of extra CAs trusted for endpoints' certificates (beside the system's).
    webhook_ca_file: str = Field("", alias="MAILFLEET_WEBHOOK_CA_FILE", max_length=4096)
    # Plain http:// endpoints, for local setups only: refused in production.
    webhook_allow_http: bool = Field(False, alias="MAILFLEET_WEBHOOK_ALLOW_HTTP")
    webhook_timeout_s: float = Field(10.0, alias="MAILFLEET_WEBHOOK_TIMEOUT_S", gt=0, le=60)
    # Retries: the n-th waits base * 2**(n-1) up to the cap; given up after the window.
    webhook_backoff_base_s: float = Field(
        5.0, alias="MAILFLEET_WEBHOOK_BACKOFF_BASE_S", gt=0, le=3600
    )
    webhook_backoff_cap_s: float = Field(
        3600.0, alias="MAILFLEET_WEBHOOK_BACKOFF_CAP_S", gt=0, le=86400
    )
    webhook_retry_window_s: float = Field(
        86400.0, alias="MAILFLEET_WEBHOOK_RETRY_WINDOW_S", gt=0, le=7 * 86400
    )
    # An endpoint is disabled after this many failed attempts in a row (none succeeding).
    webhook_disable_after_failures: int = Field(
        100, alias="MAILFLEET_WEBHOOK_DISABLE_AFTER_FAILURES", ge=1, le=100_000
    )
    # Deliveries in flight at once (all endpoints), and how often the outbox is polled.
    webhook_concurrency: int = Field(16, alias="MAILFLEET_WEBHOOK_CONCURRENCY", ge=1, le=256)
    webhook_poll_s: float = Field(0.5, alias="MAILFLEET_WEBHOOK_POLL_S", gt=0, le=60)
    # Delivered and failed entries of the delivery log are deleted after this many days.
    webhook_log_retention_days: int = Field(
        30, alias="MAILFLEET_WEBHOOK_LOG_RETENTION_DAYS", ge=1, le=3650
    )
    # --- end of webhooks ---
    # The delivery log (deliveries, delivery_events) keeps a month while it is younger than
    # this many days, or one of its campaigns still sends; campaign stats are kept apart.
    delivery_retention_days: int = Field(
        400, alias="MAILFLEET_DELIVERY_RETENTION_DAYS", ge=1, le=36500
    )

    # ----- Automations (issue 18 item 2; services/automations) -----
    # How often due timers, the outbox and the broker epoch are looked at (real seconds).
    automations_tick_s: float = Field(0.5, alias="MAILFLEET_AUTOMATIONS_TICK_S", gt=0, le=60)
    # Runs advanced per transaction.
    automations_batch: int = Field(200, alias="MAILFLEET_AUTOMATIONS_BATCH", ge=1, le=10_000)
    # Test setups only (refused in production): the service's clock is the ISO-8601 instant
    # written in this file (re-read at each use), so tests move time for a process.
    automations_clock_file: str = Field(
        "", alias="MAILFLEET_AUTOMATIONS_CLOCK_FILE", max_length=4096
    )

    @field_validator("webhook_allowed_targets")
    @classmethod
    def _webhook_targets(cls, value: str) -> str:
        from libs.webhooks.targets import TargetPolicy

        try:
            TargetPolicy.parse(value, require_https=True)
        except ValueError as exc:
            raise ValueError(f"MAILFLEET_WEBHOOK_ALLOWED_TARGETS: {exc}") from exc
        return value

    def webhook_target_policy(self) -> TargetPolicy:
        from libs.webhooks.targets import TargetPolicy

        require_https = self.environment == "production" or not self.webhook_allow_http
        return TargetPolicy.parse(self.webhook_allowed_targets, require_https=require_https)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    def trusted_proxy_networks(self) -> tuple[IpNetwork, ...]:
        return parse_networks(self.trusted_proxies)

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

    def essential(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.essential_categories.split(",") if c.strip())

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
        check_production(self)


def _smtp_without_tls(settings: Settings) -> bool:
    return settings.smtp_tls == "none"


def _has_admin_credentials(settings: Settings) -> bool:
    # The console's first admin (e-mail and password) counts as much as a bootstrap key.
    console_admin = settings.admin_email and settings.admin_password
    return bool(settings.bootstrap_api_key or console_admin)


def production_problems(settings: Settings) -> list[str]:
    """What makes these settings unfit for production, each naming the variable to fix."""
    if settings.environment != "production":
        return []
    problems: list[str] = []
    if len(settings.secret_key) < 32:
        problems.append(
            "MAILFLEET_SECRET_KEY is missing or shorter than 32 characters: it signs "
            "unsubscribe links (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    url = urlsplit(settings.public_url)
    if url.scheme != "https" or not url.hostname:
        problems.append(
            f"MAILFLEET_PUBLIC_URL must be an absolute https:// URL (got {settings.public_url!r}): "
            "unsubscribe links are built on it"
        )
    if settings.default_provider == "sendgrid" and not settings.sendgrid_webhook_verification_key:
        problems.append(
            "SENDGRID_WEBHOOK_VERIFICATION_KEY is empty with the sendgrid provider: unsigned "
            "webhook posts could suppress any address"
        )
    # Whatever the default provider: a campaign may name smtp as its own.
    if _smtp_without_tls(settings):
        problems.append("SMTP_TLS (SMTP_STARTTLS) is off: mail through SMTP would leave in clear")
    if not _has_admin_credentials(settings):
        problems.append(
            "MAILFLEET_BOOTSTRAP_API_KEY is empty: give the first admin key (a generated key "
            "would have to be shown on a terminal a server does not have)"
        )
    if settings.kafka_security_protocol == "PLAINTEXT" and not settings.kafka_allow_plaintext:
        problems.append(
            "KAFKA_SECURITY_PROTOCOL is PLAINTEXT: use SSL or SASL_SSL (events carry addresses), "
            "or set MAILFLEET_KAFKA_ALLOW_PLAINTEXT=true for a broker on a private network"
        )
    if settings.webhook_allow_http:
        problems.append(
            "MAILFLEET_WEBHOOK_ALLOW_HTTP is on: webhooks (signed, but carrying addresses) "
            "would leave in clear; endpoints must be https://"
        )
    if settings.automations_clock_file:
        problems.append(
            "MAILFLEET_AUTOMATIONS_CLOCK_FILE is set: automations would run on a test clock"
        )
    if settings.kafka_security_protocol == "SASL_SSL" and not settings.kafka_sasl_username:
        problems.append("KAFKA_SASL_USERNAME is empty with KAFKA_SECURITY_PROTOCOL=SASL_SSL")
    return problems


def check_production(settings: Settings) -> None:
    """Called by every service at start: refuse to run production on an insecure setting."""
    problems = production_problems(settings)
    if problems:
        raise SystemExit(
            "MAILFLEET_ENV=production refuses to start:\n" + "\n".join(f"- {p}" for p in problems)
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
