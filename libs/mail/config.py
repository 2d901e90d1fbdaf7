"""Dispatcher-only settings, read from the environment next to the shared `Settings`.

Kept here until they prove useful to other services; each has an env var like the rest.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.mail.throttles import ThrottlePolicy, WarmupSchedule


class DispatcherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # Global sending rates (emails/s) shared by all dispatcher instances; 0 = unlimited.
    sendgrid_rate_per_sec: float = Field(0.0, alias="SENDGRID_RATE_PER_SEC", ge=0)
    smtp_rate_per_sec: float = Field(0.0, alias="SMTP_RATE_PER_SEC", ge=0)
    sink_rate_per_sec: float = Field(0.0, alias="MAILFLEET_SINK_RATE_PER_SEC", ge=0)
    smtp_max_connections: int = Field(8, alias="SMTP_MAX_CONNECTIONS", ge=1, le=256)
    smtp_timeout_s: float = Field(30.0, alias="SMTP_TIMEOUT_SECONDS", gt=0)

    # Retries of one provider request (5xx, 429, timeouts, connection errors).
    provider_max_attempts: int = Field(6, alias="MAILFLEET_PROVIDER_MAX_ATTEMPTS", ge=1)
    provider_retry_initial_s: float = Field(0.2, alias="MAILFLEET_PROVIDER_RETRY_INITIAL_S", gt=0)
    provider_retry_max_s: float = Field(10.0, alias="MAILFLEET_PROVIDER_RETRY_MAX_S", gt=0)
    provider_timeout_s: float = Field(30.0, alias="MAILFLEET_PROVIDER_TIMEOUT_S", gt=0)

    # Failover: batches of a provider whose circuit breaker is open go to this one ("" = none).
    fallback_provider: Literal["", "sink", "sendgrid", "smtp"] = Field(
        "", alias="MAILFLEET_FALLBACK_PROVIDER"
    )
    # Consecutive failed requests (5xx, timeouts, connection errors) that open the breaker,
    # and how long it stays open before traffic is tried again.
    breaker_failures: int = Field(5, alias="MAILFLEET_BREAKER_FAILURES", ge=1)
    breaker_cooldown_s: float = Field(30.0, alias="MAILFLEET_BREAKER_COOLDOWN_S", gt=0)

    # How often the status of the campaigns being sent is re-read (pause/cancel latency).
    campaign_status_refresh_s: float = Field(0.5, alias="MAILFLEET_CAMPAIGN_STATUS_REFRESH_S", gt=0)

    # RFC 8058 unsubscribe: `mailto:` alternative in List-Unsubscribe when set.
    unsubscribe_mailto: str = Field("", alias="MAILFLEET_UNSUBSCRIBE_MAILTO")

    # The dispatchers' consumer group on `batch.ready`: one per fleet sharing a broker.
    consumer_group: str = Field(
        "dispatcher", alias="MAILFLEET_DISPATCHER_GROUP", min_length=1, max_length=200
    )
    # A claim in the send ledger is a lease of this length, renewed while the batch is sent;
    # another instance takes a `sending` row over (its unrecorded recipients `unknown`) only
    # once the lease has expired by the database's clock. The old name is still read.
    ledger_lease_s: float = Field(
        20.0,
        validation_alias=AliasChoices(
            "MAILFLEET_LEDGER_LEASE_S", "MAILFLEET_LEDGER_TAKEOVER_WAIT_S", "ledger_lease_s"
        ),
        ge=0.5,
        le=3600,
    )
    # Batches one instance has claimed and is sending at once (past the rate-limit wait).
    # Each one in flight when an instance is killed ends `unknown`: keep it small.
    max_batches_sending: int = Field(1, alias="MAILFLEET_MAX_BATCHES_SENDING", ge=1, le=64)
    # Batches one instance sends at once, over all its partitions (and the most records one
    # fetch may hand over, so that a slow provider's backlog never outlasts the consumer's
    # poll interval). Without a bound they are all rendered at once (memory) and each
    # waits longer for its turn.
    max_batches_in_flight: int = Field(24, alias="MAILFLEET_MAX_BATCHES_IN_FLIGHT", ge=1, le=1000)
    # Threads that render batches (user templates) off the event loop. Rendering holds the
    # GIL: more threads than cores only share the same CPU.
    render_threads: int = Field(2, alias="MAILFLEET_RENDER_THREADS", ge=1, le=32)
    # How often each instance writes its providers' breaker, rate limit and last error to
    # the provider_status table (shown on the console's Settings page).
    provider_status_every_s: float = Field(
        5.0, alias="MAILFLEET_PROVIDER_STATUS_EVERY_S", ge=0.05, le=60
    )

    # Per-domain throttles (issue 14 item 4): `[provider.]group:per_minute/per_hour` entries
    # over the defaults (`libs.mail.throttles.DEFAULT_LIMITS`), or a JSON object; `off`: none.
    domain_throttles: str = Field("", alias="MAILFLEET_DOMAIN_THROTTLES", max_length=4000)
    # Day-by-day limits of a new From domain, e.g. `1000,2000,5000,10000,20000,50000`, then
    # unlimited; empty: no warm-up.
    warmup_schedule: str = Field("", alias="MAILFLEET_WARMUP_SCHEDULE", max_length=4000)
    # The throttles' "minute" in seconds (an hour is 60 of them); shorter only in tests.
    throttle_minute_s: int = Field(60, alias="MAILFLEET_THROTTLE_MINUTE_S", ge=1, le=60)
    # How long one handling of a batch waits for a domain throttle before the batch is put
    # back on `batch.ready`: well under the consumer's max.poll.interval (300 s).
    throttle_max_wait_s: float = Field(120.0, alias="MAILFLEET_THROTTLE_MAX_WAIT_S", ge=1, le=240)

    # Which consumer loops this instance runs: `all` (campaign batches and transactional
    # messages), `batches` or `messages` (a fleet of its own for transactional mail, so
    # that no campaign's CPU load shares its process).
    lanes: Literal["all", "batches", "messages"] = Field("all", alias="MAILFLEET_DISPATCHER_LANES")

    @field_validator("domain_throttles")
    @classmethod
    def _check_throttles(cls, value: str) -> str:
        ThrottlePolicy.parse(value)  # a ValueError names the bad entry
        return value

    @field_validator("warmup_schedule")
    @classmethod
    def _check_warmup(cls, value: str) -> str:
        WarmupSchedule.parse(value)
        return value

    def throttle_policy(self) -> ThrottlePolicy:
        return ThrottlePolicy.parse(self.domain_throttles)

    def warmup(self) -> WarmupSchedule:
        return WarmupSchedule.parse(self.warmup_schedule)


@lru_cache(maxsize=1)
def get_dispatcher_settings() -> DispatcherSettings:
    return DispatcherSettings()
