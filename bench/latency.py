"""Event-to-alert latency of one npspulse worker at fixed offered loads (prints figures; asserts nothing).

Needs the local broker and Redis (`make bench-latency` starts them). For each rate in --rates and each of --runs
runs: a fresh deployment (new topics and group, the `make bench` config), one worker started and waited for
until its consumer group is stable, then the survey answers of a simulated day with five incidents produced
at exactly that rate (paced in 5 ms ticks, not in bursts), while a consumer reads the alerts topic.

    python bench/latency.py [--rates 100,1000,10000] [--runs 3] [--events 50000]

Definition. An alert event (opened, updated or resolved) comes from the closed one-minute slice ending at its
``at``; the worker closes that slice once its watermark, the minimum over the survey partitions of the latest
event time forwarded, minus the 2-minute grace, reaches ``at``. The closing answer is the one whose production
completes that: for each survey partition the first answer produced there (in production order) with an event
time >= ``at`` + grace; the latest of those. Latency = arrival of the alert at this process's consumer (wall
clock) - the wall time at which the closing answer was handed to the producer. It leaves out the event-time wait
that is the slice's and the grace's (a minute and two here; in a replay at 864x it is compressed), and counts
what the pipeline adds: producer linger, the answer side's batching, the once-a-second watermark records, the
segment side's batching, detection, publishing, the consumer's fetch. Alerts whose slice only closed when
partitions went idle at the end of the stream (no closing answer) are left out and counted.
"""

from __future__ import annotations

import argparse
import bisect
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from run import Broker
from worker_throughput import free_port, fresh_deployment, keep_pace

from processors.config import Config
from processors.timeparse import parse_rfc3339_ms
from streams.app import app_id
from streams.client import ensure_topics, make_producer
from streams.pipeline import partition_for
from streams.topics import kafka_client_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "npspulse-bench.toml"
INCIDENTS = ("region=NA|touchpoint=delivery @ +6h for 60m +25pp", "channel=phone @ +10h for 45m +20pp",
             "region=EU|channel=app @ +14h for 60m +25pp", "region=APAC @ +18h for 60m +25pp",
             "touchpoint=support|channel=web @ +21h for 60m +30pp")
DEFAULT_CUSTOMERS = 20_000
TICK_S = 0.005
QUIET_S = 10.0  # after the stream is consumed, wait this long without a new alert
TIMEOUT_S = 1800.0


@dataclass(frozen=True, slots=True)
class Answer:
    line: bytes
    key: bytes
    partition: int
    at: int


@dataclass(frozen=True, slots=True)
class Result:
    rate: int
    latencies_ms: list[float]
    opened_ms: list[float]
    idle_closed: int
    achieved: float  # answers per second actually offered
    drained_s: float  # from the last answer produced to the worker having committed every topic it reads


def simulate(path: Path, events: int, customers: int) -> list[bytes]:
    """The survey lines of a simulated day with the incidents, in arrival order."""
    args = ["--customers", str(customers), "--duration", "24h", "--rate", f"{events / 1440:.3f}", "--seed", "7"]
    for incident in INCIDENTS:
        args += ["--incident", incident]
    subprocess.run([sys.executable, "-m", "streams.cli", "simulate", *args, "--out", str(path)], check=True, cwd=ROOT)
    return [line for line in path.read_bytes().splitlines() if b'"type":"survey"' in line]


def answers_of(lines: list[bytes], partitions: int) -> list[Answer]:
    out = []
    for line in lines:
        event = orjson.loads(line)
        key = str(event["customer_id"]).encode()
        out.append(Answer(line, key, partition_for(key, partitions), parse_rfc3339_ms(event["answered_at"])))
    return out


def wait_stable(config: Config, worker: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """Until the worker's consumer group is Stable with partitions assigned."""
    admin = AdminClient(kafka_client_config(config.kafka))
    group = app_id(config.kafka)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode} during start-up")
        try:
            described = admin.describe_consumer_groups([group])[group].result(10)
            if str(described.state).endswith("STABLE") and any(m.assignment.topic_partitions
                                                                  for m in described.members):
                return
        except Exception:  # the group does not exist until the worker joins
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker group {group} not stable after {timeout:.0f} s")


