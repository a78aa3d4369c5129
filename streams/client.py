"""Standalone Kafka clients on confluent-kafka: produce JSONL files, tail output topics, and a small API
to subscribe to alerts and triggers from campaign code:

    from streams.client import subscribe
    for trigger in subscribe("retarget", group_id="my-campaign-tool"):
        send_email(trigger["customer_id"], trigger["campaign_id"])

Producers partition keys with murmur2 (``partitioner=murmur2_random``), like the Java client and the
Faust worker, so a customer's surveys, purchases and table entries share one partition number.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from processors.config import Config, ConfigError, KafkaSettings
from streams.alert_text import describe_alert
from streams.progress import read_jsonl
from streams.topics import TopicNames, kafka_client_config

STDIN = Path("-")
STDIN_NAME = Path("<stdin>")  # the source file named in dead-letter headers for lines read from stdin
PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
}


class ProduceReport:
    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.unroutable = 0
        self.failed = 0
        self.seconds = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def ensure_topics(config: Config) -> None:
    """Create the input and output topics with the configured partitions if they do not exist yet (a
    broker's auto-creation would give them its default partition count, breaking co-partitioning), and
    refuse input topics whose partition count differs from ``kafka.partitions``."""
    names = TopicNames.from_settings(config.kafka)
    # segment-slices too: if Faust creates it, its consumer's first assignment can miss it (created a few ms
    # earlier, not yet in the metadata it read) and the segments agent then idles until the next metadata
    # refresh, 5 minutes later, while the pipeline stalls (seen in the worker benchmark and the pipeline test).
    partitioned = (names.surveys, names.purchases, names.segment_slices)
    wanted = [*partitioned, names.alerts, names.windows, names.retarget, names.dead_letter]
    admin = AdminClient(kafka_client_config(config.kafka))
    existing = admin.list_topics(timeout=15).topics
    for name in partitioned:  # refuse before creating anything
        if name in existing:
            _check_partitions(config, name, len(existing[name].partitions))
    missing = [NewTopic(name, num_partitions=config.kafka.partitions, replication_factor=config.kafka.replication_factor)
               for name in wanted if name not in existing]
    for future in (admin.create_topics(missing).values() if missing else ()):
        try:
            future.result(15)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    # Checked after creation, per topic: a topic created a moment ago (by us or someone else) may not have
    # been in the cluster-wide listing above yet; waiting here also means the worker starts with all of them
    # in the metadata.
    for name in wanted:
        count = _partition_count(admin, name)
        if name in partitioned:
            _check_partitions(config, name, count)


def _check_partitions(config: Config, topic: str, partitions: int) -> None:
    if partitions != config.kafka.partitions:
        raise ConfigError("kafka.partitions", f"topic {topic} has {partitions} partitions, "
                          f"the config says {config.kafka.partitions}",
                          f"set kafka.partitions = {partitions} (surveys, purchases and segment-slices must have "
                          "the same count)")


def _partition_count(admin: AdminClient, topic: str, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return len(metadata.partitions)
        if time.monotonic() >= deadline:
            raise KafkaException(metadata.error if metadata is not None and metadata.error else
                                 KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} not visible"))
        time.sleep(0.2)


def make_producer(kafka: KafkaSettings, **overrides: object) -> Producer:
    return Producer({**kafka_client_config(kafka), **PRODUCER_DEFAULTS, **overrides})


def produce_files(files: list[Path], config: Config, *, topic: str | None = None,
                  progress: bool | None = None) -> ProduceReport:
    """Send JSONL lines keyed by customer id. Without ``topic`` each line goes where its ``type`` says
    (surveys or purchases), and a line that cannot be routed goes to the dead-letter topic with the reason.
    With ``topic`` every line is sent as is (malformed ones too: the worker dead-letters them). A file
    named ``-`` is standard input."""
    names = TopicNames.from_settings(config.kafka)
    target = names.resolve(topic) if topic else None
    report = ProduceReport()
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            report.failed += 1
            if len(failures) < 5:
                failures.append(str(error))

    ensure_topics(config)
    producer = make_producer(config.kafka)
    started = time.perf_counter()
    for path, number, line in _read_lines(files, progress):
        key, kind = _key_and_type(line)
        destination = target or {"survey": names.surveys, "purchase": names.purchases}.get(kind or "")
        headers = None
        if destination is None:
            # Nothing is lost: a line that names no valid type goes to the dead letters.
            report.unroutable += 1
            destination = names.dead_letter
            headers = [("npspulse.reason", b"unroutable: not a JSON object with 'type' survey or purchase"),
                       ("npspulse.field", b"type"), ("npspulse.source.file", str(path).encode()),
                       ("npspulse.source.line", str(number).encode())]
        _send(producer, destination, key, line, delivered, headers)
        report.sent[destination] = report.sent.get(destination, 0) + 1
    remaining = producer.flush(60)
    if remaining:
        report.failed += remaining
    report.seconds = time.perf_counter() - started
    if failures:
        print(f"npspulse produce: delivery failures, e.g. {failures[0]}", file=sys.stderr)
    return report


def _read_lines(files: list[Path], progress: bool | None) -> Iterator[tuple[Path, int, bytes]]:
    """Non-blank JSONL lines of the files, where ``-`` is standard input (read as it comes, without a
    progress bar: its size is unknown), so ``npspulse simulate | npspulse produce -`` streams."""
    if STDIN not in files:
        yield from read_jsonl(files, "produce", progress)
        return
    for path in files:
        if path != STDIN:
            yield from read_jsonl([path], "produce", progress)
            continue
        for number, line in enumerate(sys.stdin.buffer, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield STDIN_NAME, number, line


def _send(producer: Producer, topic: str, key: bytes | None, value: bytes, callback: object,
          headers: list[tuple[str, bytes]] | None = None) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=callback, headers=headers)
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.1)  # local queue full: let deliveries drain


def _key_and_type(line: bytes) -> tuple[bytes | None, str | None]:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    customer = data.get("customer_id")
    kind = data.get("type")
    return (customer.encode() if isinstance(customer, str) else None), (kind if isinstance(kind, str) else None)


def subscribe(topic: str, config: Config, *, group_id: str | None = None, from_beginning: bool = False,
              timeout: float | None = None, max_messages: int | None = None) -> Iterator[dict]:
    """Decoded records of an output topic (``alerts``, ``retarget``, ``dead-letter`` or a full name).

    Offsets are committed after the caller has taken each record (at-least-once); use each record's ``id``
    to drop duplicates. Stops after ``timeout`` seconds without a record, or ``max_messages`` records.
    """
    names = TopicNames.from_settings(config.kafka)
    consumer = Consumer({
        **kafka_client_config(config.kafka),
        "group.id": group_id or f"npspulse-tail-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([names.resolve(topic)])
    received = 0
    last = time.monotonic()
    try:
        while max_messages is None or received < max_messages:
            message = consumer.poll(0.5)
            if message is None:
                if timeout is not None and time.monotonic() - last >= timeout:
                    return
                continue
            error = message.error()
            if error is not None:
                if error.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    continue
                raise KafkaException(error)
            last = time.monotonic()
            try:
                record = orjson.loads(message.value())
            except orjson.JSONDecodeError:
                record = {"raw": message.value().decode("utf-8", errors="replace")}
            if message.headers():
                record = {**record, "_headers": {k: (v or b"").decode("utf-8", errors="replace")
                                                 for k, v in message.headers()}}
            yield record
            received += 1
            consumer.commit(message=message, asynchronous=True)
    finally:
        consumer.close()


def print_record(record: dict, pretty: bool, out: IO[str]) -> None:
    if not pretty:
        out.write(orjson.dumps(record).decode() + "\n")
        return
    kind = record.get("type")
    if isinstance(kind, str) and kind.startswith("alert."):
        out.write(f"{describe_alert(record)}  id {record['id']}\n")
    elif kind == "retarget.trigger":
        out.write(f"{record['campaign_id']:<18} {record['customer_id']:<12} {record['loyalty']:<9} "
                  f"{record['priority']:<6} {record['segment_id']}  {record['reason']}\n")
    else:
        headers = record.get("_headers", {})
        reason = headers.get("npspulse.reason")
        out.write((f"[{reason}] " if reason else "") + orjson.dumps(
            {k: v for k, v in record.items() if k != "_headers"}).decode() + "\n")
    out.flush()
