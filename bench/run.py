"""`make bench`: npspulse against the raw consume ceiling and two peers on one workload (prints figures; asserts
nothing). Needs the local broker and Redis (`make bench` starts them with deploy/local/with-services.sh).

Simulates BENCH_EVENTS survey answers (default 50,000; the file also holds purchases, which are dropped: the peers
see answers only) of BENCH_CUSTOMERS customers over 24 h with one incident, then BENCH_RUNS times (default 3):
produces them to a fresh surveys topic and runs each system on it, one after the other, each in its own process:

- limit: confluent-kafka consume + orjson decode (bench/peers/limit.py);
- npspulse embedded: `npspulse replay` of the same JSONL, in-process;
- npspulse worker: one worker, timed until its group has committed every surveys offset;
- faust textbook: bench/peers/faust_textbook.py, timed the same way;
- quix streams: bench/peers/quix_job.py in .venv-quix (`make bench` installs it), timed until its group has
  committed every offset of the surveys and its repartition topic.

Wall time counts from process start (start-up included) to done; CPU and peak RSS are the child's rusage.
Run 1 checks that each peer's per-segment 5-minute counts equal npspulse's (the embedded run's windows).

Then the worker's event-to-alert latency, BENCH_RUNS times: bench/latency.py's run at LATENCY_RATE answers/s
offered (default 10,000, the issue's load), on its own stream of the same size with five incidents (one alone
gives too few alert events for a p99). `make bench-latency` sweeps several rates.
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from worker_throughput import free_port, high_water_kib, pipeline_done

from processors.config import Config
from streams.app import app_id
from streams.client import produce_files
from streams.settings import load_config
from streams.topics import TopicNames

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "npspulse-bench.toml"
PEERS = ROOT / "bench" / "peers"
QUIX_PYTHON = ROOT / ".venv-quix" / "bin" / "python"
INCIDENT = "region=EU|channel=app @ +14h for 60m +25pp"
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT", "900"))
Counts = dict[tuple[str, int], int]  # (segment id, window start ms) -> answers


@dataclass(frozen=True, slots=True)
class Measure:
    seconds: float
    cpu: float
    rss_mib: float


class Broker:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})

    def drained(self, group: str, source: str, events: int, internal: bool = False) -> bool:
        """The group committed all ``events`` of ``source`` and (``internal``) every other topic it reads."""
        request = ConsumerGroupTopicPartitions(group)
        offsets = self.admin.list_consumer_group_offsets([request])[group].result().topic_partitions or []
        read = [tp for tp in offsets if tp.offset >= 0 and (internal or tp.topic == source)]
        if sum(tp.offset for tp in read if tp.topic == source) < events:
            return False
        return all(tp.offset >= self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in read)

    def records(self, topic: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a topic, from the beginning to its current end."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-check", "enable.auto.commit": False})
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        out, left = [], {p for p, end in ends.items() if end > 0}
        while left:  # by offset, not by count: a compacted changelog has fewer records than offsets
            batch = consumer.consume(10_000, timeout=5.0)
            if not batch:
                break
            for message in batch:
                if message.error() is None:
                    out.append((message.key(), message.value()))
                    if message.offset() >= ends[message.partition()] - 1:
                        left.discard(message.partition())
        consumer.close()
        return out


def measure(cmd: list[str], env: dict[str, str], workdir: Path, done: Callable[[], bool] | None = None) -> Measure:
    """Run ``cmd`` until it exits (``done`` None) or until ``done()``, then SIGTERM; the child's rusage."""
    log_path = workdir / f"{Path(cmd[1]).stem}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    seconds = stopped = None
    peak_kib = 0
    while True:
        peak_kib = max(peak_kib, high_water_kib(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        now = time.perf_counter()
        if seconds is None and done is not None and done():
            seconds, stopped = time.perf_counter() - started, now
            proc.send_signal(signal.SIGTERM)
        elif (stopped and now - stopped > 60) or now - started > TIMEOUT_S:
            proc.kill()
        time.sleep(0.1 if done is None else 0.5)
    if done is None and proc.returncode == 0:
        seconds = time.perf_counter() - started
    if seconds is None:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} before it was done (log {log_path}):\n{tail}")
    return Measure(seconds, usage.ru_utime + usage.ru_stime, peak_kib / 1024)


def npspulse_counts(windows: Path) -> Counts:
    rows = (orjson.loads(line) for line in windows.read_bytes().splitlines())
    return {(row["segment_id"], row["window_start"]): row["responses"] for row in rows if row["window"] == "5m"}


def faust_counts(records: list[tuple[bytes, bytes]]) -> Counts:
    """The faust table's changelog: key [segment, [start s, end s]], value the count so far (largest wins)."""
    counts: Counts = {}
    for key, value in records:
        segment, (start, _) = orjson.loads(key)
        window = (segment, round(start * 1000))
        counts[window] = max(counts.get(window, 0), orjson.loads(value))
    return counts


def quix_counts(records: list[tuple[bytes, bytes]]) -> Counts:
    """The quix job's output: each window's count as it changes (largest wins)."""
    counts: Counts = {}
    for key, value in records:
        row = orjson.loads(value)
        window = (key.decode(), row["start"])
        counts[window] = max(counts.get(window, 0), row["value"])
    return counts


def compare(name: str, reference: Counts, counts: Counts) -> str:
    differ = sum(1 for window, count in counts.items() if reference.get(window) != count)
    missing = sorted(start for _, start in reference.keys() - counts.keys())
    last = max(start for _, start in reference)
    verdict = "SAME COUNTS" if not differ and not missing else ("differs" if differ else "same counts where emitted")
    line = (f"check {name}: {verdict}: {len(counts) - differ:,} of {len(reference):,} npspulse (segment, 5-min window) "
            f"counts equal, {differ:,} differ, {len(missing):,} missing")
    if missing:
        line += f" (from {(last - missing[0]) / 60_000:.0f} min before the last window on)"
    return line


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} CPUs, {model}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


