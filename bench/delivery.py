"""Delivery benchmark: cap checks per second against the real Redis, and triggers per second through the
webhook sink into a local HTTP receiver. Prints figures (medians of --runs); asserts nothing.

    deploy/local/services.sh start; eval "$(deploy/local/services.sh env)"
    .venv/bin/python bench/delivery.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

from processors.delivery import DeliverySettings
from processors.events import RetargetTrigger
from streams.client import ensure_topics, make_producer
from streams.delivery_store import DeliveryStore
from streams.settings import load_config
from streams.topics import TopicNames

DAY_MS = 86_400_000
T0 = 1_772_409_600_000  # 2026-03-02


def triggers(count: int, customers: int) -> list[RetargetTrigger]:
    return [RetargetTrigger(campaign_id=("referral-ask", "service-recovery")[i % 2], customer_id=f"c{i % customers}",
                            event_id=f"e{i}", score=9 if i % 2 == 0 else 2, loyalty="promoter", segment_id="all",
                            reason="bench", channel="email", priority="normal", created_at=T0 + i * 1000,
                            expires_at=T0 + i * 1000 + DAY_MS) for i in range(count)]


async def cap_checks(url: str, count: int, batch: int) -> float:
    """Decisions per second of DeliveryStore.admit (one Lua script per trigger, pipelined per batch)."""
    store = DeliveryStore(url, DeliverySettings(), namespace=f"bench{uuid.uuid4().hex[:8]}")
    items = triggers(count, customers=count // 5)
    started = time.perf_counter()
    decided = 0
    for start in range(0, count, batch):
        decided += len(await store.admit(items[start:start + batch]))
    seconds = time.perf_counter() - started
    await store.close()
    assert decided == count
    return count / seconds


class Receiver(BaseHTTPRequestHandler):
    records = 0
    first: float | None = None
    last = 0.0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        value = orjson.loads(body)
        with Receiver.lock:
            Receiver.records += len(value) if isinstance(value, list) else 1
            now = time.perf_counter()
            Receiver.first = Receiver.first or now
            Receiver.last = now
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def sink_throughput(count: int, batch: int, workdir: Path) -> float:
    """Triggers per second from the retarget topic to the receiver, first request to last."""
    env = {**os.environ, "NPSPULSE_KAFKA_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:8]}."}
    config_path = workdir / "npspulse.toml"
    config_path.write_text("[kafka]\npartitions = 3\n")
    config = load_config(config_path, environ=env)
    ensure_topics(config)
    names = TopicNames.from_settings(config.kafka)
    producer = make_producer(config.kafka)
    for trigger in triggers(count, customers=count):
        producer.produce(names.retarget, key=trigger.customer_id.encode(), value=orjson.dumps(trigger.to_dict()))
        producer.poll(0)
    producer.flush(60)
    Receiver.records, Receiver.first, Receiver.last = 0, None, 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sink = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink", "webhook", "--topic", "retarget", "--url", url,
                             "--from-beginning", "--batch", str(batch), "--config", str(config_path)],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while Receiver.records < count and time.monotonic() < deadline and sink.poll() is None:
            time.sleep(0.05)
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)
        server.shutdown()
    if Receiver.records < count or Receiver.first is None:
        raise RuntimeError(f"the receiver got {Receiver.records} of {count} triggers")
    return count / max(Receiver.last - Receiver.first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checks", type=int, default=50_000, help="triggers admitted per run (default 50000)")
    parser.add_argument("--sink", type=int, default=5_000, help="triggers through the sink per run (default 5000)")
    args = parser.parse_args()
    url = os.environ.get("NPSPULSE_REDIS_URL", "redis://127.0.0.1:6379/0")
    checks = [asyncio.run(cap_checks(url, args.checks, 500)) for _ in range(args.runs)]
    print(f"cap checks against Redis: median {statistics.median(checks):,.0f} decisions/s "
          f"({args.checks:,} triggers, batches of 500, {args.runs} runs: {', '.join(f'{x:,.0f}' for x in checks)})")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 100):
            rates = [sink_throughput(args.sink, batch, Path(tmp)) for _ in range(args.runs)]
            print(f"webhook sink, --batch {batch}: median {statistics.median(rates):,.0f} triggers/s "
                  f"({args.sink:,} triggers, {args.runs} runs: {', '.join(f'{x:,.0f}' for x in rates)})")


if __name__ == "__main__":
    main()
