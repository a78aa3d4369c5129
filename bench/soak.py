"""Soak: one worker under a fixed offered load for a long while; its memory, lag and errors over time.

Prints figures, asserts nothing. `make soak` starts the local broker and Redis and runs

    python bench/soak.py [--minutes 30] [--rate 300] [--partitions 3] [--customers 20000]

A simulated stream (several days of event time, so windows and baselines turn over many times) is produced
at --rate records per second while one worker consumes it, with a one-day RFM horizon so that purchase
histories expire within the soak too. Every 10 s: the worker's resident memory, the
group's lag on the input topics and the errors in its log. At the end: memory per period, its growth over
the second half (flat once windows expire is the goal), the largest lag and the error count.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
from worker_throughput import free_port, fresh_deployment, keep_pace, lag

from streams.client import ensure_topics, make_producer
from streams.simulate import SimulationSettings, simulate_to_file
from streams.topics import TopicNames

SAMPLE_SECONDS = 10.0
ANSWERS_PER_MINUTE = 60


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def stream_lines(path: Path, needed: int, customers: int) -> list[bytes]:
    """A simulated stream with at least ``needed`` records (answers and purchases), in arrival order."""
    days = 1
    while True:
        settings = SimulationSettings(customers=customers, duration_ms=days * 86_400_000,
                                      answers_per_minute=ANSWERS_PER_MINUTE, seed=11)
        simulate_to_file(settings, path)
        lines = path.read_bytes().splitlines()
        if len(lines) >= needed:
            return lines[:needed]
        days = days * 2 if len(lines) * 2 <= needed else days + 1 + (needed - len(lines)) * days // len(lines)


def produce_paced(config, names: TopicNames, lines: list[bytes], rate: int, stop: threading.Event) -> None:
    """Send ``rate`` records per second (surveys and purchases to their topics, keyed by customer)."""
    producer = make_producer(config.kafka)
    started = time.monotonic()
    for index, line in enumerate(lines):
        if stop.is_set():
            break
        event = orjson.loads(line)
        topic = names.purchases if event.get("type") == "purchase" else names.surveys
        producer.produce(topic, value=line, key=str(event.get("customer_id", "")).encode())
        if index % rate == rate - 1:
            keep_pace(producer, started, index + 1, rate)
    producer.flush(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=300, help="records per second offered (default 300)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--customers", type=int, default=20_000)
    args = parser.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # A one-day RFM horizon: the soak covers a few days of event time, so purchase histories turn over
        # like every other piece of state (with the default 90 days they would only grow during a soak).
        config_path, env, config, names = fresh_deployment(
            workdir, "soak", f"[kafka]\npartitions = {args.partitions}\n\n[profiles]\nhorizon = \"1d\"\n")
        ensure_topics(config)
        lines = stream_lines(workdir / "stream.jsonl", int(seconds * args.rate), args.customers)
        print(f"soak: {len(lines):,} records offered at {args.rate}/s for {args.minutes:g} min, "
              f"{args.partitions} partitions, {args.customers:,} customers")
        log_path = workdir / "worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--config", str(config_path),
                                       "-l", "info", "--web-port", str(free_port())],
                                      cwd=workdir, env=env, stdout=log, stderr=log)
        stop = threading.Event()
        producer = threading.Thread(target=produce_paced, args=(config, names, lines, args.rate, stop), daemon=True)
        producer.start()
        samples: list[tuple[float, float, int, int]] = []  # (minutes, RSS MiB, lag, errors)
        started = time.monotonic()
        print(f"{'min':>6} {'RSS MiB':>8} {'lag':>8} {'errors':>6}")
        try:
            while time.monotonic() - started < seconds and worker.poll() is None:
                time.sleep(SAMPLE_SECONDS)
                errors = log_path.read_text(errors="replace").count("[ERROR]")
                sample = ((time.monotonic() - started) / 60, rss_mb(worker.pid), lag(config, names, args.partitions),
                          errors)
                samples.append(sample)
                if len(samples) % 6 == 0 or len(samples) == 1:
                    print(f"{sample[0]:6.1f} {sample[1]:8.1f} {sample[2]:8,d} {sample[3]:6d}", flush=True)
        finally:
            stop.set()
            crashed = worker.poll() is not None
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        summarize(samples, crashed)
        for kind, count in error_kinds(log_path.read_text(errors="replace")).most_common():
            print(f"  {count:5d} x {kind}")


def error_kinds(log: str) -> Counter[str]:
    """The worker log's [ERROR] lines by kind: the message without its timestamp, pid and numbers."""
    kinds: Counter[str] = Counter()
    for line in log.splitlines():
        if "[ERROR]" in line:
            message = line.split("[ERROR]", 1)[1]
            kinds[re.sub(r"\d+(\.\d+)?", "N", message).strip()[:120]] += 1
    return kinds


def summarize(samples: list[tuple[float, float, int, int]], crashed: bool) -> None:
    if not samples:
        print("no samples: the worker stopped at once" if crashed else "no samples")
        return
    half = samples[len(samples) // 2:]
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3, 4)]
    print("RSS MiB at 1/4, 1/2, 3/4, end: " + ", ".join(f"{s[1]:.0f}" for s in quarters))
    print(f"RSS growth over the second half: {half[-1][1] - half[0][1]:+.1f} MiB in {half[-1][0] - half[0][0]:.1f} min"
          f" (peak {max(s[1] for s in samples):.0f} MiB)")
    print(f"lag: largest {max(s[2] for s in samples):,d}, at the end {samples[-1][2]:,d} records")
    print(f"errors in the worker log: {samples[-1][3]}" + ("; the worker EXITED during the soak" if crashed else ""))


if __name__ == "__main__":
    main()
