"""Slack-compatible messages (``{"text": ..., "blocks": [...]}``) for output records, used by the webhook sink's
``--format slack``.

Alerts are rendered from the schema_version 2 shape (``alert.opened`` / ``alert.updated`` / ``alert.resolved``):
segment, severity, the NPS change, the evidence (detractor share and its interval against the baseline, the rise,
excess detractors, responses since onset, onset time), the revenue at risk and the top drivers. Every key but
``type`` is optional: a missing or mistyped value leaves its line out instead of failing, so version 1
``segment.alert`` records render too (without the fields they lack). Re-targeting triggers become one line of
text. Nothing here logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from processors.timeparse import format_rfc3339_ms

MAX_DRIVERS = 5
_HEADER_LIMIT = 150  # Slack: plain_text header blocks
_TEXT_LIMIT = 2900  # Slack: 3000 characters per section text or field
_STATES = {"alert.opened": "opened", "alert.updated": "update", "alert.resolved": "resolved",
           "segment.alert": "alert"}


def slack_payload(record: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack message for one output record (an alert, a re-targeting trigger, or anything with a type)."""
    kind = record.get("type")
    if kind in _STATES:
        return alert_payload(record)
    if kind == "retarget.trigger":
        return {"text": trigger_line(record)}
    ident = _text(record, "id")
    return {"text": _escape(" ".join(part for part in ("npspulse", _text(record, "type") or "record", ident) if part))}


def alert_payload(alert: Mapping[str, Any]) -> dict[str, Any]:
    """Header, evidence fields, top drivers and a context line for one alert record."""
    state = _STATES.get(str(alert.get("type")), "alert")
    segment = _text(alert, "segment_id") or "unknown segment"
    severity = _text(alert, "severity")
    title = f"{severity + ' ' if severity else ''}detractor spike {state}: {segment}"
    icon = ":white_check_mark:" if state == "resolved" else ":rotating_light:" if severity == "sev-1" else ":warning:"
    nps = _nps_line(alert)
    text = f"{icon} {_escape(title)}" + (f" — NPS {nps}" if nps else "")

    fields = [("Segment", _segment_text(alert, segment)), ("Severity", severity),
              ("NPS", nps), ("Detractor share", _share_line(alert)), ("Rise", _signed(alert, "rise_pp", " pp")),
              ("Excess detractors", _plain(alert, "excess_detractors")),
              ("Revenue at risk", revenue_line(alert.get("revenue_at_risk"))),
              ("Responses since onset", _responses_line(alert)),
              ("Onset", _time(alert, "onset_iso", "onset_at")), ("Resolved", _time(alert, "resolved_iso", "resolved_at"))]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(title, _HEADER_LIMIT), "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": _cut(f"*{name}*\n{_escape(value)}", _TEXT_LIMIT)}
                                       for name, value in fields if value]},
    ]
    drivers = _drivers_text(alert.get("drivers"))
    if drivers:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"*Top drivers*\n{drivers}", _TEXT_LIMIT)}})
    context = _context_line(alert)
    if context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(context, _TEXT_LIMIT)}]})
    return {"text": text, "blocks": blocks}


def trigger_line(trigger: Mapping[str, Any]) -> str:
    """One line for a re-targeting trigger: campaign, customer, loyalty, segment, channel and priority."""
    campaign = _text(trigger, "campaign_id") or "campaign"
    parts = [f"{campaign} trigger"]
    customer = _text(trigger, "customer_id")
    if customer:
        parts.append(f"for customer {customer}")
    loyalty, score = _text(trigger, "loyalty"), _number(trigger, "score")
    if loyalty or score is not None:
        parts.append(f"({', '.join(p for p in (loyalty, f'score {_count(score)}' if score is not None else '') if p)})")
    segment = _text(trigger, "segment_id")
    if segment:
        parts.append(f"in {segment}")
    channel, priority = _text(trigger, "channel"), _text(trigger, "priority")
    if channel:
        parts.append(f"via {channel}")
    if priority:
        parts.append(f"priority {priority}")
    return _escape(" ".join(parts))


def revenue_line(revenue: object) -> str | None:
    """``EUR 12,345.05 (17 detractors since 14:02)``: the 90-day value of the alert's detractor customers
    (None: absent)."""
    if not isinstance(revenue, Mapping):
        return None
    amount, customers = _number(revenue, "amount"), _number(revenue, "customers")
    if amount is None:
        return None
    currency = _text(revenue, "currency")
    line = f"{currency + ' ' if currency else ''}{amount:,.2f}"
    details = f"{_count(customers)} detractor{'' if customers == 1 else 's'}" if customers is not None else ""
    since = _text(revenue, "since_iso")
    if len(since) >= 16:
        details += f"{' ' if details else ''}since {since[11:16]}"
    return f"{line} ({details})" if details else line


