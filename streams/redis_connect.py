"""Connection options of every Redis client (the worker's stores, the CLI, load-customers) from the redis
settings: the password (URL, NPSPULSE_REDIS_PASSWORD or a secrets file) and TLS (``rediss://`` with a CA
file, optionally a client certificate). Errors name the setting or the file, never the secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

from processors.config import ConfigError, RedisSettings

_REFUSED_CREDENTIALS = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username-password")


def client_options(settings: RedisSettings) -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url(settings.url, ...)``. A password inside the URL wins over
    NPSPULSE_REDIS_PASSWORD, which wins over ``password_file``."""
    options: dict[str, Any] = {}
    password = settings.password or (_read_secret(settings.password_file) if settings.password_file else None)
    if password:
        options["password"] = password
    if settings.url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        if settings.ssl_cafile:
            options["ssl_ca_certs"] = settings.ssl_cafile
        if settings.ssl_certfile:
            options["ssl_certfile"] = settings.ssl_certfile
            options["ssl_keyfile"] = settings.ssl_keyfile
    return options


def _read_secret(path: str) -> str:
    """The first line of a secrets file (a Kubernetes or Docker secret mount), without its line break."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError("redis.password_file", f"cannot read {path} ({reason})",
                          "point it at a readable file holding the Redis password") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError("redis.password_file", f"{path} is empty", "write the Redis password on its first line")
    return lines[0]


def refused_credentials(error: BaseException) -> bool:
    """Whether Redis rejected the credentials (wrong or missing password, or an ACL refusal)."""
    if isinstance(error, AuthenticationError | AuthorizationError):
        return True
    return isinstance(error, ResponseError) and any(token in str(error) for token in _REFUSED_CREDENTIALS)


def check_credentials(settings: RedisSettings, timeout: float = 5.0) -> None:
    """Fail fast when Redis refuses the credentials (a configuration error, not an outage): raise a
    ConfigError naming the settings to check. Unreachable Redis is left to the stores (they degrade)."""
    client = redis.Redis.from_url(settings.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                  **client_options(settings))
    try:
        client.ping()
    except RedisError as error:
        if refused_credentials(error):
            raise ConfigError("redis", f"Redis refused the credentials ({type(error).__name__})",
                              "check the password in redis.url, NPSPULSE_REDIS_PASSWORD or redis.password_file") from None
        if "certificate verify failed" in str(error).lower():
            raise ConfigError("redis.ssl_cafile", "the Redis server's TLS certificate did not verify",
                              "set redis.ssl_cafile to the CA that signed it") from None
    finally:
        client.close()
