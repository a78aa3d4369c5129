"""The ceiling: consume a topic with confluent-kafka and decode every value with orjson, nothing else.

    python bench/peers/limit.py BOOTSTRAP TOPIC EVENTS
"""

from __future__ import annotations

import sys
import uuid

import orjson
from confluent_kafka import Consumer, TopicPartition


def main(bootstrap: str, topic: str, events: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-limit-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])  # no group join
    seen = 0
    try:
        while seen < events:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error() is None:
                    orjson.loads(message.value())
                    seen += 1
    finally:
        consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
