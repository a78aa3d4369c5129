"""Redis enrichment in the worker, and a Redis outage mid-run: processing goes on with partial enrichment,
which the window results say (``answers_without_attributes``), triggers are held back (the delivery store
fails closed), and both resume when Redis is back. Uses a private redis-server so the shared one stays up."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import redis

from processors.config import RedisSettings
from processors.timeparse import HOUR_MS, parse_rfc3339_ms
from streams.client import produce_files
from streams.customers import load_customers
from streams.settings import load_config
from streams.simulate import SimulationSettings, simulate_to_file

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

CONFIG = """
[kafka]
partitions = 3

[delivery]
max_per_customer = 0   # caps off: this test is about enrichment and the outage

[segmentation]
segments = ["all", "plan"]   # `plan` exists only in Redis

[[campaigns]]
id = "referral-ask"
on = "answer"
loyalty = ["promoter"]

[[campaigns]]
id = "pro-thanks"
on = "answer"
loyalty = ["promoter"]
segments = ["plan=pro"]
"""


class PrivateRedis:
    def __init__(self, port: int, tmp: Path) -> None:
        self.port, self.tmp = port, tmp
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run via `make test`")
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.tmp)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = PrivateRedis(port, tmp_path)
    server.start()
    yield server
    server.stop()


def _plan(customer_id: str) -> str:
    return "pro" if int(customer_id[1:]) % 2 == 0 else "basic"


def test_redis_outage_degrades_to_partial_enrichment_and_recovers(deployment, reader, private_redis,
                                                                  tmp_path: Path) -> None:
    deployment.config_path.write_text(CONFIG)
    deployment.env["NPSPULSE_REDIS_URL"] = private_redis.url
    deployment.config = load_config(deployment.config_path, environ=deployment.env)

    stream = tmp_path / "stream.jsonl"
    settings = SimulationSettings(customers=600, duration_ms=3 * HOUR_MS, answers_per_minute=18, seed=9, history_days=0)
    simulate_to_file(settings, stream)
    surveys = [orjson.loads(line) for line in stream.read_bytes().splitlines() if b'"type":"survey"' in line]
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,plan\n" + "".join(f"c{i:07d},{_plan(f'c{i:07d}')}\n" for i in range(600)))
    # Three phases, one simulated hour each (so each phase's windows are its own), on disjoint customers (so the
    # worker's attribute cache cannot hide the outage).
    phases = {}
    for phase in range(3):
        path = tmp_path / f"phase{phase}.jsonl"
        hour = settings.start_ms + phase * HOUR_MS
        rows = [s for s in surveys if int(s["customer_id"][1:]) % 3 == phase and hour <= _at(s) < hour + HOUR_MS]
        path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
        phases[phase] = (path, rows)

    def promoters(rows: list[dict], plan: str | None = None) -> set[str]:
        return {r["event_id"] for r in rows if r["score"] >= 9 and (plan is None or _plan(r["customer_id"]) == plan)}

    triggers = reader(deployment.names.retarget)

    def wait_for(rows: list[dict]) -> list[dict]:
        wanted = promoters(rows)
        triggers.read_until(lambda got: wanted <= {t["event_id"] for t in got}, timeout=60, alive=worker)
        return [t for t in triggers.records if t["event_id"] in {r["event_id"] for r in rows}]

    assert load_customers(customers, RedisSettings(url=private_redis.url)) == 600
    produce_files([phases[0][0]], deployment.config, progress=False)
    worker = deployment.start_worker()

    # Redis up: full enrichment, the Redis-only attribute segments answers.
    got = wait_for(phases[0][1])
    assert {t["event_id"] for t in got if t["campaign_id"] == "referral-ask"} == promoters(phases[0][1])
    assert {t["event_id"] for t in got if t["campaign_id"] == "pro-thanks"} == promoters(phases[0][1], "pro")
    assert not any(t.get("enrichment") == "partial" for t in got)

    # Redis down: the worker keeps processing, but the delivery store fails closed: no trigger is published,
    # each is counted as undelivered (in the status log line's delivery counters).
    private_redis.stop()
    produce_files([phases[1][0]], deployment.config, progress=False)
    held_back = len(promoters(phases[1][1]))  # referral-ask only: `plan` is unknown without Redis
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and worker.poll() is None and _undelivered(deployment.log()) < held_back:
        time.sleep(1)
    assert worker.poll() is None, deployment.log()
    assert _undelivered(deployment.log()) == held_back
    triggers.read_until(lambda got: False, timeout=3, settle=0)
    assert not [t for t in triggers.records if t["event_id"] in {r["event_id"] for r in phases[1][1]}]

    # Redis back: full enrichment resumes.
    private_redis.start()
    assert load_customers(customers, RedisSettings(url=private_redis.url)) == 600
    time.sleep(3)  # past the store's retry back-off
    produce_files([phases[2][0]], deployment.config, progress=False)
    got = wait_for(phases[2][1])
    assert {t["event_id"] for t in got if t["campaign_id"] == "pro-thanks"} == promoters(phases[2][1], "pro")
    assert not any(t.get("enrichment") == "partial" for t in got)

    # Every window of `all` counts exactly the answers of the outage phase among its answers as segmented without
    # customer attributes; the windows of phases 0 and 2 carry no such count. (The last windows of phase 2 stay
    # open: nothing moves the watermark past them.)
    outage = [_at(r) for r in phases[1][1]]
    outage_start, outage_end = settings.start_ms + HOUR_MS, settings.start_ms + 2 * HOUR_MS

    def of_all(records: list[dict], window: str = "5m") -> list[dict]:
        return [w for w in records if w["segment_id"] == "all" and w["window"] == window]

    def outage_covered(records: list[dict]) -> bool:
        return sum(w["responses"] for w in of_all(records) if outage_start <= w["window_start"] < outage_end) == len(outage)

    windows = reader(deployment.names.windows).read_until(outage_covered, timeout=60, alive=worker)
    assert outage_covered(windows)
    checked = {"5m": 0, "1h/5m": 0}
    for window in of_all(windows, "5m") + of_all(windows, "1h/5m"):
        expected = sum(1 for at in outage if window["window_start"] <= at < window["window_end"])
        assert window.get("answers_without_attributes", 0) == expected, window
        assert "answers_without_attributes" not in window or expected > 0
        checked[window["window"]] += 1
    assert checked["5m"] >= 24 and checked["1h/5m"] >= 24  # phases 0 and 1 in full, and phase 2 in part
    marked = [w for w in of_all(windows) if outage_start <= w["window_start"] < outage_end]
    assert len(marked) == 12 and all(w["answers_without_attributes"] == w["responses"] for w in marked)
    assert sum(w["answers_without_attributes"] for w in marked) == len(outage)

    log = deployment.log()
    # The outage is logged once per client (enrichment, delivery), not per event.
    assert log.count("Redis unreachable") == 2, log
    assert log.count("Redis reachable again") == 2


def _at(survey: dict) -> int:
    """A simulated survey's answer time (epoch ms)."""
    return parse_rfc3339_ms(survey["answered_at"])


def _undelivered(log: str) -> int:
    """The latest undelivered count of the worker's status log line."""
    counts = re.findall(r"'undelivered': (\d+)", log)
    return int(counts[-1]) if counts else 0
