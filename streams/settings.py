"""Load the TOML config (explicit path, ./npspulse.toml, or the packaged default) and apply environment
overrides for connection settings. Secrets come only from the environment and are never printed."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from processors.config import Config, ConfigError, check_redis_settings, config_from_dict

LOCAL_CONFIG = Path("npspulse.toml")
ENV_OVERRIDES = {
    "NPSPULSE_KAFKA_BOOTSTRAP": ("kafka", "bootstrap_servers"),
    "NPSPULSE_KAFKA_TOPIC_PREFIX": ("kafka", "topic_prefix"),
    "NPSPULSE_KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "NPSPULSE_KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "NPSPULSE_REDIS_URL": ("redis", "url"),
    "NPSPULSE_REDIS_PASSWORD": ("redis", "password"),
    "NPSPULSE_REDIS_PASSWORD_FILE": ("redis", "password_file"),
}


def default_config_text() -> str:
    return resources.files("processors").joinpath("npspulse.toml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The effective config. Raises ConfigError (naming the field and the fix) on any invalid value."""
    if path is None and LOCAL_CONFIG.exists():
        path = LOCAL_CONFIG
    if path is None:
        text, source = default_config_text(), "the packaged default config"
    else:
        try:
            text, source = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}", "pass an existing TOML file") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"not valid TOML ({exc})", "fix the syntax at the line shown") from None
    config = config_from_dict(doc)
    return apply_env(config, os.environ if environ is None else environ)


def apply_env(config: Config, environ: Mapping[str, str]) -> Config:
    sections = {"kafka": config.kafka, "redis": config.redis}
    for variable, (section, field) in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value:
            sections[section] = dataclasses.replace(sections[section], **{field: value})
    return dataclasses.replace(config, kafka=sections["kafka"], redis=check_redis_settings(sections["redis"]))
