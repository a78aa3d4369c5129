"""Durations ("90s", "5m", "1h", "90d") and RFC 3339 / epoch-millisecond timestamps."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def parse_duration_ms(text: str) -> int:
    """Parse "5m", "1h", "90d" (units ms, s, m, h, d, w) into milliseconds; raise ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string like '5m', got {type(text).__name__}")
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a whole number and a unit (ms, s, m, h, d, w), e.g. '5m'")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def format_duration_ms(ms: int) -> str:
    """The shortest exact form of a duration: 300000 -> '5m'."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp with an explicit offset into epoch milliseconds."""
    if len(text) < 19 or text[10] not in "Tt ":
        raise ValueError("not an RFC 3339 timestamp (expected e.g. 2026-11-24T10:15:00Z)")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError("not an RFC 3339 timestamp (expected e.g. 2026-11-24T10:15:00Z)") from exc
    if moment.tzinfo is None:
        raise ValueError("missing its UTC offset (add 'Z' or '+01:00')")
    return (moment - _EPOCH) // _ONE_MS


def format_rfc3339_ms(ms: int) -> str:
    """Epoch milliseconds as an RFC 3339 UTC string (millisecond precision only when needed)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
