"""Kafka client settings from the config, for librdkafka and for the worker's aiokafka (no broker needed;
tests/integration/test_security.py connects with them)."""

from __future__ import annotations

import ssl

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from processors.config import ConfigError, KafkaSettings
from streams.app import broker_credentials
from streams.topics import kafka_client_config


def test_plaintext_has_no_security_settings() -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9092")
    assert kafka_client_config(kafka) == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    assert credentials_to_aiokafka_auth(broker_credentials(kafka)) == {"security_protocol": "PLAINTEXT"}


def test_ssl_files_reach_librdkafka() -> None:
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile="/tls/ca.pem", ssl_certfile="/tls/client.pem",
                          ssl_keyfile="/tls/client.key")
    config = kafka_client_config(kafka)
    assert config["security.protocol"] == "SSL"
    assert (config["ssl.ca.location"], config["ssl.certificate.location"], config["ssl.key.location"]) == (
        "/tls/ca.pem", "/tls/client.pem", "/tls/client.key")


@pytest.mark.parametrize(("protocol", "with_tls"), [("SASL_SSL", True), ("SASL_PLAINTEXT", False)])
def test_sasl_settings_for_both_clients(protocol: str, with_tls: bool) -> None:
    kafka = KafkaSettings(security_protocol=protocol, sasl_mechanism="SCRAM-SHA-512", sasl_username="npspulse",
                          sasl_password="from-the-env")
    config = kafka_client_config(kafka)
    assert {key: config[key] for key in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password")} == {
        "security.protocol": protocol, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "npspulse",
        "sasl.password": "from-the-env"}
    credentials = broker_credentials(kafka)
    assert "from-the-env" not in repr(credentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_username"]) == (
        protocol, "SCRAM-SHA-512", "npspulse")
    context = auth["ssl_context"]
    assert (context is not None) == with_tls
    if with_tls:
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_sasl_without_username_names_the_fix() -> None:
    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_password="from-the-env")
    with pytest.raises(ConfigError) as caught:
        kafka_client_config(kafka)
    assert caught.value.field == "kafka.sasl_username"
    assert "NPSPULSE_KAFKA_SASL_USERNAME" in caught.value.fix
