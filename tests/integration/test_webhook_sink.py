"""The webhook sink against the real broker and a real HTTP receiver on loopback (http.server in a thread, no
mocks): retries until accepted, dead letters when the receiver is down or refuses, HMAC signatures, batches, and
the CLI's graceful stop."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.config import Config
from streams.client import make_producer
from streams.settings import load_config
from streams.topics import TopicNames, kafka_client_config
from streams.webhook_sink import SinkOptions, WebhookSink, batch_key

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 3
FAST = {"backoff_seconds": 0.01, "max_backoff_seconds": 0.05, "timeout_seconds": 5.0, "from_beginning": True}


# ------------------------------------------------------------------------------------------- receiver and topics


@dataclass
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float
    status: int

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]


class Receiver:
    """A real HTTP/1.1 server on 127.0.0.1: ``respond(n)`` gives the status and extra headers of the n-th request
    (from 0), sent after ``delay`` seconds. Records every request."""

    def __init__(self, respond: Callable[[int], tuple[int, dict[str, str]]], delay: float = 0.0) -> None:
        self.respond = respond
        self.requests: list[Received] = []
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real receivers

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    status, extra = receiver.respond(len(receiver.requests))
                    receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                                      time.monotonic(), status))
                time.sleep(delay)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/npspulse?token=s3cr3t-t0ken"

    def accepted(self) -> list[Received]:
        return [request for request in list(self.requests) if 200 <= request.status < 300]

    def accepted_keys(self) -> set[str]:
        return {request.key for request in self.accepted()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Env:
    """A private topic prefix on the shared broker, with its retarget, alerts and dead-letter topics."""

    config: Config
    config_path: Path
    names: TopicNames
    environ: dict[str, str]
    receivers: list[Receiver] = field(default_factory=list)

    def receiver(self, respond: Callable[[int], tuple[int, dict[str, str]]], delay: float = 0.0) -> Receiver:
        self.receivers.append(Receiver(respond, delay))
        return self.receivers[-1]


@pytest.fixture
def env(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Env]:
    config_path = tmp_path / "npspulse.toml"
    config_path.write_text(f"[kafka]\npartitions = {PARTITIONS}\n")
    environ = {"NPSPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap, "NPSPULSE_KAFKA_TOPIC_PREFIX": f"wh{uuid.uuid4().hex[:10]}."}
    config = load_config(config_path, environ=environ)
    names = TopicNames.from_settings(config.kafka)
    admin = AdminClient(kafka_client_config(config.kafka))
    topics = (names.retarget, names.alerts, names.dead_letter)
    for future in admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in topics]).values():
        future.result(30)
    deadline = time.monotonic() + 15
    while not all(t in admin.list_topics(timeout=10).topics for t in topics) and time.monotonic() < deadline:
        time.sleep(0.1)
    state = Env(config, config_path, names, environ)
    yield state
    for receiver in state.receivers:
        receiver.close()


def triggers(count: int, tag: str = "t") -> list[dict]:
    return [{"id": uuid.uuid4().hex, "schema_version": 1, "type": "retarget.trigger", "campaign_id": "service-recovery",
             "customer_id": f"c{tag}{i:04d}", "event_id": f"s-{tag}-{i}", "score": i % 7, "loyalty": "detractor",
             "segment_id": "region=EU|channel=app", "reason": "detractor during a segment spike: service recovery",
             "channel": "email", "priority": "high", "created_at": 1772461200000 + i, "expires_at": 1772720400000}
            for i in range(count)]


def produce(env: Env, topic: str, records: list[dict], *, one_per_partition: bool = False) -> dict[str, tuple[int, int]]:
    """Send records keyed by customer (or one to each partition); id -> (partition, offset)."""
    placed: dict[str, tuple[int, int]] = {}
    errors: list[object] = []

    def delivered(error: object, message: Any) -> None:
        if error is not None:
            errors.append(error)
        else:
            placed[orjson.loads(message.value())["id"]] = (message.partition(), message.offset())

    producer = make_producer(env.config.kafka)
    for index, record in enumerate(records):
        extra = {"partition": index % PARTITIONS} if one_per_partition else {}
        producer.produce(topic, key=record.get("customer_id", record["id"]).encode(), value=orjson.dumps(record),
                         on_delivery=delivered, **extra)
    assert producer.flush(30) == 0 and not errors, errors
    return placed


def run_sink(env: Env, options: SinkOptions, until: Callable[[WebhookSink], bool], timeout: float = 30.0) -> WebhookSink:
    """Run the sink in a thread until ``until(sink)`` holds (or the timeout), then stop it as a signal would."""
    sink = WebhookSink(env.config, options)
    failures: list[BaseException] = []

    def target() -> None:
        try:
            sink.run()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive() and not until(sink):
        time.sleep(0.02)
    sink.stop.set()
    thread.join(30)
    assert not thread.is_alive(), "the sink did not stop"
    if failures:
        raise failures[0]
    return sink


def positions(env: Env, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset, end offset) per partition of ``topic`` for ``group``."""
    consumer = Consumer({**kafka_client_config(env.config.kafka), "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, partition) for partition in range(PARTITIONS)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
    finally:
        consumer.close()
    return committed, ends


def read_topic(env: Env, topic: str, count: int, timeout: float = 15.0) -> list[Any]:
    consumer = Consumer({**kafka_client_config(env.config.kafka), "group.id": f"it-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.25)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


# --------------------------------------------------------------------------------------------------------- tests


def test_503s_then_accepted_every_record_once_and_committed(env: Env) -> None:
    records = triggers(24)
    by_id = {record["id"]: record for record in records}
    produce(env, env.names.retarget, records)
    failures = 4  # 503, 503, 503, 503, then 429 with Retry-After: 1, then 200 for everything
    receiver = env.receiver(lambda n: (503, {}) if n < failures else (429, {"Retry-After": "1"}) if n == failures
                            else (200, {}))
    options = SinkOptions(topic="retarget", url=receiver.url, max_attempts=8, **FAST)
    sink = run_sink(env, options, lambda _: receiver.accepted_keys() >= set(by_id))

    accepted = receiver.accepted()
    assert receiver.accepted_keys() == set(by_id)  # after dedup by key: every record, nothing else
    for request in accepted:
        assert request.body == orjson.dumps(by_id[request.key])  # the record's bytes as on the topic
        assert request.headers["content-type"] == "application/json"
        assert "x-npspulse-signature" not in request.headers  # no secret, no signature
    # The first record was retried on the same key through the 503s and the 429, and Retry-After was honoured
    # (the backoff alone is at most 0.05 s here).
    first = receiver.requests[: failures + 2]
    assert {request.key for request in first} == {first[0].key}
    assert [request.status for request in first] == [503] * failures + [429, 200]
    assert first[-1].at - first[-2].at >= 0.95
    assert (sink.counts.delivered, sink.counts.retried, sink.counts.dead_lettered) == (len(records), failures + 1, 0)
    committed, ends = positions(env, sink.group_id, env.names.retarget)
    assert committed == ends and sum(ends.values()) == len(records)

    # A second run in the same (default) group gets only what was produced since: nothing is delivered again.
    later = triggers(PARTITIONS, tag="later")
    produce(env, env.names.retarget, later, one_per_partition=True)
    before = len(receiver.requests)
    again = run_sink(env, options, lambda _: receiver.accepted_keys() >= {r["id"] for r in later})
    assert again.group_id == sink.group_id
    assert {request.key for request in receiver.requests[before:]} == {record["id"] for record in later}


@pytest.mark.parametrize("case", ["refused", "always-500", "timeout", "time-budget", "400"])
def test_receiver_down_or_refusing_dead_letters_every_record(env: Env, case: str) -> None:
    records = triggers(6)
    placed = produce(env, env.names.retarget, records)
    values = {record["id"]: orjson.dumps(record) for record in records}
    customers = {record["id"]: record["customer_id"] for record in records}
    attempts = {"max_attempts": 3}
    if case == "refused":
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        receiver = None
    else:
        receiver = env.receiver(lambda _: (400, {}) if case == "400" else (500, {}), delay=0.5 if case == "timeout" else 0)
        url = receiver.url
        if case == "time-budget":
            attempts = {"max_attempts": 1000, "max_retry_seconds": 0.4}
    options = SinkOptions(topic="retarget", url=url, **attempts, **{**FAST, "timeout_seconds": 0.1})
    sink = run_sink(env, options, lambda s: s.counts.dead_lettered >= len(records))

    dead = read_topic(env, env.names.dead_letter, len(records))
    assert len(dead) == len(records)
    seen = set()
    for message in dead:
        record_id = orjson.loads(message.value())["id"]
        seen.add(record_id)
        headers = {name: value.decode() for name, value in message.headers()}
        assert message.value() == values[record_id]  # the original record, byte for byte
        assert message.key() == customers[record_id].encode()  # the original key
        assert headers["npspulse.field"] == ""
        assert (headers["npspulse.source.topic"], int(headers["npspulse.source.partition"]),
                int(headers["npspulse.source.offset"])) == (env.names.retarget, *placed[record_id])
        reason = headers["npspulse.reason"]
        expected = {"refused": "connection refused", "always-500": "HTTP 500", "timeout": "last: timeout",
                    "time-budget": "HTTP 500", "400": "HTTP 400 (not retried)"}[case]
        assert expected in reason
        assert ("exhausted after 3 attempt(s)" in reason) == (case in ("refused", "always-500", "timeout"))
    assert seen == set(values)
    assert sink.counts.delivered == 0 and sink.counts.dead_lettered == len(records)
    requests = len(receiver.requests) if receiver else sink.counts.requests
    if case == "400":
        assert requests == len(records) and sink.counts.retried == 0  # a 4xx is final
    elif case == "time-budget":
        assert len(records) * 2 <= requests < len(records) * 1000  # the time budget, not the attempts, ended it
    else:
        assert requests == len(records) * 3 and sink.counts.retried == len(records) * 2
    committed, ends = positions(env, sink.group_id, env.names.retarget)
    assert committed == ends


def test_batches_are_signed_with_the_shared_secret(env: Env) -> None:
    secret = b"shared-secret-for-the-receiver"
    records = triggers(12)
    by_id = {record["id"]: record for record in records}
    produce(env, env.names.retarget, records)
    receiver = env.receiver(lambda _: (200, {}))
    options = SinkOptions(topic="retarget", url=receiver.url, batch=4, secret=secret, **FAST)

    def received_ids() -> list[str]:
        return [record["id"] for request in receiver.accepted() for record in orjson.loads(request.body)]

    sink = run_sink(env, options, lambda _: set(received_ids()) >= set(by_id))
    assert sorted(received_ids()) == sorted(by_id)  # each record exactly once
    sizes = []
    for request in receiver.accepted():
        expected = "sha256=" + hmac.new(secret, request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["x-npspulse-signature"], expected)
        forged = "sha256=" + hmac.new(b"another-secret", request.body, hashlib.sha256).hexdigest()
        assert not hmac.compare_digest(request.headers["x-npspulse-signature"], forged)
        batch = orjson.loads(request.body)
        assert isinstance(batch, list) and 1 <= len(batch) <= 4
        assert all(record == by_id[record["id"]] for record in batch)
        assert request.key == batch_key([record["id"] for record in batch]) and request.key.startswith("batch-")
        sizes.append(len(batch))
    assert max(sizes) > 1
    assert sink.counts.delivered == len(records) and sink.counts.requests == len(sizes)


def _alert(segment: str, marker: str) -> dict:
    return {"id": uuid.uuid4().hex, "schema_version": 2, "type": "alert.opened", "alert_id": uuid.uuid4().hex,
            "segment_id": segment, "severity": "sev-1", "responses": 120, "detractors": 60, "detractor_share": 0.5,
            "share_low": 0.41, "share_high": 0.59, "baseline_share": 0.25, "rise_pp": 25.0, "nps": -25.0,
            "baseline_nps": 30.0, "nps_change": -55.0, "excess_detractors": 30.0, "onset_iso": "2026-03-02T14:12:00.000Z",
            "drivers": [{"dimension": "touchpoint", "value": marker, "responses": 50, "detractors": 40, "excess": 27.5}]}


def test_cli_slack_alerts_sigterm_abandons_the_retry_then_delivers(env: Env, tmp_path: Path) -> None:
    secret = "cli-secret-" + uuid.uuid4().hex
    marker = "marker-" + uuid.uuid4().hex[:8]
    alerts = [_alert(f"region=EU|channel=app{i}", marker) for i in range(3)]
    by_id = {alert["id"]: alert for alert in alerts}
    produce(env, env.names.alerts, alerts, one_per_partition=True)
    accepting = threading.Event()
    receiver = env.receiver(lambda _: (200, {}) if accepting.is_set() else (503, {"Retry-After": "30"}))
    command = [sys.executable, "-m", "streams.cli", "sink", "webhook", "--topic", "alerts", "--url", receiver.url,
               "--format", "slack", "--from-beginning", "--secret-env", "HOOK_SECRET", "--backoff-seconds", "0.01",
               "--config", str(env.config_path)]
    process_env = {**os.environ, **env.environ, "HOOK_SECRET": secret, "PYTHONUNBUFFERED": "1"}

    def run(name: str, until: Callable[[], bool]) -> str:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=REPO, env=process_env, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and process.poll() is None and not until():
                time.sleep(0.05)
            assert process.poll() is None, log.read_text()
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0, log.read_text()
            assert time.monotonic() - stopped < 5  # did not sit out the 30 s Retry-After
        return log.read_text()

    # 1: the receiver answers 503 with Retry-After: 30; SIGTERM during the wait abandons the record uncommitted.
    first_log = run("first", lambda: len(receiver.requests) >= 1)
    assert len(receiver.requests) == 1
    group = next(line for line in first_log.splitlines() if "(group " in line).split("(group ")[1].split(",")[0]
    committed, _ = positions(env, group, env.names.alerts)
    assert all(offset < 0 for offset in committed.values())  # nothing committed
    assert "delivered 0, retried 1, dead-lettered 0" in first_log

    # 2: the receiver accepts; the same group delivers every alert, the abandoned one included.
    accepting.set()
    second_log = run("second", lambda: receiver.accepted_keys() >= set(by_id))
    assert receiver.accepted_keys() == set(by_id)
    for request in receiver.accepted():
        message = orjson.loads(request.body)
        alert = by_id[request.key]
        assert alert["segment_id"] in message["text"] and "-55.0" in message["text"]
        assert any(marker in block["text"]["text"] for block in message["blocks"] if block.get("text"))
        assert request.headers["x-npspulse-signature"] == "sha256=" + hmac.new(secret.encode(), request.body,
                                                                               hashlib.sha256).hexdigest()
    assert "delivered 3, retried 0, dead-lettered 0" in second_log
    committed, ends = positions(env, group, env.names.alerts)
    assert committed == ends
    for text in (first_log, second_log):  # counts and origins only: no bodies, no URL path or token, no secret
        for secret_text in (secret, marker, "region=EU", "s3cr3t-t0ken", "/hooks/npspulse", *by_id):
            assert secret_text not in text
        assert "http://127.0.0.1:" in text
