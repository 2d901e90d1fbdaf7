"""Kafka transport security: the protocol, SASL and CA settings reach every client."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from libs.common import kafka
from libs.common.events import Topic
from libs.common.kafka import EventConsumer, EventProducer, ensure_topics
from libs.common.kafka_security import kafka_connection_options
from libs.common.settings import Settings
from services.dispatcher import control_feed
from services.dispatcher.campaign_status import CampaignStatuses


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def secured(ca_file: Path, mechanism: str = "SCRAM-SHA-256") -> Settings:
    return Settings(  # type: ignore[call-arg]
        KAFKA_BOOTSTRAP_SERVERS="broker-1:9093",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="mailfleet",
        KAFKA_SASL_PASSWORD="s3cret",
        KAFKA_SSL_CAFILE=str(ca_file),
    )


def assert_secured(client: Any, mechanism: str = "SCRAM-SHA-256") -> None:
    """`client` is aiokafka's AIOKafkaClient inside a producer, consumer or admin."""
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == mechanism
    assert client._sasl_plain_username == "mailfleet"
    assert client._sasl_plain_password == "s3cret"
    context: ssl.SSLContext = client._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any("Testing CA" in str(cert.get("subject")) for cert in context.get_ca_certs())


def test_plaintext_is_the_development_default() -> None:
    options = kafka_connection_options(Settings(KAFKA_BOOTSTRAP_SERVERS="k:9092"))  # type: ignore[call-arg]
    assert options == {"bootstrap_servers": "k:9092", "security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_mechanisms(ca_file: Path, mechanism: str) -> None:
    options = kafka_connection_options(secured(ca_file, mechanism))
    assert options["sasl_mechanism"] == mechanism


def test_ssl_without_sasl_verifies_against_the_ca_file(ca_file: Path) -> None:
    settings = secured(ca_file).model_copy(update={"kafka_security_protocol": "SSL"})
    options = kafka_connection_options(settings)
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_a_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        kafka_connection_options(secured(tmp_path / "absent.pem"))


async def test_options_reach_the_producer_and_the_consumer(ca_file: Path) -> None:
    settings = secured(ca_file)
    producer = EventProducer(settings)
    assert_secured(producer._producer.client)
    consumer: EventConsumer[Any] = EventConsumer(settings, Topic.BATCH_READY, "g", producer)
    assert_secured(consumer.consumer._client)


class _Built(Exception):
    """Stops a function right after it built its client."""


def _recorder(seen: dict[str, Any]) -> Any:
    def build(*topics: str, **options: Any) -> Any:
        seen.update(options)
        raise _Built

    return build


async def test_options_reach_the_admin_client(
    ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", _recorder(seen))
    with pytest.raises(_Built):
        await ensure_topics(secured(ca_file))
    assert seen["security_protocol"] == "SASL_SSL"
    assert seen["sasl_plain_username"] == "mailfleet"


async def test_options_reach_the_dispatchers_control_feed(
    ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(control_feed, "AIOKafkaConsumer", _recorder(seen))
    with pytest.raises(_Built):
        await control_feed.follow_control_events(
            secured(ca_file),
            CampaignStatuses.__new__(CampaignStatuses),
            None,  # type: ignore[arg-type]
        )
    assert seen["security_protocol"] == "SASL_SSL"
    assert seen["sasl_mechanism"] == "SCRAM-SHA-256"
