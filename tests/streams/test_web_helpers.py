"""Pure helpers of the HTTP API: query parsing, the bearer token check and segment rows."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from processors.nps import nps_interval
from streams.settings import load_config
from streams.web import (
    BROKER_TIMEOUT_SECONDS,
    BadRequest,
    BrokerProbe,
    CrashLog,
    authorized,
    parse_limit,
    parse_since,
    segment_row,
)


@pytest.mark.parametrize(("text", "expected"), [
    (None, None),
    ("", None),
    ("1772460720000", 1772460720000),
    ("2026-03-02T14:12:00Z", 1772460720000),
    ("2026-03-02T15:12:00+01:00", 1772460720000),
    ("2026-03-02T15:12:00 01:00", 1772460720000),  # '+' decoded to a space in a query string
    ("2026-03-02T14:12:00.250Z", 1772460720250),
])
def test_parse_since(text: str | None, expected: int | None) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-03-02", "2026-03-02T14:12:00", "-5", "1.5e12", "2026-13-02T00:00:00Z"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(BadRequest, match="since"):
        parse_since(text)


def test_parse_limit() -> None:
    assert parse_limit(None) == 100
    assert parse_limit("7") == 7
    assert parse_limit("1000") == 1000
    for bad in ("0", "1001", "-1", "ten", "2.5"):
        with pytest.raises(BadRequest, match="limit"):
            parse_limit(bad)


def test_authorized() -> None:
    assert authorized("Bearer tok-1", "tok-1")
    assert authorized("bearer tok-1", "tok-1")
    for header in (None, "", "tok-1", "Bearer", "Bearer tok-2", "Basic tok-1", "Bearer tok-1x"):
        assert not authorized(header, "tok-1"), header


def test_segment_row_from_a_snapshot_hash() -> None:
    fields = {"5m.responses": "40", "5m.detractors": "14", "5m.passives": "10", "5m.promoters": "16",
              "5m.nps": "5.0", "5m.window_start": "1772460600000", "5m.window_end": "1772460900000",
              "alert.state": "open", "alert.id": "a1", "alert.severity": "sev-1", "alert.incident": "i1",
              "alert.at": "1772460720000"}
    row = segment_row("region=EU|channel=app", fields, "5m")
    low, high = nps_interval(16, 14, 40)
    assert row == {
        "segment_id": "region=EU|channel=app",
        "last_window": {"window": "5m", "start": 1772460600000, "start_iso": "2026-03-02T14:10:00Z",
                        "end": 1772460900000, "end_iso": "2026-03-02T14:15:00Z", "responses": 40, "detractors": 14,
                        "passives": 10, "promoters": 16, "nps": 5.0, "nps_low": round(low, 3),
                        "nps_high": round(high, 3), "detractor_share": 0.35},
        "alert": {"state": "open", "alert_id": "a1", "incident_id": "i1", "severity": "sev-1",
                  "at": 1772460720000, "at_iso": "2026-03-02T14:12:00Z"},
    }


def test_segment_row_without_answers_window_or_alert() -> None:
    empty = segment_row("all", {"5m.responses": "0", "5m.window_start": "0", "5m.window_end": "300000"}, "5m")
    assert empty["alert"] is None
    assert empty["last_window"]["responses"] == 0
    assert all(empty["last_window"][k] is None for k in ("nps", "nps_low", "nps_high", "detractor_share"))
    # only an alert state (no window closed yet for this window kind)
    assert segment_row("all", {"alert.state": "resolved", "alert.id": "a"}, "5m")["last_window"] is None


def test_broker_probe_reports_an_unreachable_broker() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    probe = BrokerProbe(load_config(None, environ={"NPSPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}), ttl=60)

    async def twice() -> tuple[str | None, str | None]:
        return await probe.problem(), await probe.problem()

    started = time.monotonic()
    first, second = asyncio.run(twice())
    assert first is not None and first.startswith("broker unreachable")
    assert second == first and time.monotonic() - started < BROKER_TIMEOUT_SECONDS + 2  # the second is cached


def test_crash_log_flags_a_crash_loop() -> None:
    crashes = CrashLog(window=300.0, limit=3)
    crashes.record("npspulse.segments", now=0.0)
    crashes.record("npspulse.segments", now=100.0)
    assert crashes.looping(now=101.0) == []
    crashes.record("npspulse.segments", now=200.0)
    crashes.record("npspulse.surveys", now=200.0)
    assert crashes.looping(now=250.0) == ["npspulse.segments"]
    assert crashes.looping(now=301.0) == []  # the oldest of the last three left the window
    crashes.record("npspulse.segments", now=302.0)
    assert crashes.looping(now=302.0) == ["npspulse.segments"]
