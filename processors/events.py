"""Event schemas, strict validation, and the output records (alerts, triggers) with deterministic ids.

Inputs are JSON objects decoded with orjson. Validation is strict: nothing is coerced, unknown fields are
refused (extensions go in ``attributes``), and every failure raises :class:`EventError` naming the field
and the reason. Error messages never echo a free-text ``comment`` (PII).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from processors.nps import wilson_interval
from processors.timeparse import DAY_MS, format_rfc3339_ms, parse_rfc3339_ms

SCHEMA_VERSION = 2
MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 64
MAX_COMMENT_CHARS = 8_000
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256
MAX_AMOUNT = Decimal("1000000000")
# Event times before this are refused: they are almost always epoch seconds sent as milliseconds.
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
DEFAULT_MAX_FUTURE_MS = DAY_MS
_DECIMAL_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?$")

SURVEY_FIELDS = frozenset(
    {"type", "event_id", "customer_id", "score", "answered_at", "touchpoint", "channel", "region", "comment",
     "attributes"}
)
PURCHASE_FIELDS = frozenset(
    {"type", "event_id", "customer_id", "amount", "currency", "category", "channel", "purchased_at"}
)


class EventError(ValueError):
    """A malformed event: ``field`` names the offending field ("" for the whole event), ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(slots=True, frozen=True)
class SurveyResponse:
    """One NPS answer. ``answered_at`` is event time in epoch milliseconds."""

    event_id: str
    customer_id: str
    score: int
    answered_at: int
    touchpoint: str | None = None
    channel: str | None = None
    region: str | None = None
    comment: str | None = field(default=None, repr=False)
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "survey", "event_id": self.event_id, "customer_id": self.customer_id,
                               "score": self.score, "answered_at": self.answered_at}
        for name in ("touchpoint", "channel", "region", "comment"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out


@dataclass(slots=True, frozen=True)
class Purchase:
    """One purchase; ``amount`` is exact (Decimal), ``purchased_at`` is event time in epoch milliseconds."""

    event_id: str
    customer_id: str
    amount: Decimal
    currency: str
    purchased_at: int
    category: str | None = None
    channel: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "purchase", "event_id": self.event_id, "customer_id": self.customer_id,
                               "amount": str(self.amount), "currency": self.currency,
                               "purchased_at": self.purchased_at}
        if self.category is not None:
            out["category"] = self.category
        if self.channel is not None:
            out["channel"] = self.channel
        return out


Event = SurveyResponse | Purchase


@dataclass(slots=True, frozen=True)
class TimeBounds:
    """Accepted event-time range: [MIN_EVENT_TIME_MS, now + max_future]. ``now_ms`` comes from the caller."""

    now_ms: int
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS

    @property
    def latest_ms(self) -> int:
        return self.now_ms + self.max_future_ms


# ---------------------------------------------------------------- decoding