class AlertReader(threading.Thread):
    """Reads the alerts topic from the beginning; keeps (arrival wall time, alert) per record."""

    def __init__(self, config: Config, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({**kafka_client_config(config.kafka), "group.id": f"{topic}-latency",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.alerts: list[tuple[float, dict[str, object]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(100, timeout=0.05):
                if message.error() is None:
                    self.alerts.append((time.time(), orjson.loads(message.value())))
        self.consumer.close()


def produce_at(config: Config, topic: str, answers: list[Answer], rate: int) -> list[float]:
    """Send the answers at ``rate`` per second; the wall time at which each was handed to the producer."""
    producer = make_producer(config.kafka)
    sent = [0.0] * len(answers)
    per_tick = max(1, round(rate * TICK_S))
    started = time.monotonic()
    wall0 = time.time() - started
    for index, answer in enumerate(answers):
        producer.produce(topic, value=answer.line, key=answer.key, partition=answer.partition)
        sent[index] = wall0 + time.monotonic()
        if index % per_tick == per_tick - 1:
            keep_pace(producer, started, index + 1, rate)
    producer.flush(60)
    return sent


def closing_times(answers: list[Answer], sent: list[float], partitions: int) -> list[tuple[list[int], list[float]]]:
    """Per survey partition, in production order: the running maximum event time and the send wall times."""
    out: list[tuple[list[int], list[float]]] = [([], []) for _ in range(partitions)]
    for answer, at in zip(answers, sent, strict=True):
        highs, times = out[answer.partition]
        highs.append(max(answer.at, highs[-1]) if highs else answer.at)
        times.append(at)
    return out


def closed_at(slice_end: int, grace_ms: int, progress: list[tuple[list[int], list[float]]]) -> float | None:
    """Wall time at which the last survey partition got an answer at or past ``slice_end`` + grace (None: never)."""
    latest = 0.0
    for highs, times in progress:
        index = bisect.bisect_left(highs, slice_end + grace_ms)
        if index == len(highs):
            return None
        latest = max(latest, times[index])
    return latest


def run_once(answers_lines: list[bytes], rate: int, workdir: Path) -> Result:
    config_path, env, config, names = fresh_deployment(workdir, "latency", CONFIG.read_text())
    partitions = config.kafka.partitions
    answers = answers_of(answers_lines, partitions)
    ensure_topics(config)
    log_path = workdir / f"{env['NPSPULSE_KAFKA_TOPIC_PREFIX']}log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--config", str(config_path),
                                   "-l", "warning", "--web-port", str(free_port())],
                                  cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
    reader = AlertReader(config, names.alerts)
    try:
        wait_stable(config, worker)
        reader.start()
        started = time.monotonic()
        sent = produce_at(config, names.surveys, answers, rate)
        produced = time.monotonic()
        achieved = len(answers) / (produced - started)
        broker = Broker(config.kafka.bootstrap_servers)
        while not broker.drained(app_id(config.kafka), names.surveys, len(answers), internal=True):
            if worker.poll() is not None or time.monotonic() - started > TIMEOUT_S:
                kept = Path(tempfile.gettempdir()) / f"npspulse-latency-worker-{rate}.log"
                kept.write_bytes(log_path.read_bytes())
                raise RuntimeError(f"worker exited or timed out before draining (log {kept})")
            time.sleep(0.5)
        drained = time.monotonic() - produced
        count = -1
        while count != len(reader.alerts):
            count = len(reader.alerts)
            time.sleep(QUIET_S)
    finally:
        reader.stop.set()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        reader.join(10)
    progress = closing_times(answers, sent, partitions)
    grace = config.engine.windows.grace_ms
    latencies, opened, idle = [], [], 0
    for arrived, alert in reader.alerts:
        closed = closed_at(int(alert["at"]), grace, progress)  # type: ignore[arg-type]
        if closed is None:
            idle += 1
            continue
        latencies.append((arrived - closed) * 1000)
        if alert["type"] == "alert.opened":
            opened.append((arrived - closed) * 1000)
    return Result(rate, latencies, opened, idle, achieved, drained)


def describe(result: Result) -> str:
    """One run's figures on one line."""
    latencies = result.latencies_ms
    return (f"offered {result.achieved:,.0f}/s, drained {result.drained_s:.1f} s after the last answer, "
            f"{len(latencies)} alert events ({result.idle_closed} closed by idleness, left out): p50 "
            f"{percentile(latencies, 50):,.0f} ms, p99 {percentile(latencies, 99):,.0f} ms, "
            f"max {max(latencies, default=float('nan')):,.0f} ms")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN without values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default=os.environ.get("LATENCY_RATES", "100,1000,10000"),
                        help="offered answers per second, comma-separated (default 100,1000,10000)")
    parser.add_argument("--runs", type=int, default=int(os.environ.get("LATENCY_RUNS", "3")))
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", "50000")))
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS)
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    results: dict[int, list[Result]] = {rate: [] for rate in rates}
    with tempfile.TemporaryDirectory(prefix="npspulse-latency-") as tmp:
        work = Path(tmp)
        lines = simulate(work / "stream.jsonl", args.events, args.customers)
        print(f"latency: {len(lines):,} survey answers (24 h of event time, {len(INCIDENTS)} incidents), "
              f"rates {args.rates}/s, {args.runs} runs; load average {os.getloadavg()[0]:.2f}", flush=True)
        for run in range(1, args.runs + 1):
            for rate in rates:
                try:
                    result = run_once(lines, rate, work)
                except RuntimeError as error:  # a worker that crashed or never drained: say so, go on
                    print(f"run {run} at {rate:,}/s: no figure: {error}", flush=True)
                    continue
                results[rate].append(result)
                print(f"run {run} at {rate:,}/s: {describe(result)}", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}; medians over {args.runs} runs of each run's percentiles\n")
    print("| offered answers/s | achieved | alert events | p50 ms | p99 ms | p50 opened ms | drain after last s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for rate, runs in results.items():
        if not runs:
            print(f"| {rate:,} | - | - | - | - | - | no run finished |")
            continue
        med = statistics.median
        print(f"| {rate:,} | {med(r.achieved for r in runs):,.0f} | {med(len(r.latencies_ms) for r in runs):.0f} | "
              f"{med(percentile(r.latencies_ms, 50) for r in runs):,.0f} | "
              f"{med(percentile(r.latencies_ms, 99) for r in runs):,.0f} | "
              f"{med(percentile(r.opened_ms, 50) for r in runs):,.0f} | {med(r.drained_s for r in runs):.1f} |")


if __name__ == "__main__":
    main()
