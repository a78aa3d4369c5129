"""Prometheus metrics of the worker: the definitions, the bounded label values, Faust's own sensor and the
exposition served at ``/metrics`` (streams/web.py).

Every label value is bounded: topic names, field names of the event schema, window names, alert types and
severities, campaign ids and outcomes from the config, store names, exception class names. Never a customer
id, a segment id or a comment.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from processors.delivery import Decision
from processors.events import PURCHASE_FIELDS, SURVEY_FIELDS, RetargetTrigger
from processors.windows import WindowResult

EVENTS_IN = Counter("npspulse_events_in", "Records read from an input topic (valid or not)", ["topic"])
INVALID = Counter("npspulse_events_invalid", "Records dead-lettered, by source topic and bounded reason",
                  ["topic", "reason"])
LATE = Counter("npspulse_late_answers", "Answers dead-lettered as late (beyond the grace period)")
WINDOWS_CLOSED = Counter("npspulse_windows_closed", "Closed windows published, by window", ["window"])
ALERTS = Counter("npspulse_alerts", "Alert events published, by type and severity", ["type", "severity"])
TRIGGERS = Counter("npspulse_triggers", "Re-targeting triggers published, by campaign", ["campaign"])
TRIGGERS_HELD = Counter("npspulse_triggers_held", "Triggers not published (capped, opted out, duplicate, "
                        "undelivered), by campaign, outcome and reason", ["campaign", "outcome", "reason"])
REDIS_ERRORS = Counter("npspulse_redis_errors", "Failed Redis calls, by store and exception class", ["store", "error"])
BATCH_SECONDS = Histogram("npspulse_batch_seconds", "Wall time to process one batch, by stage (answers: enrich, "
                          "segment and publish slices; slices: windows, detection and outputs)", ["stage"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

_EVENT_FIELDS = SURVEY_FIELDS | PURCHASE_FIELDS
P = ParamSpec("P")
R = TypeVar("R")


def invalid_reason(field: str, reason: str) -> str:
    """A bounded label for a dead-letter reason: ``late``, ``malformed_slice``, ``event`` (not a JSON object,
    too large), a field of the event schema, ``attributes`` or ``unknown_field``."""
    if reason.startswith("late:"):
        return "late"
    if reason.startswith("malformed segment slice"):
        return "malformed_slice"
    if not field:
        return "event"
    if field in _EVENT_FIELDS:
        return field
    return "attributes" if field.startswith("attributes.") else "unknown_field"


def dead_lettered(topic: str, field: str, reason: str) -> None:
    INVALID.labels(topic, invalid_reason(field, reason)).inc()


def windows_closed(windows: Iterable[WindowResult]) -> None:
    for window in windows:
        WINDOWS_CLOSED.labels(window.window).inc()


def alerts_published(records: Iterable[dict]) -> None:
    for record in records:
        ALERTS.labels(record["type"], record["severity"]).inc()


def triggers_decided(triggers: Sequence[RetargetTrigger], decisions: Sequence[Decision]) -> None:
    """Published triggers by campaign; the others by campaign, outcome and reason (all from the config)."""
    for trigger, decision in zip(triggers, decisions, strict=True):
        if decision.sent:
            TRIGGERS.labels(trigger.campaign_id).inc()
        else:
            TRIGGERS_HELD.labels(trigger.campaign_id, decision.outcome.value, decision.reason or "").inc()


def redis_error(store: str, error: BaseException) -> None:
    REDIS_ERRORS.labels(store, type(error).__name__).inc()


def timed(stage: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Observe each call's wall time (seconds) in BATCH_SECONDS under ``stage``."""
    histogram = BATCH_SECONDS.labels(stage)

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)
        return wrapper
    return decorate


class ConsumerLag(Collector):
    """``npspulse_consumer_lag{topic,partition}`` at scrape time, for the agents' topics: highwater minus position
    (the offset after the last record Faust handed to an agent; before any, the committed offset)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("npspulse_consumer_lag", "Records behind the highwater, per assigned partition",
                                   labels=["topic", "partition"])
        for tp, lag in sorted(consumer_lag(self.app).items()):
            family.add_metric([tp.topic, str(tp.partition)], lag)
        yield family


def consumer_lag(app: faust.App) -> dict[Any, int]:
    """Lag per assigned partition of the topics the agents read (not the tables' changelogs, which the consumer
    stops reading once recovered) whose highwater and position are known; empty before the consumer runs."""
    consumer = app.consumer
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet
        return {}
    topics = {topic for agent in app.agents.values() for topic in getattr(agent.channel, "topics", ())}
    lags = {}
    for tp in assigned:
        if tp.topic not in topics:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # not fetched yet, or mid-rebalance
            continue
        read = consumer._read_offset.get(tp)
        position = read + 1 if read is not None else consumer._committed_offset.get(tp)
        if highwater is not None and position is not None:
            lags[tp] = max(0, highwater - position)
    return lags


_installed: dict[str, Collector] = {}


def install(app: faust.App) -> None:
    """Faust's Prometheus sensor (its metrics named ``faust_*``) as the app's monitor, and the lag collector.
    Not ``faust.sensors.prometheus.setup_prometheus_sensors``: that adds its own, unauthenticated /metrics."""
    if "faust" not in _installed:
        _installed["faust"] = FaustMetrics.create(REGISTRY, "faust")  # type: ignore[assignment]
    app.monitor = PrometheusMonitor(metrics=_installed["faust"])  # type: ignore[arg-type]
    previous = _installed.pop("lag", None)
    if previous is not None:
        REGISTRY.unregister(previous)
    _installed["lag"] = ConsumerLag(app)
    REGISTRY.register(_installed["lag"])


def exposition() -> tuple[bytes, str]:
    """The text exposition of every registered metric, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