Plan = tuple[list[str], dict[str, str], Path, Callable[[], bool] | None]


def plan(broker: Broker, config: Config, env: dict[str, str], work: Path, surveys: Path, total: int,
         run: int) -> dict[str, Plan]:
    """Each system's command, environment, directory and done-check for this run's topic."""
    prefix = config.kafka.topic_prefix
    topic = TopicNames.from_settings(config.kafka).surveys
    peer = {**env, "BENCH_TOPIC": topic, "BENCH_PARTITIONS": str(config.kafka.partitions)}
    python, npspulse = sys.executable, [sys.executable, "-m", "streams.cli"]
    faust_app, quix_app = f"{prefix}faust", f"{prefix}quix"
    return {
        "limit": ([python, str(PEERS / "limit.py"), broker.bootstrap, topic, str(total)], env, work, None),
        "npspulse embedded": ([*npspulse, "replay", str(surveys), "--config", str(CONFIG), "--out-dir",
                               str(work / f"replay{run}"), "--no-progress"], env, work, None),
        "npspulse worker": ([*npspulse, "worker", "--config", str(CONFIG), "-l", "warning", "--web-port",
                             str(free_port())], env, work,
                            pipeline_done(config, TopicNames.from_settings(config.kafka), config.kafka.partitions,
                                          lambda: broker.drained(app_id(config.kafka), topic, total))),
        "faust textbook": ([python, str(PEERS / "faust_textbook.py"), "worker", "-l", "warn"],
                           {**peer, "BENCH_APP": faust_app}, work, lambda: broker.drained(faust_app, topic, total)),
        "quix streams": ([str(QUIX_PYTHON), str(PEERS / "quix_job.py")],
                         {**peer, "BENCH_APP": quix_app, "BENCH_OUT": f"{prefix}quix-counts",
                          "BENCH_STATE_DIR": str(work / f"quix{run}")}, work,
                         lambda: broker.drained(quix_app, topic, total, internal=True)),
    }


