"""Faults of the services around the worker: the Kafka broker restarts, Redis goes away for a while, a consumer
of the alerts topic reads very slowly."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer

from streams.topics import kafka_client_config
from tests.faults.harness import REPO, PacedProducer, PrivateRedis, describe, read_all, report, scenario

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

SERVICES = REPO / "deploy" / "local" / "services.sh"
STATE = REPO / ".cache" / "run" / "services.env"


def _our_broker(kafka_bootstrap: str) -> None:
    """The broker must be the one deploy/local/services.sh started from this checkout (it restarts it)."""
    recorded = re.search(r"^KAFKA_PORT=(\d+)$", STATE.read_text(), re.M) if STATE.exists() else None
    if recorded is None or kafka_bootstrap != f"127.0.0.1:{recorded.group(1)}":
        message = f"the broker at {kafka_bootstrap} was not started by {SERVICES} of this checkout"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)


def test_broker_restart_mid_stream(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> None:
    _our_broker(kafka_bootstrap)
    run, expected, lines = scenario(tmp_path, kafka_bootstrap, redis_url, seed=13)
    producer = PacedProducer(run.config, lines)
    run.start()
    run.wait_ready()
    producer.start()
    try:
        producer.wait_for(0.4)
        restarted = subprocess.run(["bash", str(SERVICES), "restart-kafka"], cwd=REPO, capture_output=True, text=True,
                                   env={**os.environ, "NPSPULSE_KAFKA_DOWN_SECONDS": "2"}, timeout=300)
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        run.settle(producer, expected)
        assert producer.failed == 0
        assert run.alive() == ["worker"], describe(run, run.figures(expected))
        figures = run.figures(expected)
        report("broker_restart", figures, restart_at=0.4, down_seconds=2)
        assert figures.exact(), describe(run, figures)
    finally:
        run.stop_all()


def test_redis_outage_mid_stream(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Complements tests/integration/test_redis_outage.py (phases produced while the worker is idle): here Redis
    goes away for NPSPULSE_FAULT_REDIS_DOWN seconds (default 30) while answers stream in. Nothing is lost or
    counted twice, the delivery store fails closed (no trigger published twice, none beyond the replay's),
    and triggers flow again for the answers that arrive once Redis is back."""
    down = float(os.environ.get("NPSPULSE_FAULT_REDIS_DOWN", "30"))
    private = PrivateRedis(tmp_path)
    private.start()
    run, expected, lines = scenario(tmp_path, kafka_bootstrap, private.url, seed=11)
    producer = PacedProducer(run.config, lines)
    producer.hold_at = 0.7  # the last 30 % of the stream comes once Redis is back
    run.start()
    run.wait_ready()
    producer.start()
    try:
        producer.wait_for(0.3)
        private.stop()
        time.sleep(down)
        assert run.alive() == ["worker"], run.log()[-3000:]
        private.start()
        time.sleep(3)  # past the Redis clients' retry back-off
        after = producer.sent
        producer.hold_at = 1.0
        run.settle(producer, expected)
        assert run.alive() == ["worker"], describe(run, run.figures(expected))
        figures = run.figures(expected)
        triggers = read_all(run.config, run.names.retarget)
        replay_triggers = [orjson.loads(line) for line in (tmp_path / "replay" / "triggers.jsonl").read_bytes()
                           .splitlines()]
        tail = {orjson.loads(line)["event_id"] for line in lines[after:]
                if orjson.loads(line)["type"] == "survey"}
        wanted = {t["id"] for t in replay_triggers if t.get("event_id") in tail and t["campaign_id"] == "referral-ask"}
        got_ids = [t["id"] for t in triggers]
        undelivered = [int(n) for n in re.findall(r"'undelivered': (\d+)", run.log())]
        # partial enrichment is marked: the `all` windows say how many of their answers had no customer attributes
        last = {(w["window"], w["window_start"]): w for w in read_all(run.config, run.names.windows)
                if w["segment_id"] == "all"}
        marked = [w for (window, _), w in last.items() if window == "5m" and w.get("answers_without_attributes")]
        report("redis_outage", figures, down_seconds=down, triggers=len(got_ids),
               replay_triggers=len(replay_triggers), undelivered=max(undelivered, default=0),
               tail_triggers_missing=len(wanted - set(got_ids)), marked_windows=len(marked),
               answers_without_attributes=sum(w["answers_without_attributes"] for w in marked))
        assert figures.exact(), describe(run, figures)
        assert max(undelivered, default=0) > 0, "no trigger was held back while Redis was down"
        assert len(got_ids) == len(set(got_ids)), "a trigger published twice"
        assert set(got_ids) <= {t["id"] for t in replay_triggers}, "triggers the replay never decided"
        assert wanted and wanted <= set(got_ids), "answers after Redis came back got no trigger"
        assert "Redis reachable again" in run.log()
        assert marked, "no `all` window says that some of its answers were segmented without customer attributes"
        assert all(w["answers_without_attributes"] <= w["responses"] for w in last.values()
                   if "answers_without_attributes" in w)
    finally:
        run.stop_all()
        private.stop()


class SlowReader(threading.Thread):
    """A consumer of the alerts topic (its own group) that takes one record every ``pause`` seconds."""

    def __init__(self, config, topic: str, pause: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.read = 0
        self.stopping = threading.Event()
        self.pause = pause
        self.consumer = Consumer({**kafka_client_config(config.kafka), "group.id": f"slow-{uuid.uuid4().hex}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": True})
        self.consumer.subscribe([topic])

    def run(self) -> None:
        while not self.stopping.is_set():
            message = self.consumer.poll(0.5)
            if message is not None and message.error() is None:
                self.read += 1
                self.stopping.wait(self.pause)
        self.consumer.close()


def test_slow_alert_consumer_does_not_hold_the_worker(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> None:
    """The first half of the stream flows with no reader of alerts, the second with a reader that takes one alert
    every 2 minutes from the start of the topic. The input lag (events not committed) is sampled at the end of each
    half and reported; the check is that the worker consumes everything, exactly, while the slow reader is
    still behind on alerts."""
    run, expected, lines = scenario(tmp_path, kafka_bootstrap, redis_url, seed=12)
    producer = PacedProducer(run.config, lines)
    run.start()
    run.wait_ready()
    producer.start()
    slow = SlowReader(run.config, run.names.alerts)
    try:
        producer.wait_for(0.5)
        lag_without = run.lag()
        slow.start()
        producer.join(600)
        lag_with = run.lag()
        run.settle(producer, expected)
        assert run.alive() == ["worker"], describe(run, run.figures(expected))
        figures = run.figures(expected)
        published = len(read_all(run.config, run.names.alerts))
        report("slow_alert_consumer", figures, lag_half_without=lag_without, lag_end_with=lag_with,
               slow_read=slow.read, alerts_published=published, lines=len(lines))
        assert figures.exact(), describe(run, figures)
        assert run.lag() == 0
        assert slow.read < published, "the slow reader kept up: the test proves nothing"
    finally:
        slow.stopping.set()
        run.stop_all()
