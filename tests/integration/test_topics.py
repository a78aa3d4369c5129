"""Topic set-up on the real broker: created with the configured partitions, mismatches refused."""

from __future__ import annotations

import dataclasses
import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from processors.config import ConfigError
from streams.client import ensure_topics
from streams.topics import kafka_client_config

pytestmark = pytest.mark.kafka


def test_topics_are_created_with_the_configured_partitions(deployment) -> None:
    ensure_topics(deployment.config)
    topics = AdminClient(kafka_client_config(deployment.config.kafka)).list_topics(timeout=10).topics
    names = deployment.names
    for name in (names.surveys, names.purchases, names.alerts, names.windows, names.retarget, names.dead_letter):
        assert len(topics[name].partitions) == deployment.config.kafka.partitions
    ensure_topics(deployment.config)  # idempotent


def test_input_topics_with_another_partition_count_stop_start_up(deployment) -> None:
    admin = AdminClient(kafka_client_config(deployment.config.kafka))
    admin.create_topics([NewTopic(deployment.names.surveys, num_partitions=2, replication_factor=1)])[
        deployment.names.surveys].result(15)
    deadline = time.monotonic() + 15  # creation returns before every broker's metadata lists the topic
    while deployment.names.surveys not in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(ConfigError) as raised:
        ensure_topics(deployment.config)
    assert raised.value.field == "kafka.partitions" and "2" in raised.value.fix
    wider = dataclasses.replace(deployment.config, kafka=dataclasses.replace(deployment.config.kafka, partitions=2))
    ensure_topics(wider)
