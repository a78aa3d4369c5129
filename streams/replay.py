"""The embedded runner: the engine in-process over JSONL files, no Kafka, no Redis.

Every input line ends up somewhere: counted by the engine, or in the dead-letter file with its reason
(malformed, unknown currency, late beyond the grace period). Outputs are JSONL files in ``out_dir``.
Every trigger goes through the delivery policy in memory (``processors.delivery``) at its ``created_at``:
only ``sent`` ones are written to ``triggers.jsonl``; the others are counted by (campaign, outcome, reason).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from processors.config import EngineSettings
from processors.delivery import DeliveryPolicy, DeliverySettings, Outcome
from processors.engine import Engine, Outputs
from processors.events import EventError, Purchase, TimeBounds, parse_event
from processors.nps import NpsCounts
from processors.timeparse import format_duration_ms, format_rfc3339_ms
from streams.progress import read_jsonl

OUTPUT_FILES = ("alerts.jsonl", "triggers.jsonl", "windows.jsonl", "dead-letter.jsonl")


@dataclass(slots=True)
class ReplayResult:
    lines: int = 0
    surveys: int = 0
    purchases: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)  # by field
    late: int = 0
    windows: int = 0
    alerts: list[dict] = field(default_factory=list)
    trigger_counts: dict[str, int] = field(default_factory=dict)  # sent triggers by campaign
    triggered_customers: dict[str, set[str]] = field(default_factory=dict)  # customers sent a trigger, by campaign
    delivery: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (campaign, outcome, reason) -> count
    segment_totals: dict[str, NpsCounts] = field(default_factory=dict)
    seconds: float = 0.0
    first_event_at: int | None = None
    last_event_at: int | None = None
    history: dict[str, list[dict]] | None = None  # per segment, its smallest tumbling windows (with keep_history)

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())

    def held_back(self, campaign_id: str) -> dict[str, int]:
        """A campaign's triggers not sent, by outcome (``capped:campaign``, ``opted_out``, ``duplicate``...)."""
        held: dict[str, int] = {}
        for (campaign, outcome, reason), count in self.delivery.items():
            if campaign == campaign_id and outcome != Outcome.SENT.value:
                key = f"{outcome}:{reason}" if reason else outcome
                held[key] = held.get(key, 0) + count
        return held


class _Sinks:
    """The JSONL output files."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, IO[bytes]] = {name: (out_dir / name).open("wb", buffering=1 << 20) for name in OUTPUT_FILES}

    def write(self, name: str, record: dict) -> None:
        self.files[name].write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def replay(files: Iterable[Path], settings: EngineSettings, out_dir: Path, *, delivery: DeliverySettings | None = None,
           optout: Iterable[str] = (), now_ms: int | None = None, progress: bool | None = None,
           keep_history: bool = False) -> ReplayResult:
    """Run the engine over JSONL files and write alerts, sent triggers, window results and dead letters.

    ``delivery``: the ``[delivery]`` settings and campaign caps (None: the built-in defaults); ``optout``:
    customer ids that get no trigger; ``keep_history``: keep every segment's windows in ``result.history``
    (for the HTML report)."""
    files = list(files)
    engine = Engine(settings)
    policy = DeliveryPolicy(DeliverySettings() if delivery is None else delivery)
    policy.opt_out(optout)
    bounds = TimeBounds(now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
                        max_future_ms=settings.max_future_ms)
    result = ReplayResult(history={} if keep_history else None)
    tally_window = _totals_window(settings)
    sinks = _Sinks(out_dir)
    started = time.perf_counter()
    try:
        for path, number, line in read_jsonl(files, "replay", progress):
            result.lines += 1
            try:
                event = parse_event(line, bounds, default_time_ms=engine.max_event_time)
                out = engine.process(event)
            except EventError as error:
                _dead_letter(sinks, result, path, number, line, error.field, error.reason)
                continue
            if isinstance(event, Purchase):
                result.purchases += 1
            else:
                result.surveys += 1
            _emit(out, sinks, result, path, number, line, settings, tally_window)
            _deliver(out, policy, engine.max_event_time, sinks, result)
        flushed = engine.flush()
        _emit(flushed, sinks, result, None, 0, b"", settings, tally_window)
        _deliver(flushed, policy, engine.max_event_time, sinks, result)
    finally:
        sinks.close()
    result.seconds = time.perf_counter() - started
    return result


def _emit(out: Outputs, sinks: _Sinks, result: ReplayResult, path: Path | None, number: int, line: bytes,
          settings: EngineSettings, tally_window: str) -> None:
    if out.late:  # only ever the event just processed
        result.late += len(out.late)
        reason = (f"late: its {format_duration_ms(settings.windows.slice_ms)} slice closed before it arrived "
                  f"(beyond the {format_duration_ms(settings.windows.grace_ms)} grace period)")
        _dead_letter(sinks, result, path, number, line, "answered_at", reason)
    for window in out.windows:
        result.windows += 1
        sinks.write("windows.jsonl", window.to_dict())
        if window.window == tally_window:
            total = result.segment_totals.get(window.segment_id)
            if total is None:
                total = result.segment_totals[window.segment_id] = NpsCounts()
            total.merge(window.counts)
            if result.history is not None:
                result.history.setdefault(window.segment_id, []).append(window.to_dict())
            if result.first_event_at is None or window.start < result.first_event_at:
                result.first_event_at = window.start
            if result.last_event_at is None or window.end > result.last_event_at:
                result.last_event_at = window.end
    for alert in out.alerts:
        record = alert.to_dict()
        result.alerts.append(record)
        sinks.write("alerts.jsonl", record)


def _deliver(out: Outputs, policy: DeliveryPolicy, now_ms: int | None, sinks: _Sinks, result: ReplayResult) -> None:
    """Admit the triggers in engine order; write the sent ones, count every decision."""
    for trigger in out.triggers:
        decision = policy.admit(trigger, now_ms)
        key = (trigger.campaign_id, decision.outcome.value, decision.reason)
        result.delivery[key] = result.delivery.get(key, 0) + 1
        if not decision.sent:
            continue
        sinks.write("triggers.jsonl", trigger.to_dict(decision.trigger_id))
        result.trigger_counts[trigger.campaign_id] = result.trigger_counts.get(trigger.campaign_id, 0) + 1
        result.triggered_customers.setdefault(trigger.campaign_id, set()).add(trigger.customer_id)


def _dead_letter(sinks: _Sinks, result: ReplayResult, path: Path | None, number: int, line: bytes, field_name: str,
                 reason: str) -> None:
    result.dead_letters[field_name or "(event)"] = result.dead_letters.get(field_name or "(event)", 0) + 1
    sinks.write("dead-letter.jsonl", {
        "source": str(path) if path else None, "line": number, "field": field_name, "reason": reason,
        "raw": line.decode("utf-8", errors="replace"),
    })


def _totals_window(settings: EngineSettings) -> str:
    """The smallest tumbling window: summing it counts every answer exactly once."""
    tumbling = [spec for spec in settings.windows.specs if spec.tumbling]
    return min(tumbling, key=lambda spec: spec.size_ms).name


def describe_span(result: ReplayResult) -> str:
    if result.first_event_at is None or result.last_event_at is None:
        return "no answers"
    return f"{format_rfc3339_ms(result.first_event_at)} .. {format_rfc3339_ms(result.last_event_at)}"
