"""Hostile input, property-based (hypothesis): parsers never raise anything but their documented error, and
the engine keeps its invariants on random event orders, extreme timestamps and odd values."""

from __future__ import annotations

import json
import math
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.config import ConfigError, config_from_dict
from processors.engine import Engine, Outputs
from processors.events import MAX_ID_CHARS, EventError, Purchase, SurveyResponse, TimeBounds, parse_event
from processors.segments import parse_segment_id, segment_id
from processors.timeparse import parse_duration_ms, parse_rfc3339_ms

NOW_MS = 1_764_000_000_000  # 2025-11-24
BOUNDS = TimeBounds(now_ms=NOW_MS)
MIN = 60_000

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=30)
FIELDS = ["type", "event_id", "customer_id", "score", "answered_at", "touchpoint", "channel", "region", "comment",
          "attributes", "amount", "currency", "category", "purchased_at"]
VALID_SURVEY = {"type": "survey", "event_id": "e-1", "customer_id": "c-1", "score": 3,
                "answered_at": "2025-11-24T10:15:00Z", "region": "EU"}


def _parse(raw: bytes) -> SurveyResponse | Purchase | None:
    try:
        return parse_event(raw, BOUNDS)
    except EventError as error:
        assert error.reason  # every refusal says why
        return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_with_a_reason(raw: bytes) -> None:
    _parse(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_parses_or_is_refused(value: object) -> None:
    _parse(json.dumps(value).encode())  # stdlib: it writes integers beyond 64 bits too


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8))
def test_mutated_survey_fields_parse_or_are_refused_and_valid_ones_hold_the_schema(changes: dict) -> None:
    event = _parse(json.dumps({**VALID_SURVEY, **changes}).encode())
    if isinstance(event, SurveyResponse):
        assert 0 <= event.score <= 10 and type(event.score) is int
        assert 0 < len(event.event_id) <= MAX_ID_CHARS and 0 < len(event.customer_id) <= MAX_ID_CHARS
        assert event.answered_at <= BOUNDS.latest_ms
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in event.attributes.items())


def test_deep_and_huge_payloads_are_refused() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert _parse(deep) is None
    huge = orjson.dumps({**VALID_SURVEY, "comment": "x" * 100_000})
    assert _parse(huge) is None
    nested = orjson.dumps({**VALID_SURVEY, "attributes": {"a": {"b": {"c": [1, 2, {"d": None}]}}}})
    assert _parse(nested) is None


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_time_and_duration_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_rfc3339_ms, parse_duration_ms):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert isinstance(value, int)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=8),
                          st.text(max_size=20)), max_size=4))
def test_segment_ids_round_trip_any_value(pairs: list[tuple[str, str]]) -> None:
    assert parse_segment_id(segment_id(pairs)) == pairs


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["events", "windows", "detection", "segmentation", "kafka", "delivery"]),
                       st.dictionaries(st.text(max_size=20), json_values, max_size=4), max_size=3))
def test_random_configs_load_or_stop_with_a_named_field(doc: dict) -> None:
    try:
        config_from_dict(doc)
    except ConfigError as error:
        assert error.field and error.fix


answers = st.builds(
    lambda i, customer, score, minute, second, region: SurveyResponse(
        f"e-{i}", f"c-{customer}", score, NOW_MS - 3 * 3_600_000 + minute * MIN + second * 1000, region=region),
    st.integers(0, 10**6), st.integers(0, 30), st.integers(0, 10), st.integers(0, 180), st.integers(0, 59),
    st.sampled_from(["EU", "NA", "ΑΠΑΚ", "a|b=c%", None]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(answers, min_size=1, max_size=300), st.randoms(use_true_random=False))
def test_engine_invariants_on_random_orders(events: list[SurveyResponse], rnd) -> None:
    config = config_from_dict({})
    arrival = list(events)
    rnd.shuffle(arrival)
    engine = Engine(config.engine)
    out, duplicates = Outputs(), 0
    for event in arrival:
        try:
            out.extend(engine.process(event))
        except EventError as error:  # the only refusal here: an event id seen within the dedup horizon
            assert error.field == "event_id"
            duplicates += 1
    out.extend(engine.flush())
    assert duplicates <= len(events) - len({event.event_id for event in events})
    emitted = Counter((w.segment_id, w.window, w.start) for w in out.windows)
    assert all(count == 1 for count in emitted.values())  # a window closes once
    for window in out.windows:
        counts = window.counts
        assert counts.total == counts.detractors + counts.passives + counts.promoters > 0
        assert -100.0 <= counts.nps <= 100.0 and not math.isnan(counts.nps)
    # every answer is counted in exactly one 5-minute 'all' window, reported late, or refused as a duplicate
    counted = sum(w.counts.total for w in out.windows if w.segment_id == "all" and w.window == "5m")
    assert counted + len(out.late) + duplicates == len(events)
    assert all(alert.segment_id for alert in out.alerts)


@pytest.mark.parametrize("at", [0, -1, 2**62, NOW_MS + 10 * 86_400_000])
def test_extreme_timestamps_are_refused(at: int) -> None:
    assert _parse(orjson.dumps({**VALID_SURVEY, "answered_at": at})) is None
