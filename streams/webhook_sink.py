"""Webhook sink: POST the records of an output topic (alerts, retarget) to an HTTP endpoint, at least once.

A confluent-kafka consumer with manual commits reads the topic; each record (or, with ``batch > 1``, each group of
up to ``batch`` records as a JSON array) is POSTed with ``Content-Type: application/json``, an ``Idempotency-Key``
(the record's ``id``; for a batch, a digest of its ids) and, with a shared secret, ``X-Npspulse-Signature:
sha256=<hex HMAC-SHA256 of the exact body>``. ``json`` posts the record's bytes exactly as they are on the topic;
``slack`` posts a Slack message rendered by :mod:`streams.slack_format`.

Delivery: 2xx is delivered. 5xx, 408, 429, timeouts and connection errors are retried with exponential backoff and
full jitter (``Retry-After`` wins when the receiver sends one) while the budget lasts (``max_attempts`` requests,
``max_retry_seconds`` since the first). Any other status (3xx included: redirects are not followed), and an
exhausted budget, send the original record to the dead-letter topic with ``npspulse.reason``, ``npspulse.field``
and its source topic/partition/offset, like the pipeline. A record that is not a JSON object with a usable ``id`` is
dead-lettered without a request. Offsets are committed only after delivery or dead-lettering; receivers drop
repeated keys. A stop (SIGTERM/SIGINT via :func:`run_until_signalled`) lets the request in flight finish, retries
nothing more and commits nothing undelivered.

Logs carry counts, statuses, topic/partition/offset and the receiver's origin (scheme, host, port), never record
bodies (triggers carry customer ids), the URL's path or query (Slack webhook URLs hold a token) or the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import math
import os
import random
import re
import signal
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from processors.config import Config, ConfigError
from streams.client import make_producer
from streams.slack_format import slack_payload
from streams.topics import TopicNames, kafka_client_config

log = logging.getLogger("npspulse.sink")

FORMATS = ("json", "slack")
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx
MAX_RESPONSE_BYTES = 64 * 1024  # read (and drop) at most this much of a response body; more closes the connection
USER_AGENT = "npspulse-webhook-sink/1"
_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII without spaces: safe as a header value
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class SinkError(RuntimeError):
    """The sink cannot go on without losing records (e.g. dead letters cannot be delivered)."""


@dataclass(frozen=True)
class SinkOptions:
    """What to read, where to post it, and the retry budget. Field names follow the CLI options."""

    topic: str  # alerts, retarget or a full topic name
    url: str
    format: str = "json"
    batch: int = 1
    group_id: str | None = None  # default: derived from the topic prefix, the topic and the URL
    from_beginning: bool = False  # where a group without committed offsets starts
    timeout_seconds: float = 10.0  # connect and read timeout of one request
    max_attempts: int = 10
    max_retry_seconds: float = 300.0
    backoff_seconds: float = 0.5  # cap of the first retry's delay; doubles per retry
    max_backoff_seconds: float = 30.0
    secret: bytes | None = field(default=None, repr=False)
    status_interval_seconds: float = 30.0  # how often counts are logged while they change


@dataclass
class SinkCounts:
    delivered: int = 0  # records the receiver accepted
    retried: int = 0  # requests repeated after a retryable failure
    dead_lettered: int = 0  # records sent to the dead-letter topic
    requests: int = 0
    commit_failures: int = 0

    def summary(self) -> str:
        return (f"delivered {self.delivered}, retried {self.retried}, dead-lettered {self.dead_lettered} "
                f"({self.requests} requests, {self.commit_failures} failed commits)")


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    attempts: int
    reason: str = ""  # why not, for the dead letter


# ----------------------------------------------------------------------------------------- options and helpers


def check_options(options: SinkOptions) -> None:
    """Raise ConfigError naming the option and the fix for any unusable value."""
    if options.format not in FORMATS:
        raise ConfigError("--format", f"{options.format!r} is not a format", "use --format json or --format slack")
    check_url(options.url)
    if options.batch < 1:
        raise ConfigError("--batch", f"{options.batch} is not a batch size", "pass a whole number >= 1")
    if options.format == "slack" and options.batch != 1:
        raise ConfigError("--batch", "a Slack webhook takes one message per request", "drop --batch with --format slack")
    if options.max_attempts < 1:
        raise ConfigError("--max-attempts", f"{options.max_attempts} attempts deliver nothing", "pass a whole number >= 1")
    for name, value, minimum in (("--timeout-seconds", options.timeout_seconds, 0.001),
                                 ("--max-retry-seconds", options.max_retry_seconds, 0.0),
                                 ("--backoff-seconds", options.backoff_seconds, 0.0),
                                 ("--max-backoff-seconds", options.max_backoff_seconds, 0.0)):
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(name, f"{value} is out of range", f"pass a number of seconds >= {minimum:g}")
    if options.secret is not None and not options.secret:
        raise ConfigError("--secret-env", "the shared secret is empty", "give a non-empty secret or none")


def check_url(url: str) -> urllib.parse.SplitResult:
    """The parsed URL if it is an absolute http(s) URL with a host. Error messages do not repeat the URL (its
    path or query may hold a token)."""
    fix = "pass an absolute http(s) URL, e.g. --url https://hooks.example.com/npspulse"
    if any(char.isspace() or ord(char) < 0x20 for char in url):
        raise ConfigError("--url", "the URL contains whitespace or control characters", fix)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError("--url", f"scheme {parts.scheme or '(none)'!r} is not http or https", fix)
    if not parts.hostname:
        raise ConfigError("--url", "the URL has no host", fix)
    if parts.username is not None or parts.password is not None:
        raise ConfigError("--url", "credentials in the URL are not supported",
                          "drop user:password@ and authenticate with --secret-env/--secret-file (HMAC signature)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError("--url", "the port is not a number in 0-65535", fix) from None
    return parts


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what the logs may show of it."""
    parts = urllib.parse.urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def read_secret(secret_env: str | None = None, secret_file: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> bytes | None:
    """The shared HMAC secret from the environment variable named ``secret_env`` or from ``secret_file`` (one
    trailing newline dropped); None without either. Messages never contain the secret, nor the variable name (in
    case a secret was passed where its name belongs)."""
    if secret_env is not None:
        if not _ENV_NAME.fullmatch(secret_env):
            raise ConfigError("--secret-env", "takes the NAME of an environment variable holding the secret, not a value",
                              "export NAME=<secret> and pass --secret-env NAME")
        value = (os.environ if environ is None else environ).get(secret_env, "")
        if not value:
            raise ConfigError("--secret-env", "the environment variable it names is not set or is empty",
                              "export the variable with the shared secret before starting, or use --secret-file PATH")
        return value.encode()
    if secret_file is not None:
        try:
            data = Path(secret_file).read_bytes()
        except OSError as error:
            raise ConfigError("--secret-file", f"cannot read {secret_file}: {error.strerror}",
                              "pass a readable file holding the shared secret") from None
        secret = data.removesuffix(b"\n").removesuffix(b"\r")
        if not secret:
            raise ConfigError("--secret-file", f"{secret_file} is empty", "write the shared secret into the file")
        return secret
    return None


def source_topic(topic: str, names: TopicNames) -> str:
    """The full topic name to read; refuses this deployment's topics whose records the sink must not post."""
    full = names.resolve(topic)
    refused = {names.dead_letter: "the sink dead-letters into it (records would loop)",
               names.surveys: "input events are not sink records (answers carry free-text comments)",
               names.purchases: "input events are not sink records",
               names.segment_slices: "an internal topic",
               names.windows: "window records have no 'id' to use as Idempotency-Key"}
    if full in refused:
        raise ConfigError("--topic", f"{full}: {refused[full]}", "use --topic alerts or --topic retarget")
    return full


def default_group_id(prefix: str, topic: str, url: str) -> str:
    """A consumer group per (deployment, topic, URL): ``<prefix>webhook-sink.<topic>.<digest of the URL>``. The URL
    is hashed (group ids are visible to anyone who can list groups; the URL may hold a token)."""
    short = topic[len(prefix):] if prefix and topic.startswith(prefix) else topic
    return f"{prefix}webhook-sink.{short}.{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Npspulse-Signature`` value for a body: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def batch_key(ids: Sequence[str]) -> str:
    """The Idempotency-Key of a batch: a digest of its record ids in order."""
    return "batch-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(retry-1))] before the ``retry``-th retry."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(retry - 1, 60)))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (delay-seconds or an HTTP date) as seconds from now; None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def decode_record(value: bytes | None) -> tuple[dict[str, Any] | None, str, str]:
    """(record, field, reason): the record if it is a JSON object with a usable ``id``, else the dead-letter field
    and reason."""
    if value is None:
        return None, "", "no value"
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        return None, "", f"not JSON ({error.msg})"
    if not isinstance(record, dict):
        return None, "", "not a JSON object"
    ident = record.get("id")
    if not isinstance(ident, str) or not _KEY.fullmatch(ident):
        return None, "id", "no 'id' usable as Idempotency-Key (1-200 printable ASCII characters, no spaces)"
    return record, "", ""


