"""Fixtures for the pure-core unit tests: the shipped default configuration, loaded fresh per test."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

import processors
from processors.config import Config, config_from_dict

DEFAULT_TOML = Path(processors.__file__).with_name("npspulse.toml")
_DEFAULT_DOC: dict[str, Any] = tomllib.loads(DEFAULT_TOML.read_text(encoding="utf-8"))


@pytest.fixture
def default_doc() -> dict[str, Any]:
    """The parsed default npspulse.toml; a deep copy, so a test may edit it freely."""
    return copy.deepcopy(_DEFAULT_DOC)


@pytest.fixture
def default_config(default_doc: dict[str, Any]) -> Config:
    return config_from_dict(default_doc)
