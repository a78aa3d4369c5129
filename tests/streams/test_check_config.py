"""`npspulse check-config`: the worker's config validation, and the effective settings with secrets masked."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from streams.cli import main
from streams.effective import MASK, mask_url
from streams.settings import default_config_text, load_config

SASL_CONFIG = """
[kafka]
bootstrap_servers = "broker-1.example.com:9094"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "npspulse"
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No overrides leak in from the shell (make test exports some), and no ./npspulse.toml is picked up."""
    for name in ("NPSPULSE_KAFKA_BOOTSTRAP", "NPSPULSE_KAFKA_TOPIC_PREFIX", "NPSPULSE_KAFKA_SASL_USERNAME",
                 "NPSPULSE_KAFKA_SASL_PASSWORD", "NPSPULSE_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "npspulse.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_config_prints_effective_settings_with_secrets_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    sasl_password, redis_password = secrets.token_urlsafe(24), secrets.token_hex(20)
    monkeypatch.setenv("NPSPULSE_KAFKA_SASL_PASSWORD", sasl_password)
    monkeypatch.setenv("NPSPULSE_REDIS_URL", f"redis://default:{redis_password}@cache.example.com:6380/2")
    path = _write(tmp_path, SASL_CONFIG)

    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert sasl_password not in out + err and redis_password not in out + err
    assert f'# sasl_password = "{MASK}"  # from NPSPULSE_KAFKA_SASL_PASSWORD' in out
    assert f'url = "redis://default:{MASK}@cache.example.com:6380/2"  # from NPSPULSE_REDIS_URL' in out
    assert 'bootstrap_servers = "broker-1.example.com:9094"' in out
    assert 'security_protocol = "SASL_SSL"' in out
    assert "is valid" in err


def test_effective_settings_reload_to_the_same_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed TOML is a complete config: loading it gives the settings that were checked, defaults
    and environment overrides included (quoted keys, exact decimals, zero durations, band dimensions)."""
    edits = {
        'segments = ["all",': 'segments = ["age_band", "all",',
        "fx_rates = {}": 'fx_rates = { USD = 0.92, GBP = "1.17" }',
        "gold = 500": '"gold.plus" = "500.50"',
        'grace = "2m"': 'grace = "0s"',
        'reason = "promoter: ask for a referral"': 'tiers = ["gold.plus", "silver"]\nreason = "say \\"thanks\\"\\tnow"',
        'priority_by_tier = { gold = "high"': 'scores = [0, 4]\npriority_by_tier = { "gold.plus" = "high"',
        'tiers = ["gold", "platinum"]': 'tiers = ["gold.plus", "platinum"]',
    }
    text = default_config_text()
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = _write(tmp_path, text)
    environ = {"NPSPULSE_KAFKA_BOOTSTRAP": "kafka-a:9092,kafka-b:9092"}
    monkeypatch.setenv("NPSPULSE_KAFKA_BOOTSTRAP", environ["NPSPULSE_KAFKA_BOOTSTRAP"])
    assert main(["check-config", str(path)]) == 0
    (tmp_path / "printed").mkdir()
    printed = _write(tmp_path / "printed", capsys.readouterr().out)
    checked = load_config(path, environ=environ)
    assert checked.engine.windows.grace_ms == 0 and checked.engine.campaigns[2].tiers == {"gold.plus", "silver"}
    assert load_config(printed, environ={}) == checked


def test_default_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 0
    assert "the packaged default config is valid" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "field"), [
    ('[windows]\ngrace = "two minutes"\n', "windows.grace"),
    ("[kafka]\npartitions = 0\n", "kafka.partitions"),
    ('[worker]\nstore = "disk://"\n', "worker.store"),
    ("[detection]\nalpah = 0.01\n", "detection.alpah"),
    (SASL_CONFIG, "kafka.sasl_password"),  # SASL without NPSPULSE_KAFKA_SASL_PASSWORD: the worker would refuse
])
def test_invalid_config_exits_2_naming_the_field_and_the_fix(
        text: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(_write(tmp_path, text))]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"config error in {field}:" in err and "Fix:" in err


def test_a_password_in_the_file_is_refused_and_not_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = secrets.token_urlsafe(24)
    path = _write(tmp_path, SASL_CONFIG + f'sasl_password = "{password}"\n')
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "config error in kafka.sasl_password" in err
    assert password not in out + err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ("redis://:pw@redis:6379/0", f"redis://:{MASK}@redis:6379/0"),
    ("rediss://user:p%40ss@host/1", f"rediss://user:{MASK}@host/1"),
    ("redis://host/0?password=pw&db=1", f"redis://host/0?password={MASK}&db=1"),
    ("kafka-1:9092,kafka-2:9092", "kafka-1:9092,kafka-2:9092"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
