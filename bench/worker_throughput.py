"""Events per second through one npspulse worker on a real broker (prints figures; asserts nothing).

Needs the local broker and Redis (`make services-start`, then `eval "$(deploy/local/services.sh env)"`).
Produces a JSONL file to fresh topics, starts one worker, and times how long the worker's consumer group
takes to commit every offset of the surveys and purchases topics, then every segment-slices record forwarded
from them (so the per-segment windows and detection are timed, not only the first hop). Repeat with --runs
for a median.

    python bench/worker_throughput.py FILE [--runs 3] [--partitions 6] [--config bench/npspulse-bench.toml]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processors.config import Config
from streams.app import app_id
from streams.client import produce_files
from streams.settings import load_config
from streams.topics import TopicNames, kafka_client_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


COORDINATOR_NOT_READY = (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                         KafkaError.NOT_COORDINATOR)


def committed_offsets(consumer: Consumer, tps: list[TopicPartition], wait_seconds: float = 60.0) -> list[TopicPartition]:
    """The group's committed offsets, retried while the broker's group coordinator is not ready yet (a broker
    just started answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS for a few seconds)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return consumer.committed(tps, timeout=10)
        except KafkaException as error:
            kafka_error = error.args[0]
            waiting = kafka_error.retriable() or kafka_error.code() in COORDINATOR_NOT_READY
            if not waiting or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def lag(config, names: TopicNames, partitions: int) -> int:
    consumer = Consumer({**kafka_client_config(config.kafka), "group.id": app_id(config.kafka),
                         "enable.auto.commit": False})
    try:
        total = 0
        tps = [TopicPartition(topic, p) for topic in (names.surveys, names.purchases) for p in range(partitions)]
        committed = committed_offsets(consumer, tps)
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            total += high - max(tp.offset, 0)
        return total
    finally:
        consumer.close()


def pipeline_done(config, names: TopicNames, partitions: int, sources_done: Callable[[], bool]) -> Callable[[], bool]:
    """A check that the worker is done with its input: ``sources_done()`` (its group committed the input
    topics), then the group committed every segment-slices record that existed at that moment, so the
    segments agent's work (windows, detection, outputs) is timed too. Not that topic's end: the worker keeps
    adding watermark markers to it."""
    ends: list[TopicPartition] = []

    def done() -> bool:
        consumer = Consumer({**kafka_client_config(config.kafka), "group.id": app_id(config.kafka),
                             "enable.auto.commit": False})
        try:
            if not ends:
                if not sources_done():
                    return False
                ends.extend(TopicPartition(names.segment_slices, p, consumer.get_watermark_offsets(
                    TopicPartition(names.segment_slices, p), timeout=10)[1]) for p in range(partitions))
            committed = committed_offsets(consumer, [TopicPartition(tp.topic, tp.partition) for tp in ends])
            return all(got.offset >= end.offset for got, end in zip(committed, ends, strict=True))
        finally:
            consumer.close()

    return done


def keep_pace(producer, started: float, sent: int, rate: float) -> None:
    """Serve the producer's callbacks, then sleep until ``sent`` records are due at ``rate`` per second from
    ``started`` (``time.monotonic()``)."""
    producer.poll(0)
    ahead = started + sent / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)


def fresh_deployment(workdir: Path, label: str, config_text: str) -> tuple[Path, dict[str, str], Config, TopicNames]:
    """A config file in ``workdir`` and an environment whose topic prefix (hence topics and group) is new."""
    prefix = f"{label}{uuid.uuid4().hex[:8]}."
    config_path = workdir / "npspulse.toml"
    config_path.write_text(config_text)
    env = {**os.environ, "NPSPULSE_KAFKA_TOPIC_PREFIX": prefix}
    config = load_config(config_path, environ=env)
    return config_path, env, config, TopicNames.from_settings(config.kafka)


def high_water_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM). Not ru_maxrss: Linux carries the forking parent's peak into the
    child's ru_maxrss across exec, which would floor every figure at this script's own RSS."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def run_once(path: Path, partitions: int, workdir: Path, base_config: str = "") -> tuple[float, int, float]:
    """Seconds until the worker is done, events produced, the worker's peak RSS in MiB."""
    config_path, env, config, names = fresh_deployment(workdir, "bench",
                                                       f"{base_config}\n[kafka]\npartitions = {partitions}\n")
    prefix = env["NPSPULSE_KAFKA_TOPIC_PREFIX"]
    report = produce_files([path], config, progress=False)
    log = (workdir / f"{prefix}log").open("wb")
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--config", str(config_path),
                               "-l", "info", "--web-port", str(free_port())], cwd=workdir, env=env, stdout=log, stderr=log)
    try:
        done = pipeline_done(config, names, partitions, lambda: lag(config, names, partitions) == 0)
        while not done():
            if worker.poll() is not None:
                log.flush()
                lines = Path(log.name).read_text(errors="replace").splitlines()
                first = next((i for i, line in enumerate(lines) if "[ERROR]" in line or "Traceback" in line), 0)
                kept = Path(tempfile.gettempdir()) / "npspulse-bench-worker.log"
                kept.write_text("\n".join(lines))
                raise RuntimeError(f"worker exited (whole log: {kept}); from the first error:\n"
                                   + "\n".join(lines[first:first + 60]))
            time.sleep(0.5)
        return time.perf_counter() - started, report.total, high_water_kib(worker.pid) / 1024
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--config", type=Path, help="a TOML config without [kafka] (e.g. bench/npspulse-bench.toml)")
    args = parser.parse_args()
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            seconds, events, peak = run_once(args.file, args.partitions, Path(tmp),
                                             args.config.read_text() if args.config else "")
            rates.append(events / seconds)
            print(f"run {run + 1}: {events:,} events in {seconds:.1f} s (start-up included): {rates[-1]:,.0f} events/s, "
                  f"worker peak RSS {peak:,.0f} MiB")
    print(f"median over {len(rates)} runs: {statistics.median(rates):,.0f} events/s through one worker "
          f"({args.partitions} partitions)")


if __name__ == "__main__":
    main()