def decode_json(raw: bytes | str) -> dict[str, Any]:
    """Decode one JSON object, refusing oversized payloads, non-JSON and non-objects."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError("", f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES} (64 KiB)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError("", f"not JSON: {exc.args[0] if exc.args else 'decode error'}") from None
    if not isinstance(obj, dict):
        raise EventError("", f"expected a JSON object, got {_json_type(obj)}")
    return obj


def parse_event(raw: bytes | str, bounds: TimeBounds, *, expected_type: str | None = None,
                default_time_ms: int | None = None) -> Event:
    """Decode and validate one event.

    In JSONL files each line names its ``type``; on Kafka the topic decides (``expected_type``) and a ``type``
    field, if present, must agree with it.
    """
    return event_from_dict(decode_json(raw), bounds, expected_type=expected_type, default_time_ms=default_time_ms)


def event_from_dict(obj: dict[str, Any], bounds: TimeBounds, *, expected_type: str | None = None,
                    default_time_ms: int | None = None) -> Event:
    declared = obj.get("type")
    if declared is not None and declared not in ("survey", "purchase"):
        raise EventError("type", f"must be 'survey' or 'purchase', got {_show(declared)}")
    if expected_type is not None and declared is not None and declared != expected_type:
        raise EventError("type", f"is {declared!r} but this input carries {expected_type!r} events")
    kind = expected_type or declared
    if kind is None:
        raise EventError("type", "missing: each line must say \"type\": \"survey\" or \"type\": \"purchase\"")
    if kind == "survey":
        return survey_from_dict(obj, bounds)
    return purchase_from_dict(obj, bounds, default_time_ms=default_time_ms)


def survey_from_dict(obj: dict[str, Any], bounds: TimeBounds) -> SurveyResponse:
    _refuse_unknown(obj, SURVEY_FIELDS)
    score = obj.get("score")
    if score is None:
        raise EventError("score", "missing (an integer 0-10)")
    if type(score) is not int:
        if isinstance(score, float):
            reason = "NaN is not a score" if math.isnan(score) else f"{score!r} is not a whole number (0-10)"
            raise EventError("score", reason)
        raise EventError("score", f"must be an integer 0-10, got {_json_type(score)}")
    if not 0 <= score <= 10:
        raise EventError("score", f"{score} is out of range (0-10)")
    comment = obj.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise EventError("comment", f"must be a string, got {_json_type(comment)}")
        if len(comment) > MAX_COMMENT_CHARS:
            raise EventError("comment", f"longer than {MAX_COMMENT_CHARS} characters")
    return SurveyResponse(
        event_id=_required_id(obj, "event_id"),
        customer_id=_required_id(obj, "customer_id"),
        score=score,
        answered_at=_event_time(obj.get("answered_at"), "answered_at", bounds, None),
        touchpoint=_optional_label(obj, "touchpoint"),
        channel=_optional_label(obj, "channel"),
        region=_optional_label(obj, "region"),
        comment=comment,
        attributes=_attributes(obj.get("attributes")),
    )


def purchase_from_dict(obj: dict[str, Any], bounds: TimeBounds, *,
                       default_time_ms: int | None = None) -> Purchase:
    _refuse_unknown(obj, PURCHASE_FIELDS)
    currency = obj.get("currency")
    if currency is None:
        raise EventError("currency", "missing (an ISO 4217 code such as 'EUR')")
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isascii() and currency.isupper()
            and currency.isalpha()):
        raise EventError("currency", f"must be a 3-letter upper-case ISO 4217 code, got {_show(currency)}")
    return Purchase(
        event_id=_required_id(obj, "event_id"),
        customer_id=_required_id(obj, "customer_id"),
        amount=_amount(obj.get("amount")),
        currency=currency,
        purchased_at=_event_time(obj.get("purchased_at"), "purchased_at", bounds, default_time_ms),
        category=_optional_label(obj, "category"),
        channel=_optional_label(obj, "channel"),
    )


def _refuse_unknown(obj: dict[str, Any], known: frozenset[str]) -> None:
    for key in obj:
        if key not in known:
            raise EventError(str(key)[:MAX_LABEL_CHARS], f"unknown field (known: {', '.join(sorted(known))}; "
                                                         "put extra data in 'attributes')")


def _required_id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise EventError(name, "missing")
    if not isinstance(value, str):
        raise EventError(name, f"must be a string, got {_json_type(value)}")
    if not value.strip():
        raise EventError(name, "is empty")
    if len(value) > MAX_ID_CHARS:
        raise EventError(name, f"longer than {MAX_ID_CHARS} characters")
    return value


def _optional_label(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventError(name, f"must be a string, got {_json_type(value)}")
    if not value or len(value) > MAX_LABEL_CHARS:
        raise EventError(name, f"must be 1-{MAX_LABEL_CHARS} characters, got {len(value)}")
    return value


def _attributes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError("attributes", f"must be an object of string values, got {_json_type(value)}")
    if len(value) > MAX_ATTRIBUTES:
        raise EventError("attributes", f"has {len(value)} keys; the limit is {MAX_ATTRIBUTES}")
    for key, item in value.items():
        if not key or len(key) > MAX_LABEL_CHARS:
            raise EventError("attributes", f"key must be 1-{MAX_LABEL_CHARS} characters")
        if not isinstance(item, str):
            raise EventError(f"attributes.{key}", f"must be a string (a flat string map), got {_json_type(item)}")
        if len(item) > MAX_ATTRIBUTE_VALUE_CHARS:
            raise EventError(f"attributes.{key}", f"longer than {MAX_ATTRIBUTE_VALUE_CHARS} characters")
    return value


def _amount(value: Any) -> Decimal:
    if value is None:
        raise EventError("amount", "missing (a positive decimal number)")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise EventError("amount", f"must be a number or a decimal string, got {_json_type(value)}")
    if isinstance(value, str) and not _DECIMAL_TEXT.match(value):
        raise EventError("amount", f"{_show(value)} is not a plain decimal string like '19.99'")
    try:
        # str() of a float is its shortest round-trip form, so 19.99 stays exactly 19.99.
        amount = Decimal(value) if isinstance(value, int | str) else Decimal(repr(value))
    except InvalidOperation:
        raise EventError("amount", f"{_show(value)} is not a decimal number") from None
    if not amount.is_finite():
        raise EventError("amount", f"{_show(value)} is not a finite number")
    if amount <= 0:
        raise EventError("amount", f"must be > 0, got {amount}")
    if amount > MAX_AMOUNT:
        raise EventError("amount", f"{amount} exceeds the limit {MAX_AMOUNT}")
    return amount


def _event_time(value: Any, name: str, bounds: TimeBounds, default_ms: int | None) -> int:
    if value is None:
        if default_ms is not None:
            return default_ms
        raise EventError(name, "missing (RFC 3339 string or epoch milliseconds)")
    if isinstance(value, str):
        try:
            ms = parse_rfc3339_ms(value)
        except ValueError as exc:
            raise EventError(name, f"{_show(value)} is {exc}") from None
    elif type(value) is int:
        ms = value
    elif isinstance(value, float):
        raise EventError(name, "epoch milliseconds must be an integer")
    else:
        raise EventError(name, f"must be an RFC 3339 string or integer epoch milliseconds, got {_json_type(value)}")
    if ms < MIN_EVENT_TIME_MS:
        hint = " (epoch seconds? send milliseconds)" if type(value) is int and value > 0 else ""
        raise EventError(name, f"{_show(value)} is before 2000-01-01{hint}")
    if ms > bounds.latest_ms:
        raise EventError(name, f"{_show(value)} is in the future beyond the allowed clock skew")
    return ms


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- outputs


def content_id(*parts: object) -> str:
    """A deterministic id from content: the same parts always give the same 32-hex-digit id."""
    return hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=16).hexdigest()


@dataclass(slots=True, frozen=True)
class Driver:
    """One attribute value's share of a spike: answers and detractors with it since onset, and the detractors
    the baseline expected of them."""

    dimension: str
    value: str
    responses: int
    detractors: int
    expected: float

    def to_dict(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "value": self.value, "responses": self.responses,
                "detractors": self.detractors, "expected": round(self.expected, 3),
                "excess": round(self.detractors - self.expected, 3)}


@dataclass(slots=True, frozen=True)
class AlertEvent:
    """A step in one spike alert's life: ``opened``, ``updated`` (severity or incident changed) or ``resolved``.

    Evidence counts run from the onset slice to ``at`` (the end of the slice that caused the event). The alert
    id derives from (segment, opening time, rule); the event id from (alert, kind, at).
    """

    kind: str
    alert_id: str
    incident_id: str
    segment_id: str
    parent_segment_id: str | None
    rule: str
    severity: str
    design_shift_pp: int
    at: int
    opened_at: int
    onset_at: int
    responses: int
    detractors: int
    promoters: int
    expected_detractors: float
    expected_promoters: float
    statistic: float
    threshold: float
    drivers: tuple[Driver, ...] = ()
    # Revenue at risk: the summed purchase value (profile horizon, 90 days by default; base currency) of the
    # distinct customers who answered as detractors in the segment from ``revenue_since`` (the onset, at most
    # the longest window before ``at``) to ``at``, and how many they are.
    revenue_at_risk_cents: int = 0
    at_risk_customers: int = 0
    currency: str = ""
    revenue_since: int = 0
    # Of ``responses``, the answers segmented without their customer's stored attributes (the attribute store was
    # unreachable): in the record only when > 0.
    answers_without_attributes: int = 0

    @property
    def id(self) -> str:
        return content_id("alert-event", self.alert_id, self.kind, self.at)

    @property
    def detractor_share(self) -> float:
        return self.detractors / self.responses if self.responses else 0.0

    @property
    def baseline_share(self) -> float:
        return self.expected_detractors / self.responses if self.responses else 0.0

    @property
    def nps(self) -> float:
        return 100.0 * (self.promoters - self.detractors) / self.responses if self.responses else 0.0

    @property
    def baseline_nps(self) -> float:
        if not self.responses:
            return 0.0
        return 100.0 * (self.expected_promoters - self.expected_detractors) / self.responses

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.detractors, self.responses)
        record: dict[str, Any] = {
            "id": self.id, "schema_version": SCHEMA_VERSION, "type": f"alert.{self.kind}",
            "alert_id": self.alert_id, "incident_id": self.incident_id, "segment_id": self.segment_id,
            "parent_segment_id": self.parent_segment_id, "rule": self.rule, "severity": self.severity,
            "design_shift_pp": self.design_shift_pp,
            "at": self.at, "at_iso": format_rfc3339_ms(self.at),
            "opened_at": self.opened_at, "onset_at": self.onset_at, "onset_iso": format_rfc3339_ms(self.onset_at),
            "resolved_at": self.at if self.kind == "resolved" else None,
            "responses": self.responses, "detractors": self.detractors, "promoters": self.promoters,
            "detractor_share": round(self.detractor_share, 6), "share_low": round(low, 6), "share_high": round(high, 6),
            "baseline_share": round(self.baseline_share, 6),
            "rise_pp": round(100.0 * (self.detractor_share - self.baseline_share), 3),
            "nps": round(self.nps, 3), "baseline_nps": round(self.baseline_nps, 3),
            "nps_change": round(self.nps - self.baseline_nps, 3),
            "excess_detractors": round(self.detractors - self.expected_detractors, 3),
            "statistic": round(self.statistic, 4), "threshold": round(self.threshold, 4),
            "drivers": [driver.to_dict() for driver in self.drivers],
            "revenue_at_risk": {"amount": self.revenue_at_risk_cents / 100, "currency": self.currency,
                                "customers": self.at_risk_customers, "since": self.revenue_since or self.onset_at,
                                "since_iso": format_rfc3339_ms(self.revenue_since or self.onset_at)},
        }
        if self.answers_without_attributes:
            record["answers_without_attributes"] = self.answers_without_attributes
        return record


@dataclass(slots=True, frozen=True)
class RetargetTrigger:
    """A re-targeting trigger for one customer. ``id`` derives from (campaign, source event)."""

    campaign_id: str
    customer_id: str
    event_id: str
    score: int
    loyalty: str
    segment_id: str
    reason: str
    channel: str
    priority: str
    created_at: int
    expires_at: int
    alert_id: str | None = None

    @property
    def id(self) -> str:
        return content_id("trigger", self.campaign_id, self.event_id)

    def to_dict(self, trigger_id: str | None = None) -> dict[str, Any]:
        """The trigger as a record; ``trigger_id``: its ``id`` if the caller already has it."""
        out = {
            "id": self.id if trigger_id is None else trigger_id, "schema_version": SCHEMA_VERSION,
            "type": "retarget.trigger",
            "campaign_id": self.campaign_id, "customer_id": self.customer_id, "event_id": self.event_id,
            "score": self.score, "loyalty": self.loyalty, "segment_id": self.segment_id, "reason": self.reason,
            "channel": self.channel, "priority": self.priority, "created_at": self.created_at,
            "expires_at": self.expires_at,
        }
        if self.alert_id is not None:
            out["alert_id"] = self.alert_id
        return out
