"""Fixtures for pipeline tests: a private topic prefix and config, workers as real subprocesses
(`python -m streams.cli worker`), and readers of output topics on the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer

from processors.config import Config
from streams.settings import load_config
from streams.topics import TopicNames, kafka_client_config
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = """
[kafka]
partitions = 3
"""


@dataclass
class Deployment:
    """One isolated npspulse deployment on the shared broker: its own topics, group and config."""

    tmp: Path
    env: dict[str, str]
    config_path: Path
    config: Config
    names: TopicNames
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, name: str = "worker", **extra_env: str) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--config", str(self.config_path), "-l", "info",
             "--web-port", str(free_port()), "--worker-id", name],
            cwd=self.tmp, env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(process)
        return process

    def stop_worker(self, process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode

    def log(self, name: str = "worker") -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def deploy(tmp_path: Path, config_text: str, **env: str) -> Iterator[Deployment]:
    """A Deployment with this config file and environment (NPSPULSE_KAFKA_BOOTSTRAP, ...); kills its
    workers afterwards. For fixtures: ``yield from deploy(...)``."""
    prefix = f"it{uuid.uuid4().hex[:10]}."
    config_path = tmp_path / "npspulse.toml"
    config_path.write_text(config_text)
    env = {**os.environ, **env, "NPSPULSE_KAFKA_TOPIC_PREFIX": prefix, "PYTHONUNBUFFERED": "1"}
    config = load_config(config_path, environ=env)
    deployment = Deployment(tmp_path, env, config_path, config, TopicNames.from_settings(config.kafka))
    yield deployment
    for process in deployment.workers:
        deployment.stop_worker(process, signal.SIGKILL, timeout=10)


@pytest.fixture
def deployment(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> Iterator[Deployment]:
    yield from deploy(tmp_path, TEST_CONFIG, NPSPULSE_KAFKA_BOOTSTRAP=kafka_bootstrap, NPSPULSE_REDIS_URL=redis_url)


class TopicReader:
    """Reads a topic from the beginning, accumulating decoded records (with headers) across calls."""

    def __init__(self, config: Config, topic: str) -> None:
        self.records: list[dict] = []
        self._consumer = Consumer({**kafka_client_config(config.kafka), "group.id": f"it-{uuid.uuid4().hex}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._consumer.subscribe([topic])

    def read_until(self, done: Callable[[list[dict]], bool], timeout: float, settle: float = 2.0,
                   alive: subprocess.Popen | None = None) -> list[dict]:
        """Poll until ``done(records)`` holds (then ``settle`` more seconds to catch extras), the timeout,
        or the death of the ``alive`` process."""
        deadline = time.monotonic() + timeout
        settled_at = None
        while time.monotonic() < deadline and (alive is None or alive.poll() is None):
            message = self._consumer.poll(0.25)
            if message is not None and message.error() is None:
                try:
                    record = orjson.loads(message.value())
                except orjson.JSONDecodeError:
                    record = {"raw": message.value()}
                if not isinstance(record, dict):
                    record = {"raw": message.value()}
                if message.headers():
                    record["_headers"] = {k: v.decode() for k, v in message.headers()}
                self.records.append(record)
            # ``done`` may scan every record: ask it when the topic is drained for now, or every 1000 records
            if settled_at is None and (message is None or len(self.records) % 1000 == 0) and done(self.records):
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() - settled_at >= settle:
                break
        return self.records

    def close(self) -> None:
        self._consumer.close()


def _readers(deployment: Deployment) -> Iterator[Callable[[str], TopicReader]]:
    readers: list[TopicReader] = []

    def make(topic: str) -> TopicReader:
        readers.append(TopicReader(deployment.config, topic))
        return readers[-1]

    yield make
    for item in readers:
        item.close()


@pytest.fixture
def reader(deployment: Deployment) -> Iterator[Callable[[str], TopicReader]]:
    yield from _readers(deployment)


@pytest.fixture
def sasl_deployment(tmp_path: Path, kafka_sasl_ssl, redis_url: str) -> Iterator[Deployment]:
    """A deployment whose worker and clients all use the broker's SASL_SSL listener with SCRAM-SHA-512;
    the password is only in the environment (NPSPULSE_KAFKA_SASL_PASSWORD), never in the config file."""
    config = TEST_CONFIG + (f'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
                            f"sasl_username = {json.dumps(kafka_sasl_ssl.username)}\n"
                            f"ssl_cafile = {json.dumps(kafka_sasl_ssl.cafile)}\n")
    yield from deploy(tmp_path, config, NPSPULSE_KAFKA_BOOTSTRAP=kafka_sasl_ssl.bootstrap, NPSPULSE_REDIS_URL=redis_url,
                      NPSPULSE_KAFKA_SASL_PASSWORD=kafka_sasl_ssl.password)


@pytest.fixture
def sasl_reader(sasl_deployment: Deployment) -> Iterator[Callable[[str], TopicReader]]:
    """Like ``reader``, over SASL_SSL."""
    yield from _readers(sasl_deployment)