def main() -> None:
    events = int(os.environ.get("BENCH_EVENTS", "50000"))
    customers = int(os.environ.get("BENCH_CUSTOMERS", "100000"))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    broker = Broker(os.environ["NPSPULSE_KAFKA_BOOTSTRAP"])
    systems = ["limit", "npspulse embedded", "npspulse worker", "faust textbook", "quix streams"]
    if not QUIX_PYTHON.exists():
        systems.remove("quix streams")
        print(f"quix streams: left out, {QUIX_PYTHON} missing (`make bench` installs it)")
    results: dict[str, list[Measure]] = {system: [] for system in systems}
    print(f"machine before: {machine()}")
    with tempfile.TemporaryDirectory(prefix="npspulse-bench-") as tmp:
        work = Path(tmp)
        stream, surveys = work / "stream.jsonl", work / "surveys.jsonl"
        subprocess.run([sys.executable, "-m", "streams.cli", "simulate", "--customers", str(customers), "--duration",
                        "24h", "--rate", f"{events / 1440:.3f}", "--seed", "7", "--incident", INCIDENT,
                        "--out", str(stream)], check=True, cwd=ROOT)
        total = 0
        with stream.open("rb") as source, surveys.open("wb") as out:
            for line in source:
                if b'"type":"survey"' in line:
                    out.write(line)
                    total += 1
        print(f"workload: {total:,} survey answers, {customers:,} customers, 24 h, 224 segments, incident {INCIDENT!r}")
        for run in range(1, runs + 1):
            prefix = f"bench{uuid.uuid4().hex[:8]}."
            env = {**os.environ, "NPSPULSE_KAFKA_TOPIC_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
            config = load_config(CONFIG, environ=env)
            produce_files([surveys], config, progress=False)
            plans = plan(broker, config, env, work, surveys, total, run)
            for system in systems:
                results[system].append(measure(*plans[system]))
                done = results[system][-1]
                print(f"run {run} {system}: {total / done.seconds:,.0f} events/s ({done.seconds:.1f} s wall, "
                      f"{done.cpu:.1f} s CPU, {done.rss_mib:.0f} MiB peak RSS)", flush=True)
            if run == 1:
                faust_app = f"{prefix}faust"
                reference = npspulse_counts(work / "replay1" / "windows.jsonl")
                print(compare("faust textbook", reference, faust_counts(
                    broker.records(f"{faust_app}-segment-counts-changelog"))))
                if "quix streams" in systems:
                    print(compare("quix streams", reference, quix_counts(broker.records(f"{prefix}quix-counts"))))
        latency_rate = int(os.environ.get("LATENCY_RATE", "10000"))
        latencies = worker_latency(work, events, latency_rate, runs)
    print(f"machine after: {machine()} (shared, noisy 2-core machine: figures vary run to run)\n")
    limit = statistics.median(total / m.seconds for m in results["limit"])
    print(f"{total:,} survey answers; medians of {runs} runs; start-up included in wall time\n")
    print(f"| system | events/s | ratio to limit | CPU s / M events | peak RSS MiB | event-to-alert p50 / p99 ms "
          f"at {latency_rate:,}/s offered |")
    print("|---|---:|---:|---:|---:|---:|")
    for system, measures in results.items():
        rate = statistics.median(total / m.seconds for m in measures)
        cpu = statistics.median(m.cpu for m in measures) / total * 1e6
        rss = statistics.median(m.rss_mib for m in measures)
        latency = latencies if system == "npspulse worker" else ""
        print(f"| {system} | {rate:,.0f} | {rate / limit:.3f} | {cpu:,.0f} | {rss:,.0f} | {latency} |")


def worker_latency(work: Path, events: int, rate: int, runs: int) -> str:
    """Median over ``runs`` of each run's p50 and p99 event-to-alert latency at ``rate`` answers/s offered, as
    "p50 / p99" for the table (bench/latency.py measures; each run is printed as it ends)."""
    import latency

    lines = latency.simulate(work / "latency-stream.jsonl", events, latency.DEFAULT_CUSTOMERS)
    results = []
    for run in range(1, runs + 1):
        try:
            result = latency.run_once(lines, rate, work)
        except RuntimeError as error:  # a worker that crashed or never drained: say so, go on
            print(f"latency run {run} at {rate:,}/s: no figure: {error}", flush=True)
            continue
        results.append(result)
        print(f"latency run {run}: {latency.describe(result)}", flush=True)
    if not results:
        return "no run finished"
    p50 = statistics.median(latency.percentile(r.latencies_ms, 50) for r in results)
    p99 = statistics.median(latency.percentile(r.latencies_ms, 99) for r in results)
    achieved = statistics.median(r.achieved for r in results)
    return f"{p50:,.0f} / {p99:,.0f} (offered {achieved:,.0f}/s)"


if __name__ == "__main__":
    main()
