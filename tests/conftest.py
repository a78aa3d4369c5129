"""Shared pytest fixtures.

The real-services fixtures point at the Kafka broker and Redis that `make test` starts on loopback
(deploy/local/with-services.sh exports NPSPULSE_KAFKA_BOOTSTRAP / NPSPULSE_REDIS_URL, and for the broker's
SASL_SSL listener NPSPULSE_TEST_SASL_SSL_BOOTSTRAP / _SASL_USERNAME / _SASL_PASSWORD / NPSPULSE_TEST_SSL_CAFILE).
Outside of that, tests needing them are skipped locally and fail under CI (env CI set), so CI can never go
green by skipping.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

_NEEDS_SERVICES = "run via `make test`, which starts Kafka and Redis"


def _service_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        msg = f"{name} is not set: {_NEEDS_SERVICES}"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """bootstrap.servers of the real Kafka broker, e.g. ``127.0.0.1:19092``."""
    return _service_env("NPSPULSE_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis, e.g. ``redis://127.0.0.1:6390/0``."""
    return _service_env("NPSPULSE_REDIS_URL")


@dataclass(frozen=True)
class SaslSsl:
    """The broker's SASL_SSL listener: one user for SCRAM-SHA-512 and PLAIN, and the CA of its certificate."""

    bootstrap: str
    username: str
    password: str = field(repr=False)
    cafile: str


@pytest.fixture(scope="session")
def kafka_sasl_ssl() -> SaslSsl:
    """The SASL_SSL listener of the real broker, e.g. ``127.0.0.1:19094`` (see deploy/local/services.sh)."""
    return SaslSsl(bootstrap=_service_env("NPSPULSE_TEST_SASL_SSL_BOOTSTRAP"),
                   username=_service_env("NPSPULSE_TEST_SASL_USERNAME"),
                   password=_service_env("NPSPULSE_TEST_SASL_PASSWORD"),
                   cafile=_service_env("NPSPULSE_TEST_SSL_CAFILE"))


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory for unique topic (or key-prefix) names: ``topic_name()`` / ``topic_name("nps-events")``."""
    default = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-.") or "test"

    def make(prefix: str | None = None) -> str:
        return f"{prefix or default}-{uuid.uuid4().hex[:12]}"

    return make
