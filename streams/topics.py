"""Topic names, derived from the configured prefix (``npspulse.`` by default)."""

from __future__ import annotations

from dataclasses import dataclass

from processors.config import KafkaSettings


@dataclass(frozen=True, slots=True)
class TopicNames:
    surveys: str
    purchases: str
    segment_slices: str  # internal: answers pre-aggregated per (segment, slice), keyed by segment
    alerts: str
    windows: str  # every closed window of every segment: counts, NPS and interval
    retarget: str
    dead_letter: str

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> TopicNames:
        prefix = kafka.topic_prefix
        return cls(surveys=f"{prefix}surveys", purchases=f"{prefix}purchases",
                   segment_slices=f"{prefix}segment-slices", alerts=f"{prefix}alerts", windows=f"{prefix}windows",
                   retarget=f"{prefix}retarget", dead_letter=f"{prefix}dead-letter")

    def resolve(self, name: str) -> str:
        """A short name (``alerts``) or a full topic name to the full topic name."""
        short = name.replace("-", "_")
        return getattr(self, short) if short in self.__dataclass_fields__ else name


def kafka_client_config(kafka: KafkaSettings) -> dict[str, str]:
    """librdkafka (confluent-kafka) connection settings; the password comes from the environment only."""
    config = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        config["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password:
        config["sasl.password"] = kafka.sasl_password
    return config
