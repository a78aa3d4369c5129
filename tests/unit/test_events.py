"""Event validation (processors.events): strict refusals that name the field, exact valid parsing, output ids."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from processors.events import (
    SCHEMA_VERSION,
    AlertEvent,
    Driver,
    EventError,
    Purchase,
    RetargetTrigger,
    SurveyResponse,
    TimeBounds,
    parse_event,
    purchase_from_dict,
    survey_from_dict,
)

NOW_MS = int(datetime(2025, 11, 24, 12, 0, tzinfo=UTC).timestamp() * 1000)
BOUNDS = TimeBounds(now_ms=NOW_MS)  # default max_future: 1 day
DAY_MS = 86_400_000
ANSWERED_MS = int(datetime(2025, 11, 24, 10, 15, tzinfo=UTC).timestamp() * 1000)


def survey(**changes: Any) -> dict[str, Any]:
    """A valid survey event with ``changes`` applied (a value of ``...`` deletes the field)."""
    base: dict[str, Any] = {"type": "survey", "event_id": "e-1", "customer_id": "c-1", "score": 7,
                            "answered_at": "2025-11-24T10:15:00Z"}
    return _apply(base, changes)


def purchase(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "purchase", "event_id": "p-1", "customer_id": "c-1", "amount": "19.99",
                            "currency": "EUR", "purchased_at": "2025-11-24T09:00:00Z"}
    return _apply(base, changes)


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def raw(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


# ---------------------------------------------------------------- malformed input table

# (case id, raw bytes, expected_type, expected .field, substring of .reason)
MALFORMED_RAW = [
    ("missing event_id", raw(survey(event_id=...)), None, "event_id", "missing"),
    ("empty event_id", raw(survey(event_id="")), None, "event_id", "empty"),
    ("blank event_id", raw(survey(event_id="   ")), None, "event_id", "empty"),
    ("score 11", raw(survey(score=11)), None, "score", "out of range"),
    ("score -1", raw(survey(score=-1)), None, "score", "out of range"),
    ("score 7.5", raw(survey(score=7.5)), None, "score", "not a whole number"),
    ("score string", raw(survey(score="7")), None, "score", "got a string"),
    ("score bool", raw(survey(score=True)), None, "score", "got a boolean"),
    ("score missing", raw(survey(score=...)), None, "score", "missing"),
    ("unparseable timestamp", raw(survey(answered_at="yesterday")), None, "answered_at", "not an RFC 3339"),
    ("timestamp without offset (fractional)", raw(survey(answered_at="2025-11-24T10:15:00.250")), None,
     "answered_at", "offset"),
    ("far-future timestamp", raw(survey(answered_at=NOW_MS + DAY_MS + 1)), None, "answered_at", "future"),
    ("epoch seconds", raw(survey(answered_at=ANSWERED_MS // 1000)), None, "answered_at",
     "epoch seconds? send milliseconds"),
    ("float epoch ms", raw(survey(answered_at=float(ANSWERED_MS))), None, "answered_at", "must be an integer"),
    ("negative amount", raw(purchase(amount=-5)), None, "amount", "must be > 0"),
    ("zero amount", raw(purchase(amount=0)), None, "amount", "must be > 0"),
    ("zero amount string", raw(purchase(amount="0.00")), None, "amount", "must be > 0"),
    ("amount exponent string", raw(purchase(amount="1e5")), None, "amount", "plain decimal string"),
    ("amount padded string", raw(purchase(amount=" 12")), None, "amount", "plain decimal string"),
    ("amount negative string", raw(purchase(amount="-5")), None, "amount", "plain decimal string"),
    ("amount bool", raw(purchase(amount=True)), None, "amount", "got a boolean"),
    ("lower-case currency", raw(purchase(currency="eur")), None, "currency", "ISO 4217"),
    ("missing currency", raw(purchase(currency=...)), None, "currency", "missing"),
    ("not JSON", b"{oops", None, "", "not JSON"),
    ("JSON array", b'[{"type": "survey"}]', None, "", "expected a JSON object, got an array"),
    ("over 64 KiB", b'{"x": "' + b"a" * (64 * 1024) + b'"}', None, "", "64 KiB"),
    ("unknown field", raw(survey(scor=7)), None, "scor", "unknown field"),
    ("type mismatch", raw(purchase()), "survey", "type", "carries 'survey'"),
    ("unknown type", raw(survey(type="refund")), None, "type", "must be 'survey' or 'purchase'"),
    ("missing type in JSONL", raw(survey(type=...)), None, "type", "missing"),
    ("attribute non-string", raw(survey(attributes={"plan": 3})), None, "attributes.plan", "must be a string"),
    ("attribute nested object", raw(survey(attributes={"plan": {"name": "pro"}})), None, "attributes.plan",
     "flat string map"),
    ("attributes not an object", raw(survey(attributes=["pro"])), None, "attributes", "got an array"),
]


@pytest.mark.parametrize(("data", "expected_type", "field", "reason"),
                         [pytest.param(*case[1:], id=case[0]) for case in MALFORMED_RAW])
def test_malformed_events_are_refused_naming_the_field(data: bytes, expected_type: str | None, field: str,
                                                       reason: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(data, BOUNDS, expected_type=expected_type)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_timestamp_without_offset_says_the_offset_is_missing() -> None:
    # The most common form of a local timestamp: second precision, no 'Z' and no '+hh:mm'.
    with pytest.raises(EventError) as caught:
        parse_event(raw(survey(answered_at="2025-11-24T10:15:00")), BOUNDS)
    assert caught.value.field == "answered_at"
    assert "offset" in caught.value.reason


@pytest.mark.parametrize(("score", "reason"), [(float("nan"), "NaN"), (7.0, "not a whole number")])
def test_float_scores_are_refused(score: float, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        survey_from_dict(survey(score=score), BOUNDS)
    assert caught.value.field == "score"
    assert reason in caught.value.reason


@pytest.mark.parametrize(("amount", "reason"), [(float("nan"), "finite"), (float("inf"), "finite"),
                                                (-0.01, "must be > 0")])
def test_non_finite_or_negative_float_amounts_are_refused(amount: float, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        purchase_from_dict(purchase(amount=amount), BOUNDS)
    assert caught.value.field == "amount"
    assert reason in caught.value.reason


def test_error_message_combines_field_and_reason() -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw(survey(score=11)), BOUNDS)
    assert str(caught.value) == f"score: {caught.value.reason}"


# ---------------------------------------------------------------- valid input


def test_rfc3339_with_z_gives_epoch_ms() -> None:
    event = parse_event(raw(survey(answered_at="2025-11-24T10:15:00Z")), BOUNDS)
    assert isinstance(event, SurveyResponse)
    assert event.answered_at == ANSWERED_MS


def test_rfc3339_with_offset_is_converted_to_utc() -> None:
    event = parse_event(raw(survey(answered_at="2025-11-24T10:15:00+01:00")), BOUNDS)
    assert event.answered_at == ANSWERED_MS - 3_600_000


def test_rfc3339_fractional_seconds_keep_milliseconds() -> None:
    event = parse_event(raw(survey(answered_at="2025-11-24T10:15:00.250Z")), BOUNDS)
    assert event.answered_at == ANSWERED_MS + 250


def test_epoch_ms_integer_is_taken_as_is() -> None:
    event = parse_event(raw(survey(answered_at=ANSWERED_MS + 7)), BOUNDS)
    assert event.answered_at == ANSWERED_MS + 7


def test_event_time_exactly_at_the_future_limit_is_accepted() -> None:
    event = parse_event(raw(survey(answered_at=BOUNDS.latest_ms)), BOUNDS)
    assert event.answered_at == NOW_MS + DAY_MS


def test_valid_survey_keeps_every_field() -> None:
    obj = survey(score=0, touchpoint="checkout", channel="web", region="EU", comment="slow delivery",
                 attributes={"plan": "pro", "age": "41"})
    event = parse_event(raw(obj), BOUNDS, expected_type="survey")
    assert event == SurveyResponse("e-1", "c-1", 0, ANSWERED_MS, "checkout", "web", "EU", "slow delivery",
                                   {"plan": "pro", "age": "41"})
    # to_dict is a canonical form of the same event: parsing it back gives the same event.
    assert parse_event(orjson.dumps(event.to_dict()), BOUNDS) == event


def test_float_amount_is_exact_decimal() -> None:
    event = parse_event(raw(purchase(amount=19.99)), BOUNDS)
    assert isinstance(event, Purchase)
    assert event.amount == Decimal("19.99")
    assert str(event.amount) == "19.99"


def test_string_amount_is_exact_decimal() -> None:
    event = parse_event(raw(purchase(amount="19.99")), BOUNDS)
    assert event.amount == Decimal("19.99")
    assert str(event.amount) == "19.99"


def test_integer_amount() -> None:
    assert parse_event(raw(purchase(amount=250)), BOUNDS).amount == Decimal(250)


def test_purchase_without_time_uses_default() -> None:
    event = parse_event(raw(purchase(purchased_at=...)), BOUNDS, default_time_ms=ANSWERED_MS)
    assert isinstance(event, Purchase)
    assert event.purchased_at == ANSWERED_MS


def test_purchase_without_time_and_without_default_is_refused() -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw(purchase(purchased_at=...)), BOUNDS)
    assert caught.value.field == "purchased_at"
    assert "missing" in caught.value.reason


def test_expected_type_applies_when_type_is_absent() -> None:
    event = parse_event(raw(purchase(type=...)), BOUNDS, expected_type="purchase")
    assert isinstance(event, Purchase)


# ---------------------------------------------------------------- PII: comments never echoed

SECRET = "call me on +44 7700 900123, Jane Doe"


@pytest.mark.parametrize("obj", [
    pytest.param(survey(comment=SECRET + "x" * 8_000), id="comment too long"),
    pytest.param(survey(comment={"text": SECRET}), id="comment not a string"),
    pytest.param(survey(comment=[SECRET]), id="comment an array"),
    pytest.param(survey(comment=SECRET, score=12), id="bad score next to a comment"),
    pytest.param(survey(comment=SECRET, answered_at="nope"), id="bad time next to a comment"),
])
def test_event_errors_never_include_the_comment(obj: dict[str, Any]) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw(obj), BOUNDS)
    error = caught.value
    for text in (str(error), repr(error), error.reason, error.field):
        assert "Jane Doe" not in text
        assert "7700" not in text


def test_survey_repr_hides_the_comment() -> None:
    event = parse_event(raw(survey(comment=SECRET)), BOUNDS)
    assert event.comment == SECRET
    assert "Jane Doe" not in repr(event)


# ---------------------------------------------------------------- output ids


def make_alert(**changes: Any) -> AlertEvent:
    fields: dict[str, Any] = dict(
        kind="opened", alert_id="a" * 32, incident_id="a" * 32, segment_id="region=EU|tier=gold",
        parent_segment_id="region=EU", rule="detractor-spike.cusum", severity="sev-1", design_shift_pp=25,
        at=ANSWERED_MS + 600_000, opened_at=ANSWERED_MS + 600_000, onset_at=ANSWERED_MS, responses=40,
        detractors=24, promoters=6, expected_detractors=8.0, expected_promoters=18.0, statistic=14.2, threshold=13.1,
        drivers=(Driver("touchpoint", "delivery", 20, 16, 4.0),))
    fields.update(changes)
    return AlertEvent(**fields)


def make_trigger(**changes: Any) -> RetargetTrigger:
    fields: dict[str, Any] = dict(
        campaign_id="referral-ask", customer_id="c-1", event_id="e-1", score=10, loyalty="promoter",
        segment_id="all", reason="promoter", channel="email", priority="normal", created_at=ANSWERED_MS,
        expires_at=ANSWERED_MS + 7 * DAY_MS)
    fields.update(changes)
    return RetargetTrigger(**fields)


def test_alert_event_id_is_deterministic_and_content_derived() -> None:
    alert = make_alert()
    assert alert.id == make_alert().id
    # Measurements do not change the identity of (alert, kind, time)...
    assert make_alert(detractors=30, severity="sev-2", drivers=()).id == alert.id
    # ...but each identity part does.
    others = {make_alert(alert_id="b" * 32).id, make_alert(kind="resolved").id, make_alert(at=ANSWERED_MS).id}
    assert alert.id not in others
    assert len(others) == 3
    assert len(alert.id) == 32
    int(alert.id, 16)


def test_trigger_id_is_deterministic_and_content_derived() -> None:
    trigger = make_trigger()
    assert trigger.id == make_trigger().id
    assert make_trigger(segment_id="region=EU", created_at=0).id == trigger.id
    others = {make_trigger(campaign_id="service-recovery").id, make_trigger(event_id="e-2").id}
    assert trigger.id not in others
    assert len(others) == 2


def test_alert_to_dict_carries_schema_version_id_and_evidence() -> None:
    alert = make_alert()
    out = alert.to_dict()
    assert out["schema_version"] == SCHEMA_VERSION == 2
    assert out["id"] == alert.id
    assert out["type"] == "alert.opened"
    assert out["resolved_at"] is None and make_alert(kind="resolved").to_dict()["resolved_at"] == alert.at
    assert out["detractor_share"] == 0.6 and out["baseline_share"] == 0.2 and out["rise_pp"] == 40.0
    assert out["share_low"] < 0.6 < out["share_high"]
    assert (out["share_low"], out["share_high"]) == pytest.approx((0.446, 0.737), abs=1e-3)
    assert out["nps"] == -45.0 and out["baseline_nps"] == 25.0 and out["nps_change"] == -70.0
    assert out["excess_detractors"] == 16.0
    assert out["drivers"] == [{"dimension": "touchpoint", "value": "delivery", "responses": 20, "detractors": 16,
                               "expected": 4.0, "excess": 12.0}]
    assert out["onset_iso"] == "2025-11-24T10:15:00Z"
    assert out["revenue_at_risk"] == {"amount": 0.0, "currency": "", "customers": 0, "since": alert.onset_at,
                                      "since_iso": "2025-11-24T10:15:00Z"}
    assert orjson.loads(orjson.dumps(out)) == out


def test_alert_revenue_at_risk_is_an_additive_field() -> None:
    """Schema version 2 still: a new key, none changed, so version 2 consumers keep working."""
    alert = make_alert(revenue_at_risk_cents=1_234_505, at_risk_customers=17, currency="EUR",
                       revenue_since=ANSWERED_MS + 60_000)
    out = alert.to_dict()
    assert out["revenue_at_risk"] == {"amount": 12345.05, "currency": "EUR", "customers": 17,
                                      "since": ANSWERED_MS + 60_000, "since_iso": "2025-11-24T10:16:00Z"}
    before = make_alert().to_dict()
    assert set(out) == set(before) and all(out[key] == before[key] for key in out if key != "revenue_at_risk")
    assert alert.id == make_alert().id


def test_trigger_to_dict_carries_schema_version_and_id() -> None:
    trigger = make_trigger()
    out = trigger.to_dict()
    assert out["schema_version"] == SCHEMA_VERSION
    assert out["id"] == trigger.id
    assert out["type"] == "retarget.trigger"
    assert "alert_id" not in out
    assert make_trigger(alert_id="abc").to_dict()["alert_id"] == "abc"

