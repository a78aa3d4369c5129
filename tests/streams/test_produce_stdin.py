"""`npspulse produce -` reads standard input (`npspulse simulate | npspulse produce -`). The producer is a
stand-in here: tests/integration/test_kafka_roundtrip.py covers the real broker."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

import streams.client
from streams.cli import main


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def produce(self, topic: str, *, value: bytes, key: bytes | None, on_delivery: Any,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": dict(headers or [])})
        on_delivery(None, None)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeProducer:
    fake = FakeProducer()
    monkeypatch.setattr(streams.client, "ensure_topics", lambda config: None)
    monkeypatch.setattr(streams.client, "make_producer", lambda kafka, **overrides: fake)
    monkeypatch.delenv("NPSPULSE_KAFKA_TOPIC_PREFIX", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./npspulse.toml: the default prefix
    return fake


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


SURVEY = b'{"type":"survey","event_id":"s-1","customer_id":"c1","score":3,"answered_at":"2026-03-02T14:07:12Z"}'
PURCHASE = b'{"type":"purchase","event_id":"p-1","customer_id":"c2","amount":"9.90","currency":"EUR"}'


def test_dash_reads_standard_input(producer: FakeProducer, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, SURVEY + b"\n\n" + PURCHASE + b"\r\nnot json\n")
    assert main(["produce", "-", "--no-progress"]) == 0
    assert [(m["topic"], m["key"], m["value"]) for m in producer.sent] == [
        ("npspulse.surveys", b"c1", SURVEY), ("npspulse.purchases", b"c2", PURCHASE),
        ("npspulse.dead-letter", None, b"not json")]
    assert producer.sent[2]["headers"]["npspulse.source.file"] == b"<stdin>"
    assert producer.sent[2]["headers"]["npspulse.source.line"] == b"4"
    assert "1 unroutable" in capsys.readouterr().err


def test_files_and_stdin_together(producer: FakeProducer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "purchases.jsonl"
    path.write_bytes(PURCHASE + b"\n")
    _stdin(monkeypatch, SURVEY + b"\n")
    assert main(["produce", str(path), "-", "--no-progress"]) == 0
    assert [m["topic"] for m in producer.sent] == ["npspulse.purchases", "npspulse.surveys"]
