"""Topic names, derived from the configured prefix (``npspulse.`` by default)."""

from __future__ import annotations

from dataclasses import dataclass

from processors.config import ConfigError, KafkaSettings


@dataclass(frozen=True, slots=True)
class TopicNames:
    surveys: str
    purchases: str
    segment_slices: str  # internal: answers pre-aggregated per (segment, slice), on the owning partition
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
    check_credentials(kafka)
    config = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": kafka.security_protocol}
    optional = {"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.sasl_username,
                "sasl.password": kafka.sasl_password, "ssl.ca.location": kafka.ssl_cafile,
                "ssl.certificate.location": kafka.ssl_certfile, "ssl.key.location": kafka.ssl_keyfile}
    config.update({key: value for key, value in optional.items() if value})
    return config


def check_credentials(kafka: KafkaSettings) -> None:
    """A SASL protocol needs a username and a password, which the config file alone cannot give (the
    password only comes from the environment), so this is checked when a Kafka client is made."""
    if not kafka.security_protocol.startswith("SASL"):
        return
    if not kafka.sasl_username:
        raise ConfigError("kafka.sasl_username", f"missing (security_protocol is {kafka.security_protocol})",
                          "set sasl_username in [kafka] or NPSPULSE_KAFKA_SASL_USERNAME")
    if not kafka.sasl_password:
        raise ConfigError("kafka.sasl_password", f"missing (security_protocol is {kafka.security_protocol})",
                          "set NPSPULSE_KAFKA_SASL_PASSWORD in the environment")
