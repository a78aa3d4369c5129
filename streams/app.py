"""The Faust app, built from the TOML config: broker, security, store, web server, guarantee."""

from __future__ import annotations

import ssl

import faust

from processors.config import Config, KafkaSettings
from streams import codec
from streams.topics import check_credentials


def app_id(kafka: KafkaSettings) -> str:
    """The worker group's id (consumer group, changelog topic names), derived from the topic prefix."""
    return kafka.topic_prefix.strip(".-_") or "npspulse"


def broker_credentials(kafka: KafkaSettings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """aiokafka's auth settings. Faust derives the protocol from the credentials: SASLCredentials with an
    SSL context is SASL_SSL, without one SASL_PLAINTEXT; the context verifies the broker against
    ``ssl_cafile`` (or the system CAs) including its hostname."""
    check_credentials(kafka)
    context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password,
                                     mechanism=kafka.sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context) if context is not None else None


def build_app(config: Config, *, web_port: int | None = None, web_host: str | None = None,
              client_id: str | None = None) -> faust.App:
    codec.register()
    kafka, worker = config.kafka, config.worker
    return faust.App(
        app_id(kafka),
        broker=[f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(kafka),
        broker_client_id=client_id or app_id(kafka),
        store=worker.store,
        processing_guarantee=worker.processing_guarantee,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_port=web_port or worker.web_port,
        web_bind=web_host or worker.web_host,
        web_host=web_host or worker.web_host,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # npspulse holds acknowledgements on purpose (answers waiting for purchases, slices until their
        # checkpoint): waiting for them on a rebalance would never end. Unacknowledged records of a revoked
        # partition are redelivered to its next owner, whose stored offsets skip what is already counted.
        stream_wait_empty=False,
        # Faust's default read-ahead (4,096 records per stream, 1 MiB per partition fetch), not a smaller one: a stream
        # queue that reaches high pressure takes its partition out of the fetch until the queue drains, and Faust's
        # recovery clears the queues without that signal. With 512 records a restarted worker once fetched nothing
        # at all after its recovery (docs/reliability.md).
    )