def _nps_line(alert: Mapping[str, Any]) -> str | None:
    nps, baseline = _number(alert, "nps"), _number(alert, "baseline_nps")
    change = _number(alert, "nps_change")
    if change is None and nps is not None and baseline is not None:
        change = nps - baseline
    if nps is None:
        return f"change {change:+.1f}" if change is not None else None
    line = f"{nps:+.1f}"
    if baseline is not None:
        line += f" vs baseline {baseline:+.1f}"
    if change is not None:
        line += f" (change {change:+.1f})"
    return line


def _share_line(alert: Mapping[str, Any]) -> str | None:
    share, low, high = _number(alert, "detractor_share"), _number(alert, "share_low"), _number(alert, "share_high")
    baseline = _number(alert, "baseline_share")
    if share is None:
        return f"baseline {100 * baseline:.1f}%" if baseline is not None else None
    line = f"{100 * share:.1f}%"
    if low is not None and high is not None:
        line += f" (interval {100 * low:.1f}–{100 * high:.1f}%)"
    if baseline is not None:
        line += f" vs baseline {100 * baseline:.1f}%"
    return line


def _responses_line(alert: Mapping[str, Any]) -> str | None:
    responses = _number(alert, "responses")
    counts = [f"{_count(value)} {name}" for name in ("detractors", "promoters") if (value := _number(alert, name)) is not None]
    if responses is None:
        return ", ".join(counts) or None
    return _count(responses) + (f" ({', '.join(counts)})" if counts else "")


def _segment_text(alert: Mapping[str, Any], segment: str) -> str:
    parent = _text(alert, "parent_segment_id")
    return segment + (f" (within {parent})" if parent else "")


def _drivers_text(drivers: object) -> str | None:
    if not isinstance(drivers, list):
        return None
    usable = [driver for driver in drivers if isinstance(driver, Mapping)
              and (_text(driver, "dimension") or _text(driver, "value"))]
    usable.sort(key=_excess, reverse=True)
    lines = []
    for driver in usable[:MAX_DRIVERS]:
        name = "=".join(part for part in (_text(driver, "dimension"), _text(driver, "value")) if part)
        details = []
        detractors, responses = _number(driver, "detractors"), _number(driver, "responses")
        if detractors is not None and responses is not None:
            details.append(f"{_count(detractors)} of {_count(responses)} detractors")
        elif detractors is not None:
            details.append(f"{_count(detractors)} detractors")
        for key, label in (("expected", "expected"), ("excess", "excess")):
            value = _number(driver, key)
            if value is not None:
                details.append(f"{label} {value:+.1f}" if key == "excess" else f"{label} {value:.1f}")
        lines.append(f"• {_escape(name)}" + (f": {', '.join(details)}" if details else ""))
    return "\n".join(lines) or None


def _excess(driver: Mapping[str, Any]) -> float:
    excess = _number(driver, "excess")
    return -math.inf if excess is None else excess


def _context_line(alert: Mapping[str, Any]) -> str | None:
    parts = []
    rule = _text(alert, "rule")
    if rule:
        parts.append(f"rule {rule}")
    statistic, threshold = _number(alert, "statistic"), _number(alert, "threshold")
    if statistic is not None:
        parts.append(f"statistic {statistic:.2f}" + (f" / threshold {threshold:.2f}" if threshold is not None else ""))
    at = _time(alert, "at_iso", "at")
    if at:
        parts.append(f"at {at}")
    for key, label in (("alert_id", "alert"), ("incident_id", "incident")):
        value = _text(alert, key)
        if value:
            parts.append(f"{label} {value}")
    return _escape(" · ".join(parts)) if parts else None


def _time(record: Mapping[str, Any], iso_key: str, ms_key: str) -> str | None:
    iso = _text(record, iso_key)
    if iso:
        return iso
    ms = record.get(ms_key)
    if isinstance(ms, int) and not isinstance(ms, bool):
        try:
            return format_rfc3339_ms(ms)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _signed(record: Mapping[str, Any], key: str, unit: str) -> str | None:
    value = _number(record, key)
    return f"{value:+.1f}{unit}" if value is not None else None


def _plain(record: Mapping[str, Any], key: str) -> str | None:
    value = _number(record, key)
    return f"{value:.1f}" if value is not None else None


def _number(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _text(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    return value if isinstance(value, str) else ""


def _escape(text: str) -> str:
    """Slack mrkdwn control characters (``&``, ``<``, ``>``) as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
