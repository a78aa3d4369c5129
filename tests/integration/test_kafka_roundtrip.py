"""Round trip through the real Kafka broker started by `make test` (no mocks)."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter, defaultdict

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.kafka

N_MESSAGES = 500
N_CUSTOMERS = 60
PARTITIONS = 3


def _survey_responses(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    comments = [None, "great app", "slow checkout 😞", "Lieferung zu spät", "ok"]
    out = []
    for i in range(n):
        score = rng.randint(0, 10)
        out.append(
            {
                "response_id": f"r-{i:05d}",
                "customer_id": f"cust-{rng.randrange(N_CUSTOMERS):04d}",
                "score": score,
                "category": "promoter" if score >= 9 else "passive" if score >= 7 else "detractor",
                "region": rng.choice(["EU", "NA", "APAC"]),
                "channel": rng.choice(["app", "web", "store", "call"]),
                "ts_ms": 1_700_000_000_000 + i * 1_000,
                "weight": round(rng.uniform(0.5, 2.0), 3),
                "comment": rng.choice(comments),
                "tags": rng.sample(["price", "delivery", "support", "ux"], k=rng.randint(0, 2)),
            }
        )
    return out


def test_produce_consume_roundtrip(kafka_bootstrap: str, topic_name) -> None:
    topic = topic_name("nps-roundtrip")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    futures[topic].result(timeout=30)

    try:
        sent = _survey_responses(N_MESSAGES)
        by_id = {m["response_id"]: m for m in sent}

        delivered: list[tuple[str, int]] = []  # (key, partition)
        errors: list[KafkaError] = []

        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append(err)
            else:
                delivered.append((msg.key().decode(), msg.partition()))

        producer = Producer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
            }
        )
        for m in sent:
            producer.produce(topic, key=m["customer_id"].encode(), value=orjson.dumps(m), on_delivery=on_delivery)
            producer.poll(0)
        assert producer.flush(30) == 0, "producer did not deliver everything within 30s"
        assert not errors, errors
        assert len(delivered) == N_MESSAGES

        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"roundtrip-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        received: list[tuple[str, int, dict]] = []
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 60
            while len(received) < N_MESSAGES and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=500, timeout=1.0):
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            continue
                        raise AssertionError(f"consumer error: {msg.error()}")
                    received.append((msg.key().decode(), msg.partition(), orjson.loads(msg.value())))
            # Anything beyond N_MESSAGES would be a duplicate: give stragglers a moment to show up.
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                if not msg.error():
                    received.append((msg.key().decode(), msg.partition(), orjson.loads(msg.value())))
        finally:
            consumer.close()

        ids = Counter(value["response_id"] for _, _, value in received)
        assert set(ids) == set(by_id), f"missing: {sorted(set(by_id) - set(ids))[:10]}"
        assert all(c == 1 for c in ids.values()), f"duplicates: {[i for i, c in ids.items() if c > 1][:10]}"
        assert len(received) == N_MESSAGES

        partitions_by_key: dict[str, set[int]] = defaultdict(set)
        for key, partition, value in received:
            assert value == by_id[value["response_id"]]
            assert key == value["customer_id"]
            partitions_by_key[key].add(partition)
        for key, partition in delivered:
            partitions_by_key[key].add(partition)
        split = {k: p for k, p in partitions_by_key.items() if len(p) != 1}
        assert not split, f"keys spread over several partitions: {split}"
        assert len({next(iter(p)) for p in partitions_by_key.values()}) > 1, "all keys landed in one partition"
    finally:
        admin.delete_topics([topic], operation_timeout=10)
