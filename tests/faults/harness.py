"""Shared machinery of the fault suite (issue 8): one synthetic stream with an injected incident, produced at a
steady pace onto fresh topics of the real broker, consumed by real worker subprocesses (one consumer group)
that the tests kill, restart or starve; the worker's outputs are then compared with the embedded runner
(`npspulse replay`) on the very same JSONL.

Figures (see docs/reliability.md):

* ``lost``: answers missing from the worker's closed ``all`` windows (5 m family), against the replay;
* ``double_counted``: answers counted more than once in those windows;
* ``mismatched_windows``: closed windows of any segment and family whose last value differs from the replay
  (or that never appeared);
* ``duplicate_windows``: window results published more than once (same segment, family and start);
* ``missing_alerts`` / ``duplicate_alerts``: replay alert ids absent from the ``alerts`` topic / alert ids
  delivered more than once.

Sizes come from the environment: NPSPULSE_FAULT_EVENTS (nominal survey answers per stream, default 7200: about 4,700 lines) and
NPSPULSE_FAULT_SECONDS (how long producing takes, default 15 s), so a larger run is one variable away.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from processors.config import Config
from processors.timeparse import parse_rfc3339_ms
from streams.app import app_id
from streams.client import ensure_topics, make_producer
from streams.replay import replay
from streams.settings import load_config
from streams.simulate import SimulationSettings, parse_incident, simulate_to_file
from streams.topics import TopicNames, kafka_client_config
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
EVENTS = int(os.environ.get("NPSPULSE_FAULT_EVENTS", "7200"))
PRODUCE_SECONDS = float(os.environ.get("NPSPULSE_FAULT_SECONDS", "15"))
HOURS = 6
INCIDENT = "region=EU|channel=app @ +4h for 60m +60pp"
# Caps off: which trigger a cap holds back depends on arrival order (see tests/integration/test_pipeline.py).
CONFIG = """
[kafka]
partitions = 3

[delivery]
max_per_customer = 0
"""


def simulate_stream(path: Path, *, events: int = EVENTS, seed: int = 8) -> Path:
    """A stream of about ``events`` survey answers over HOURS simulated hours (plus their purchases and two days
    of purchase history) with the incident injected, fixed seed."""
    settings = SimulationSettings(customers=1500 * max(1, events // 7200), duration_ms=HOURS * 3_600_000,
                                  answers_per_minute=events / (HOURS * 60), seed=seed,
                                  incidents=(parse_incident(INCIDENT),), history_days=2)
    simulate_to_file(settings, path)
    return path


@dataclass
class Expected:
    """The embedded runner's closed windows (by key) and alerts (by id), up to the cutoff the worker reaches."""

    windows: dict[tuple, tuple]
    alerts: dict[str, dict]
    cutoff: int


def window_key(record: dict) -> tuple:
    return (record["segment_id"], record["window"], record["window_start"])


def window_counts(record: dict) -> tuple:
    return (record["responses"], record["detractors"], record["passives"], record["promoters"])


def expected_outputs(stream: Path, config: Config, out_dir: Path) -> Expected:
    """Ground truth: `npspulse replay` on the same file. Windows ending after the last watermark the worker
    reaches (max answer time - grace, slice-aligned) close only in the runner's end-of-input flush: left out."""
    replay([stream], config.engine, out_dir, delivery=config.delivery, progress=False)
    latest = 0
    for line in stream.read_bytes().splitlines():
        event = orjson.loads(line)
        if event.get("type") == "survey":
            latest = max(latest, parse_rfc3339_ms(event["answered_at"]))
    grid = config.engine.windows
    watermark = latest - grid.grace_ms
    cutoff = watermark - watermark % grid.slice_ms
    windows = [orjson.loads(line) for line in (out_dir / "windows.jsonl").read_bytes().splitlines()]
    alerts = [orjson.loads(line) for line in (out_dir / "alerts.jsonl").read_bytes().splitlines()]
    return Expected({window_key(w): window_counts(w) for w in windows if w["window_end"] <= cutoff},
                    {a["id"]: a for a in alerts if a["at"] <= cutoff}, cutoff)


