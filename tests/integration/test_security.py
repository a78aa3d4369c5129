"""Kafka security on the real broker's SASL_SSL listener (SCRAM-SHA-512 and PLAIN, CA-verified TLS):
confluent-kafka through ``kafka_client_config``, aiokafka through the worker's ``broker_credentials``, and
the worker itself. No mocks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from processors.config import ConfigError, KafkaSettings
from processors.timeparse import parse_rfc3339_ms
from streams.app import broker_credentials
from streams.client import produce_files
from streams.simulate import SimulationSettings, parse_incident, simulate_to_file
from streams.topics import kafka_client_config

pytestmark = pytest.mark.kafka

MECHANISMS = ["SCRAM-SHA-512", "PLAIN"]
N_MESSAGES = 200


def _settings(listener, mechanism: str, **changes: str | None) -> KafkaSettings:
    fields = {"bootstrap_servers": listener.bootstrap, "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
              "sasl_username": listener.username, "sasl_password": listener.password, "ssl_cafile": listener.cafile}
    return KafkaSettings(**{**fields, **changes})


def _create_topic(kafka: KafkaSettings, topic: str, partitions: int = 3) -> AdminClient:
    admin = AdminClient(kafka_client_config(kafka))
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(timeout=30)
    return admin


def _connection_error(kafka: KafkaSettings, topic: str, code: int) -> list[KafkaError]:
    """Try to produce one record with these settings until the client reports an error with ``code``
    (at most 15 s); nothing may be delivered. Returns the errors the client reported."""
    errors: list[KafkaError] = []
    delivered: list[bool] = []
    producer = Producer({**kafka_client_config(kafka), "error_cb": errors.append})
    producer.produce(topic, value=b"x", on_delivery=lambda err, _msg: delivered.append(err is None))
    deadline = time.monotonic() + 15
    while not any(error.code() == code for error in errors) and time.monotonic() < deadline:
        producer.poll(0.2)
    producer.purge()
    producer.flush(5)
    assert not any(delivered)
    return errors


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_roundtrip_over_sasl_ssl(kafka_sasl_ssl, topic_name, mechanism: str) -> None:
    kafka = _settings(kafka_sasl_ssl, mechanism)
    config = kafka_client_config(kafka)
    assert config["ssl.ca.location"] == kafka_sasl_ssl.cafile
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == mechanism
    topic = topic_name("sasl-roundtrip")
    admin = _create_topic(kafka, topic)
    try:
        errors: list[KafkaError] = []
        producer = Producer({**config, "acks": "all", "enable.idempotence": True, "error_cb": errors.append})
        sent = {f"m-{i:04d}": orjson.dumps({"i": i, "mechanism": mechanism}) for i in range(N_MESSAGES)}
        for key, value in sent.items():
            producer.produce(topic, key=key.encode(), value=value)
        assert producer.flush(30) == 0
        assert not errors, errors

        consumer = Consumer({**config, "group.id": f"sasl-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                             "enable.auto.commit": False})
        received: Counter[str] = Counter()
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 30
            while sum(received.values()) < N_MESSAGES and time.monotonic() < deadline:
                for message in consumer.consume(num_messages=500, timeout=1.0):
                    assert message.error() is None, message.error()
                    assert message.value() == sent[message.key().decode()]
                    received[message.key().decode()] += 1
        finally:
            consumer.close()
        assert received == Counter(sent.keys())
    finally:
        admin.delete_topics([topic], operation_timeout=10)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_is_refused(kafka_sasl_ssl, topic_name, mechanism: str) -> None:
    kafka = _settings(kafka_sasl_ssl, mechanism, sasl_password=f"not-{kafka_sasl_ssl.password}")
    errors = _connection_error(kafka, topic_name("sasl-refused"), KafkaError._AUTHENTICATION)
    refused = [error for error in errors if error.code() == KafkaError._AUTHENTICATION]
    assert refused, errors
    assert "Authentication failed" in refused[0].str(), refused


def test_broker_certificate_is_verified(kafka_sasl_ssl, topic_name) -> None:
    """Without our CA (the system's CAs instead) the TLS handshake fails: verification is on."""
    kafka = _settings(kafka_sasl_ssl, "SCRAM-SHA-512", ssl_cafile=None)
    errors = _connection_error(kafka, topic_name("tls-unverified"), KafkaError._SSL)
    assert any(error.code() == KafkaError._SSL and "certificate verify failed" in error.str() for error in errors), errors


def test_sasl_without_a_password_is_a_config_error(kafka_sasl_ssl) -> None:
    kafka = _settings(kafka_sasl_ssl, "SCRAM-SHA-512", sasl_password=None)
    for make in (kafka_client_config, broker_credentials):
        with pytest.raises(ConfigError) as caught:
            make(kafka)
        assert caught.value.field == "kafka.sasl_password"
        assert "NPSPULSE_KAFKA_SASL_PASSWORD" in caught.value.fix


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_aiokafka_roundtrip_with_the_worker_credentials(kafka_sasl_ssl, topic_name, mechanism: str) -> None:
    """What Faust hands aiokafka (``broker_credentials`` -> ``credentials_to_aiokafka_auth``) connects."""
    kafka = _settings(kafka_sasl_ssl, mechanism)
    auth = credentials_to_aiokafka_auth(broker_credentials(kafka))
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_SSL", mechanism)
    assert auth["ssl_context"].check_hostname
    topic = topic_name("aiokafka-sasl")
    admin = _create_topic(kafka, topic, partitions=1)

    async def roundtrip() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, **auth)
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topic, f"v{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest",
                                    **auth)
        await consumer.start()
        values: list[bytes] = []
        try:
            deadline = time.monotonic() + 20
            while len(values) < 20 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    values.extend(record.value for record in records)
        finally:
            await consumer.stop()
        return values

    try:
        assert asyncio.run(asyncio.wait_for(roundtrip(), 60)) == [f"v{i}".encode() for i in range(20)]
    finally:
        admin.delete_topics([topic], operation_timeout=10)


