"""streams.metrics: dead-letter reasons map to a bounded set of label values, whatever the input said."""

from __future__ import annotations

import pytest

from processors.events import PURCHASE_FIELDS, SURVEY_FIELDS, EventError, TimeBounds, parse_event
from streams.metrics import invalid_reason

BOUNDED = SURVEY_FIELDS | PURCHASE_FIELDS | {"event", "attributes", "unknown_field", "late", "malformed_slice"}


@pytest.mark.parametrize(("raw", "label"), [
    (b"{nope", "event"),
    (b'"a string"', "event"),
    (b'{"type": "survey", "score": 3, "customer_id-4711": "x"}', "unknown_field"),
    (b'{"type": "survey", "event_id": "e", "customer_id": "c", "score": 12, "answered_at": 1772445600000}', "score"),
    (b'{"type": "survey", "event_id": "e", "customer_id": "c", "score": 3, "answered_at": 1772445600000, '
     b'"attributes": {"secret-customer-note": 5}}', "attributes"),
])
def test_parser_errors_get_a_bounded_label(raw: bytes, label: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw, TimeBounds(now_ms=1772445600000, max_future_ms=86_400_000), expected_type="survey")
    assert invalid_reason(caught.value.field, caught.value.reason) == label


def test_pipeline_reasons_and_anything_else_stay_bounded() -> None:
    assert invalid_reason("answered_at", "late: 3 answer(s) of segment region=EU for a slice closed") == "late"
    assert invalid_reason("", "malformed segment slice: KeyError") == "malformed_slice"
    assert invalid_reason("c-12345 free text", "unknown field") == "unknown_field"
    assert all(invalid_reason(field, "x") in BOUNDED for field in ("", "score", "attributes.x", "zzz", "a.b"))