def read_all(config: Config, topic: str) -> list[dict]:
    """Every record of ``topic`` from the beginning up to its current end (a fresh, assigned consumer: no group
    state that a broker restart could disturb)."""
    consumer = Consumer({**kafka_client_config(config.kafka), "group.id": f"faults-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "log_level": 0})
    try:
        ends = {}
        for partition in range(config.kafka.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        records: list[dict] = []
        positions = dict.fromkeys(ends, -1)
        deadline = time.monotonic() + 120
        while any(positions[p] + 1 < ends[p] for p in ends) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 1.0):
                if message.error() is None and message.offset() < ends[message.partition()]:
                    positions[message.partition()] = message.offset()
                    records.append(orjson.loads(message.value()))
        return records
    finally:
        consumer.close()


class PacedProducer(threading.Thread):
    """Produces the stream's lines (routed by type, keyed by customer, like `npspulse produce`) in even chunks
    over ``seconds``, so faults land mid-stream; ``sent`` is how many lines are out so far."""

    def __init__(self, config: Config, lines: list[bytes], seconds: float = PRODUCE_SECONDS, chunks: int = 80) -> None:
        super().__init__(daemon=True)
        self.config, self.lines, self.seconds, self.chunks = config, lines, seconds, chunks
        self.sent = 0
        self.failed = 0
        self.done = threading.Event()
        self.hold_at = 1.0  # the producer waits at this fraction of the stream until it is moved on

    def fraction(self) -> float:
        return self.sent / len(self.lines)

    def run(self) -> None:
        names = TopicNames.from_settings(self.config.kafka)
        topics = {"survey": names.surveys, "purchase": names.purchases}
        # Retries for as long as a broker restart may take: nothing is dropped by the producer itself.
        producer = make_producer(self.config.kafka, **{"message.timeout.ms": 300_000, "log_level": 0})

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                self.failed += 1

        size = -(-len(self.lines) // self.chunks)
        started = time.monotonic()
        for index in range(0, len(self.lines), size):
            while index >= self.hold_at * len(self.lines):
                time.sleep(0.1)
                started += 0.1  # the pace resumes where it stopped
            for line in self.lines[index:index + size]:
                event = orjson.loads(line)
                while True:
                    try:
                        producer.produce(topics[event["type"]], value=line, key=event["customer_id"].encode(),
                                         on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.1)
                self.sent += 1
            producer.poll(0)
            pause = started + self.seconds * (index + size) / len(self.lines) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        self.failed += producer.flush(300)
        self.done.set()

    def wait_for(self, fraction: float, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.fraction() < fraction and time.monotonic() < deadline and not self.done.is_set():
            time.sleep(0.1)


@dataclass
class Figures:
    answers: int = 0
    lost: int = 0
    double_counted: int = 0
    mismatched_windows: int = 0
    expected_windows: int = 0
    duplicate_windows: int = 0
    expected_alerts: int = 0
    missing_alerts: int = 0
    duplicate_alerts: int = 0
    extra_alerts: int = 0
    examples: list = field(default_factory=list)

    def exact(self) -> bool:
        """The worker's closed windows and alerts are the replay's (duplicates aside, which are reported)."""
        return not (self.lost or self.double_counted or self.mismatched_windows or self.missing_alerts)


def compare(expected: Expected, windows: list[dict], alerts: list[dict]) -> Figures:
    last: dict[tuple, tuple] = {}
    emitted: Counter[tuple] = Counter()
    for record in windows:
        key = window_key(record)
        last[key] = window_counts(record)
        emitted[key] += 1
    figures = Figures(expected_windows=len(expected.windows), expected_alerts=len(expected.alerts))
    figures.duplicate_windows = sum(n - 1 for n in emitted.values())
    for key, counts in expected.windows.items():
        got = last.get(key)
        if got != counts:
            figures.mismatched_windows += 1
            if len(figures.examples) < 5:
                figures.examples.append({"window": list(key), "replay": counts, "worker": got})
        if key[0] == "all" and key[1] == "5m":
            figures.answers += counts[0]
            responses = 0 if got is None else got[0]
            figures.lost += max(0, counts[0] - responses)
            figures.double_counted += max(0, responses - counts[0])
    for key, counts in last.items():  # closed windows the replay never had
        if key not in expected.windows and key[0] == "all" and key[1] == "5m" and key[2] + 300_000 <= expected.cutoff:
            figures.mismatched_windows += 1
            figures.double_counted += counts[0]
    ids = Counter(alert["id"] for alert in alerts)
    figures.missing_alerts = len(expected.alerts.keys() - ids.keys())
    figures.duplicate_alerts = sum(n - 1 for n in ids.values())
    figures.extra_alerts = len({i for i, a in ((a["id"], a) for a in alerts)
                                if i not in expected.alerts and a["at"] <= expected.cutoff})
    return figures


class Run:
    """One isolated deployment on the shared broker (own topic prefix, hence own consumer group) with its
    workers as subprocesses of ``python -m streams.cli worker``."""

    def __init__(self, tmp: Path, kafka_bootstrap: str, redis_url: str, config_text: str = CONFIG) -> None:
        self.tmp = tmp
        prefix = f"flt{uuid.uuid4().hex[:10]}."
        self.config_path = tmp / "npspulse.toml"
        self.config_path.write_text(config_text)
        self.env = {**os.environ, "NPSPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap, "NPSPULSE_REDIS_URL": redis_url,
                    "NPSPULSE_KAFKA_TOPIC_PREFIX": prefix, "PYTHONUNBUFFERED": "1",
                    # Faust's own settings from the environment: a dead member leaves the group after 10 s
                    # rather than the default 60 s, so a restarted worker rejoins within the suite's budget.
                    "BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"}
        self.config = load_config(self.config_path, environ=self.env)
        self.names = TopicNames.from_settings(self.config.kafka)
        self.workers: dict[str, subprocess.Popen] = {}
        self.kills = 0
        ensure_topics(self.config)

    def start(self, name: str = "worker") -> subprocess.Popen:
        """Start (or restart) worker ``name``; a restart keeps the worker's directory, like a pod keeps its
        volume."""
        workdir = self.tmp / name
        workdir.mkdir(exist_ok=True)
        with (self.tmp / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--config", str(self.config_path), "-l", "info",
                 "--web-port", str(free_port()), "--worker-id", name],
                cwd=workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.workers[name] = process
        return process

    def ready(self, name: str = "worker", since: int = 0) -> bool:
        """Whether worker ``name`` finished a partition assignment (more than ``since`` of them, counted over
        the log it shares with its earlier incarnations)."""
        return self.log(name).count("Recovery]: Worker ready") > since

    def wait_ready(self, name: str = "worker", since: int = 0, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready(name, since) and time.monotonic() < deadline:
            assert self.workers[name].poll() is None, f"worker {name} exited:\n{self.log(name)[-3000:]}"
            time.sleep(0.2)
        assert self.ready(name, since), f"worker {name} got no partitions in {timeout} s:\n{self.log(name)[-3000:]}"

    def readies(self, name: str = "worker") -> int:
        return self.log(name).count("Recovery]: Worker ready")

    def kill(self, name: str = "worker") -> None:
        process = self.workers[name]
        assert process.poll() is None, f"worker {name} died before it was killed:\n{self.log(name)[-3000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        self.kills += 1

    def stop_all(self) -> None:
        """Tear down: SIGKILL (a graceful stop is not what these tests check, and it takes seconds)."""
        for process in self.workers.values():
            if process.poll() is None:
                process.kill()
                process.wait(30)

    def log(self, name: str = "worker") -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self) -> list[str]:
        return [name for name, process in self.workers.items() if process.poll() is None]

    def lag(self) -> int | None:
        """Input records the group has not committed yet (surveys and purchases); None if unknown."""
        consumer = Consumer({**kafka_client_config(self.config.kafka), "group.id": app_id(self.config.kafka),
                             "enable.auto.commit": False, "log_level": 0})
        try:
            partitions = [TopicPartition(topic, p) for topic in (self.names.surveys, self.names.purchases)
                          for p in range(self.config.kafka.partitions)]
            total = 0
            for tp in consumer.committed(partitions, timeout=10):
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                total += high - max(tp.offset, 0)
            return total
        except Exception:  # broker unreachable (e.g. mid-restart)
            return None
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> int | None:
        consumer = Consumer({**kafka_client_config(self.config.kafka), "group.id": "faults-probe", "log_level": 0})
        try:
            return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                       for p in range(self.config.kafka.partitions))
        except Exception:  # broker unreachable (e.g. mid-restart)
            return None
        finally:
            consumer.close()

    def settle(self, producer: PacedProducer, expected: Expected, timeout: float = 240, quiet: float = 4.0) -> None:
        """Wait until the stream is out, the group has committed every input offset, every expected window key
        has appeared and the windows topic has been quiet for ``quiet`` seconds (or the timeout)."""
        producer.join(timeout)
        deadline = time.monotonic() + timeout
        quiet_since, last = time.monotonic(), None
        while time.monotonic() < deadline and self.alive():
            time.sleep(1.0)
            end = self.end_offsets(self.names.windows)
            if end != last:
                quiet_since, last = time.monotonic(), end
            if time.monotonic() - quiet_since < quiet or self.lag() != 0:
                continue
            # Caught up: done once every expected window is out, or once nothing more came for long enough
            # (a window that is not out by then is lost, and the figures say so).
            got = {window_key(w) for w in read_all(self.config, self.names.windows)}
            if got >= expected.windows.keys() or time.monotonic() - quiet_since > 25:
                return

    def outputs(self, *topics: str) -> dict[str, list[dict]]:
        return {topic: read_all(self.config, topic) for topic in topics}

    def figures(self, expected: Expected) -> Figures:
        return compare(expected, read_all(self.config, self.names.windows), read_all(self.config, self.names.alerts))


def report(name: str, figures: Figures, **extra: object) -> None:
    """Print the figures (shown with -s or on failure) and append them to NPSPULSE_FAULT_REPORT if set."""
    row = {"test": name, "events": EVENTS, **dataclasses.asdict(figures), **extra}
    print(json.dumps(row))
    target = os.environ.get("NPSPULSE_FAULT_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps(row) + "\n")


def scenario(tmp: Path, kafka_bootstrap: str, redis_url: str, *, config_text: str = CONFIG,
             seed: int = 8) -> tuple[Run, Expected, list[bytes]]:
    """A fresh deployment, its stream and the replay's answer."""
    run = Run(tmp, kafka_bootstrap, redis_url, config_text)
    stream = simulate_stream(tmp / "stream.jsonl", seed=seed)
    expected = expected_outputs(stream, run.config, tmp / "replay")
    assert any(a["type"] == "alert.opened" for a in expected.alerts.values()), "the incident raised no alert"
    return run, expected, stream.read_bytes().splitlines()


def describe(run: Run, figures: Figures, names: Callable[[], list[str]] | None = None) -> str:
    logs = "\n".join(f"--- {name} ---\n{run.log(name)[-2000:]}" for name in (names() if names else run.workers))
    return f"{figures}\n{logs}"


class PrivateRedis:
    """A redis-server of the test's own (the shared one stays up while this one is stopped)."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.tmp = free_port(), tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis  # the fault tests that need no private Redis do not need the client either

        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save",
                                         "", "--appendonly", "no", "--dir", str(self.tmp)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