# ------------------------------------------------------------------------------------------- the worker


def _expected_total_windows(path: Path, deployment) -> dict[int, int]:
    """Answers per 5-minute window of segment ``all``, for the windows the final watermark closes."""
    windows = deployment.config.engine.windows
    times = [parse_rfc3339_ms(event["answered_at"]) for event in map(orjson.loads, path.read_bytes().splitlines())
             if event["type"] == "survey"]
    watermark = max(times) - windows.grace_ms
    cutoff = watermark - watermark % windows.slice_ms
    counts = Counter(at - at % 300_000 for at in times)
    return {start: count for start, count in counts.items() if start + 300_000 <= cutoff}


def test_worker_over_sasl_ssl_scram(sasl_deployment, sasl_reader, kafka_sasl_ssl, tmp_path: Path) -> None:
    deployment = sasl_deployment
    assert deployment.config.kafka.bootstrap_servers == kafka_sasl_ssl.bootstrap
    assert kafka_sasl_ssl.password not in deployment.config_path.read_text()
    stream = tmp_path / "stream.jsonl"
    simulate_to_file(SimulationSettings(customers=400, duration_ms=2 * 3_600_000, answers_per_minute=30, seed=5,
                                        incidents=(parse_incident("region=EU|channel=app @ +1h for 30m +40pp"),)),
                     stream)
    expected = _expected_total_windows(stream, deployment)
    assert len(expected) >= 20

    report = produce_files([stream], deployment.config, progress=False)
    assert report.failed == 0 and report.total > 0
    worker = deployment.start_worker()

    def totals(records: list[dict]) -> dict[int, int]:
        return {r["window_start"]: r["responses"] for r in records
                if r.get("segment_id") == "all" and r.get("window") == "5m"}

    records = sasl_reader(deployment.names.windows).read_until(lambda got: totals(got).keys() >= expected.keys(),
                                                               timeout=45, settle=0.5, alive=worker)
    assert worker.poll() is None, deployment.log()
    got = totals(records)
    assert {start: got.get(start) for start in expected} == expected, deployment.log()[-3000:]

    deployment.stop_worker(worker)
    log = deployment.log()
    assert f"Authenticated as {kafka_sasl_ssl.username} via SCRAM-SHA-512" in log, log[-3000:]  # aiokafka's
    assert kafka_sasl_ssl.password not in log
