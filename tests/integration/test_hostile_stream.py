"""100,000 hostile payloads through the real worker: it survives, and every one is in dead-letter with a reason."""

from __future__ import annotations

import random

import pytest

from streams.client import ensure_topics, make_producer

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

MESSAGES = 100_000


def _payload(rng: random.Random, i: int) -> bytes:
    kind = i % 5
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))  # noise
    if kind == 1:
        return b"[" * rng.randrange(1, 5000)  # deep, unterminated
    if kind == 2:
        return b'{"type": "survey", "score": %d}' % rng.randrange(-5, 20)  # missing fields
    if kind == 3:
        return ('{"type": "survey", "event_id": "%s", "customer_id": "c", "score": 3, '
                '"answered_at": "not a time"}' % ("\u202e" * rng.randrange(1, 50))).encode()
    return b'"just a string"'


def test_random_payloads_all_dead_lettered_and_the_worker_survives(deployment, reader) -> None:
    ensure_topics(deployment.config)
    producer = make_producer(deployment.config.kafka)
    rng = random.Random(8)
    for i in range(MESSAGES):
        producer.produce(deployment.names.surveys, value=_payload(rng, i), key=f"k{i % 97}".encode())
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    worker = deployment.start_worker()
    dead = reader(deployment.names.dead_letter).read_until(lambda got: len(got) >= MESSAGES, timeout=300,
                                                           alive=worker)
    assert worker.poll() is None, deployment.log()[-3000:]
    assert len(dead) == MESSAGES
    assert all(record["_headers"].get("npspulse.reason") for record in dead)
    assert {record["_headers"]["npspulse.source.topic"] for record in dead} == {deployment.names.surveys}
