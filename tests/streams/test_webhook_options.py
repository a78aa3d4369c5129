"""Options, retry timing and signatures of the webhook sink, and the CLI's refusals (no broker needed: every
check here happens before a Kafka client is made)."""

from __future__ import annotations

import random
from email.utils import formatdate
from pathlib import Path

import pytest

from processors.config import ConfigError, KafkaSettings
from streams.cli import main
from streams.topics import TopicNames
from streams.webhook_sink import (
    SinkOptions,
    backoff_delay,
    batch_key,
    check_options,
    default_group_id,
    origin,
    read_secret,
    retry_after_seconds,
    signature,
    source_topic,
)

SINK = ["sink", "webhook", "--topic", "retarget"]


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://hooks.example.com/x", "scheme 'ftp'"),
    ("hooks.example.com/x", "scheme '(none)'"),
    ("https:///path-only", "no host"),
    ("https://user:pw@hooks.example.com/x", "credentials"),
    ("https://hooks.example.com:99999/x", "port"),
    ("https://hooks.example.com/a b", "whitespace"),
])
def test_bad_url_exits_2_naming_the_option_and_the_fix(url: str, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SINK, "--url", url]) == 2
    err = capsys.readouterr().err
    assert "--url" in err and problem in err and "Fix:" in err
    if "pw@" in url:
        assert "pw" not in err.replace("password", "")  # the URL is not echoed


def test_missing_secret_env_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NPSPULSE_TEST_HOOK_SECRET", raising=False)
    assert main([*SINK, "--url", "https://hooks.example.com/x", "--secret-env", "NPSPULSE_TEST_HOOK_SECRET"]) == 2
    err = capsys.readouterr().err
    assert "--secret-env" in err and "not set" in err and "Fix:" in err
    # A value where the name belongs is refused without being echoed.
    assert main([*SINK, "--url", "https://hooks.example.com/x", "--secret-env", "s3cr3t/value+="]) == 2
    err = capsys.readouterr().err
    assert "--secret-env" in err and "s3cr3t" not in err


def test_other_refusals_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["sink", "webhook", "--topic", "dead-letter", "--url", "http://127.0.0.1:1/"], "--topic"),
        (["sink", "webhook", "--topic", "surveys", "--url", "http://127.0.0.1:1/"], "--topic"),
        ([*SINK, "--url", "http://127.0.0.1:1/", "--batch", "0"], "--batch"),
        (["sink", "webhook", "--topic", "alerts", "--url", "http://127.0.0.1:1/", "--format", "slack", "--batch", "5"],
         "--batch"),
        ([*SINK, "--url", "http://127.0.0.1:1/", "--max-attempts", "0"], "--max-attempts"),
        ([*SINK, "--url", "http://127.0.0.1:1/", "--timeout-seconds", "0"], "--timeout-seconds"),
        ([*SINK, "--url", "http://127.0.0.1:1/", "--secret-file", str(tmp_path / "missing")], "--secret-file"),
    ]
    for argv, option in cases:
        assert main(argv) == 2, argv
        assert f"config error in {option}" in capsys.readouterr().err


def test_secret_sources(tmp_path: Path) -> None:
    assert read_secret() is None
    assert read_secret("HOOK", environ={"HOOK": "abc"}) == b"abc"
    path = tmp_path / "secret"
    path.write_bytes(b"from-a-file\n")
    assert read_secret(secret_file=path) == b"from-a-file"  # the file's trailing newline is not part of it
    path.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(secret_file=path)
    assert "secret=" not in repr(SinkOptions(topic="retarget", url="http://x/", secret=b"abc"))


def test_signature_is_hmac_sha256_of_the_body() -> None:
    # RFC 4231 test case 2.
    assert signature(b"Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_batch_key_depends_on_ids_and_order() -> None:
    assert batch_key(["a", "b"]) == batch_key(["a", "b"])
    assert len({batch_key(["a", "b"]), batch_key(["b", "a"]), batch_key(["a"]), batch_key(["ab"])}) == 4


def test_backoff_is_full_jitter_up_to_a_doubling_cap() -> None:
    rng = random.Random(3)
    for retry, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (200, 30.0)):
        delays = [backoff_delay(retry, 0.5, 30.0, rng) for _ in range(400)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling  # spread over the whole range


def test_retry_after_seconds_or_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 0 ") == 0.0
    now = 1_772_460_000.0
    assert retry_after_seconds(formatdate(now + 42, usegmt=True), now=now) == pytest.approx(42.0)
    assert retry_after_seconds(formatdate(now - 42, usegmt=True), now=now) == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-3") is None


def test_default_group_per_prefix_topic_and_url_without_the_url() -> None:
    names = TopicNames.from_settings(KafkaSettings(topic_prefix="acme."))
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    retarget = default_group_id("acme.", source_topic("retarget", names), url)
    alerts = default_group_id("acme.", source_topic("alerts", names), url)
    assert retarget.startswith("acme.webhook-sink.retarget.") and alerts.startswith("acme.webhook-sink.alerts.")
    assert retarget != alerts != default_group_id("acme.", "acme.alerts", url + "2")
    assert "XXXXSECRET" not in retarget + alerts
    assert origin(url) == "https://hooks.slack.com"
    assert origin("http://[::1]:8080/x?token=1") == "http://[::1]:8080"


def test_check_options_accepts_the_defaults() -> None:
    check_options(SinkOptions(topic="alerts", url="https://hooks.example.com/npspulse"))
    check_options(SinkOptions(topic="alerts", url="http://127.0.0.1:8080", format="slack", secret=b"s"))
