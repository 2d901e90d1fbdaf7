"""How every Kafka client connects: bootstrap servers and transport security, in one place.

Every aiokafka producer, consumer and admin client is built with
`**kafka_connection_options(settings)`, so a protocol, SASL mechanism or CA file set once
reaches all of them.
"""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from libs.common.settings import Settings


def kafka_connection_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient.

    SSL and SASL_SSL verify the brokers' certificates and host names against
    KAFKA_SSL_CAFILE (or the system CAs when it is empty). SASL over plaintext is not
    offered: it would send the password in clear.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol == "PLAINTEXT":
        return options
    options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_security_protocol == "SASL_SSL":
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return options