# ------------------------------------------------------------------------------------------------------- HTTP


class Endpoint:
    """POSTs to one URL over a kept-alive HTTP(S) connection (certificates and host names verified for https).
    Redirects are not followed: a 3xx comes back as a status."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = check_url(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._context = ssl.create_default_context() if self._https else None
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str | None]:
        """(status, Retry-After header). Raises OSError or http.client.HTTPException when no response came."""
        reused = self._connection is not None
        try:
            return self._exchange(body, headers)
        except _STALE:
            if not reused:
                raise
        # The receiver closed the kept-alive connection while it was idle: once more, on a new connection.
        return self._exchange(body, headers)

    def _exchange(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str | None]:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                               context=self._context)
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            self._connection.request("POST", self._target, body=body, headers=dict(headers))
            response = self._connection.getresponse()
            complete = len(response.read(MAX_RESPONSE_BYTES + 1)) <= MAX_RESPONSE_BYTES
        except BaseException:
            self.close()
            raise
        if response.will_close or not complete:
            self.close()
        return response.status, response.getheader("Retry-After")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error) if isinstance(error, http.client.HTTPException) else getattr(error, "strerror", None) or str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ------------------------------------------------------------------------------------------------------- sink


class WebhookSink:
    """Consume ``options.topic`` and deliver its records to ``options.url`` until ``stop`` is set."""

    def __init__(self, config: Config, options: SinkOptions, *, stop: threading.Event | None = None,
                 rng: random.Random | None = None) -> None:
        check_options(options)
        self.names = TopicNames.from_settings(config.kafka)
        self.topic = source_topic(options.topic, self.names)
        self.group_id = options.group_id or default_group_id(config.kafka.topic_prefix, self.topic, options.url)
        self.options = options
        self.stop = stop or threading.Event()
        self.counts = SinkCounts()
        self._kafka = config.kafka
        self._rng = rng or random.Random()
        self._endpoint = Endpoint(options.url, options.timeout_seconds)
        self._warned_missing_topic = False

    def consumer_config(self) -> dict[str, Any]:
        options = self.options
        # One unit of work may take the whole retry budget between two polls; stay in the group meanwhile.
        worst_case = options.max_retry_seconds + 6 * options.timeout_seconds + 60
        return {**kafka_client_config(self._kafka), "group.id": self.group_id, "client.id": "npspulse-webhook-sink",
                "auto.offset.reset": "earliest" if options.from_beginning else "latest", "enable.auto.commit": False,
                "max.poll.interval.ms": int(min(86_400, max(300, worst_case)) * 1000)}

    def run(self) -> SinkCounts:
        """Deliver until ``stop`` is set; the counts. Raises SinkError if dead letters cannot be delivered."""
        consumer = Consumer(self.consumer_config())
        producer = make_producer(self._kafka)
        consumer.subscribe([self.topic])
        options = self.options
        log.info("webhook sink: %s -> %s (group %s, format %s, batch %d, signed: %s)", self.topic,
                 origin(options.url), self.group_id, options.format, options.batch, "yes" if options.secret else "no")
        logged, last_log = SinkCounts(), time.monotonic()
        try:
            while not self.stop.is_set():
                messages = [m for m in consumer.consume(num_messages=options.batch, timeout=0.5) if self._usable(m)]
                if messages and not self._handle(messages, consumer, producer):
                    break
                if time.monotonic() - last_log >= options.status_interval_seconds and self.counts != logged:
                    log.info("webhook sink: %s", self.counts.summary())
                    logged, last_log = SinkCounts(**vars(self.counts)), time.monotonic()
        finally:
            self._endpoint.close()
            consumer.close()
            producer.flush(10)
            log.info("webhook sink stopped: %s", self.counts.summary())
        return self.counts

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            if not self._warned_missing_topic:
                log.warning("webhook sink: topic %s does not exist yet; waiting for it", self.topic)
                self._warned_missing_topic = True
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("webhook sink: consumer error %s", error.str())
        return False

    def _handle(self, messages: list[Message], consumer: Consumer, producer: Producer) -> bool:
        """Deliver or dead-letter these records, then commit them; False if stopped first (nothing committed)."""
        good: list[tuple[Message, dict[str, Any]]] = []
        dead: list[tuple[Message, str, str]] = []
        for message in messages:
            record, bad_field, reason = decode_record(message.value())
            if record is None:
                dead.append((message, bad_field, f"webhook: {reason}"))
            else:
                good.append((message, record))
        if good:
            outcome = self._deliver(*self._request(good), _where(good[0][0], len(good)))
            if outcome is None:
                return False
            if outcome.delivered:
                self.counts.delivered += len(good)
            else:
                dead.extend((message, "", outcome.reason) for message, _ in good)
        if dead:
            self._dead_letter(producer, dead)
        self._commit(consumer, messages)
        return True

    def _request(self, records: list[tuple[Message, dict[str, Any]]]) -> tuple[bytes, dict[str, str]]:
        options = self.options
        ids = [record["id"] for _, record in records]
        if options.format == "slack":
            body = orjson.dumps(slack_payload(records[0][1]))
        elif options.batch > 1:
            body = b"[" + b",".join(message.value() for message, _ in records) + b"]"
        else:
            body = records[0][0].value()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Idempotency-Key": batch_key(ids) if options.batch > 1 else ids[0]}
        if options.secret:
            headers["X-Npspulse-Signature"] = signature(options.secret, body)
        return body, headers

    def _deliver(self, body: bytes, headers: Mapping[str, str], where: str) -> Outcome | None:
        """POST with retries within the budget; None if stopped before a final answer."""
        options = self.options
        started = time.monotonic()
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            self.counts.requests += 1
            retry_after = None
            try:
                status, retry_after_header = self._endpoint.post(body, headers)
            except (OSError, http.client.HTTPException) as error:
                failure = _describe(error)
            else:
                if 200 <= status < 300:
                    return Outcome(True, attempt)
                failure = f"HTTP {status}"
                if status not in RETRYABLE_STATUSES and not 500 <= status <= 599:
                    log.warning("webhook sink: %s: receiver answered %s, not retried: dead-lettering", where, failure)
                    return Outcome(False, attempt, f"webhook: receiver answered {failure} (not retried)")
                retry_after = retry_after_seconds(retry_after_header)
            elapsed = time.monotonic() - started
            delay = retry_after if retry_after is not None else backoff_delay(
                attempt, options.backoff_seconds, options.max_backoff_seconds, self._rng)
            if attempt >= options.max_attempts or elapsed + delay > options.max_retry_seconds:
                asked = f"; the receiver asked to retry after {retry_after:.0f} s" if retry_after is not None else ""
                log.warning("webhook sink: %s: %s, retry budget exhausted after %d attempt(s): dead-lettering",
                            where, failure, attempt)
                return Outcome(False, attempt, f"webhook: retry budget exhausted after {attempt} attempt(s) in "
                                               f"{elapsed:.1f} s; last: {failure}{asked}")
            self.counts.retried += 1
            (log.warning if attempt == 1 else log.debug)(
                "webhook sink: %s: %s (attempt %d of %d), retrying in %.2f s", where, failure, attempt,
                options.max_attempts, delay)
            if self.stop.wait(delay):
                break
        log.info("webhook sink: stopping; %s not delivered and not committed (it will be delivered again)", where)
        return None

    def _dead_letter(self, producer: Producer, dead: list[tuple[Message, str, str]]) -> None:
        errors: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                errors.append(error)

        for message, bad_field, reason in dead:
            headers = [("npspulse.reason", reason.encode()), ("npspulse.field", bad_field.encode()),
                       ("npspulse.source.topic", message.topic().encode()),
                       ("npspulse.source.partition", str(message.partition()).encode()),
                       ("npspulse.source.offset", str(message.offset()).encode())]
            while True:
                try:
                    producer.produce(self.names.dead_letter, value=message.value(), key=message.key(),
                                     headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
        remaining = producer.flush(30)
        if errors or remaining:
            problem = errors[0].str() if errors else f"{remaining} not delivered within 30 s"
            raise SinkError(f"cannot deliver dead letters to {self.names.dead_letter} ({problem}); "
                            "their offsets are not committed")
        self.counts.dead_lettered += len(dead)

    def _commit(self, consumer: Consumer, messages: list[Message]) -> None:
        last: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            last[key] = max(last.get(key, -1), message.offset())
        offsets = [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
        try:
            failed = [str(tp.error) for tp in consumer.commit(offsets=offsets, asynchronous=False) or () if tp.error]
        except KafkaException as error:
            failed = [error.args[0].str() if error.args and isinstance(error.args[0], KafkaError) else str(error)]
        if failed:
            self.counts.commit_failures += 1
            log.warning("webhook sink: offset commit failed (%s); these records may be delivered again", failed[0])


def _where(message: Message, count: int) -> str:
    first = f"{message.topic()}[{message.partition()}]@{message.offset()}"
    return first if count == 1 else f"batch of {count} from {first}"


def run_until_signalled(sink: WebhookSink) -> SinkCounts:
    """Run the sink in the main thread: the first SIGTERM or SIGINT stops it gracefully (the request in flight
    finishes, nothing undelivered is committed), a second one stops the process at once."""
    previous: dict[int, Any] = {}

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("webhook sink: %s received, stopping (again to stop at once)", signal.Signals(signum).name)
        sink.stop.set()
        for number, handler in previous.items():
            signal.signal(number, handler)

    for number in (signal.SIGTERM, signal.SIGINT):
        previous[number] = signal.signal(number, stop)
    try:
        return sink.run()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
