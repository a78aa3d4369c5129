"""The Slack formatter of the webhook sink (``--format slack``) on schema_version 2 alerts and triggers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.slack_format import slack_payload

ALERT: dict[str, Any] = {
    "id": "9b0c5c6e2f0e4a3c8f1d2a7b6c5d4e3f", "schema_version": 2, "type": "alert.opened", "alert_id": "a-17",
    "incident_id": "i-4", "segment_id": "region=EU|channel=app", "parent_segment_id": "region=EU",
    "rule": "detractor-spike.cusum", "severity": "sev-1", "at": 1772460720000, "at_iso": "2026-03-02T14:12:00.000Z",
    "onset_at": 1772460000000, "onset_iso": "2026-03-02T14:00:00.000Z", "opened_at": 1772460720000,
    "resolved_at": None, "responses": 120, "detractors": 60, "promoters": 30, "detractor_share": 0.5,
    "share_low": 0.41, "share_high": 0.59, "baseline_share": 0.25, "rise_pp": 25.0, "nps": -25.0,
    "baseline_nps": 30.0, "nps_change": -55.0, "excess_detractors": 30.0, "design_shift_pp": 25, "statistic": 14.2,
    "threshold": 13.1, "revenue_at_risk": {"amount": 12345.05, "currency": "EUR", "customers": 17,
                                          "since": 1772460000000, "since_iso": "2026-03-02T14:00:00Z"},
    "drivers": [{"dimension": "channel", "value": "app", "responses": 70, "detractors": 20, "expected": 17.5, "excess": 2.5},
                {"dimension": "touchpoint", "value": "delivery", "responses": 50, "detractors": 40, "expected": 12.5,
                 "excess": 27.5}],
}


def _fields(payload: dict[str, Any]) -> dict[str, str]:
    section = next(block for block in payload["blocks"] if block["type"] == "section" and "fields" in block)
    return dict(field["text"][1:].split("*\n", 1) for field in section["fields"])


def _all_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False)


def test_alert_renders_segment_nps_change_evidence_and_drivers() -> None:
    payload = slack_payload(ALERT)
    json.dumps(payload)  # serialisable as is
    assert "region=EU|channel=app" in payload["text"] and "sev-1" in payload["text"]
    assert "NPS -25.0 vs baseline +30.0 (change -55.0)" in payload["text"]  # the notification line says it all
    header = payload["blocks"][0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert header["text"]["text"] == "sev-1 detractor spike opened: region=EU|channel=app"
    fields = _fields(payload)
    assert fields["Segment"] == "region=EU|channel=app (within region=EU)"
    assert fields["Severity"] == "sev-1"
    assert fields["NPS"] == "-25.0 vs baseline +30.0 (change -55.0)"
    assert fields["Detractor share"] == "50.0% (interval 41.0–59.0%) vs baseline 25.0%"
    assert fields["Rise"] == "+25.0 pp"
    assert fields["Excess detractors"] == "30.0"
    assert fields["Revenue at risk"] == "EUR 12,345.05 (17 detractors since 14:00)"
    assert fields["Responses since onset"] == "120 (60 detractors, 30 promoters)"
    assert fields["Onset"] == "2026-03-02T14:00:00.000Z"
    assert "Resolved" not in fields  # resolved_at is null
    drivers = next(block["text"]["text"] for block in payload["blocks"] if block["type"] == "section" and "text" in block)
    lines = drivers.splitlines()
    assert lines[0] == "*Top drivers*"
    # Largest excess first.
    assert lines[1] == "• touchpoint=delivery: 40 of 50 detractors, expected 12.5, excess +27.5"
    assert lines[2].startswith("• channel=app:")
    context = payload["blocks"][-1]
    assert context["type"] == "context"
    assert "rule detractor-spike.cusum" in context["elements"][0]["text"]
    assert "statistic 14.20 / threshold 13.10" in context["elements"][0]["text"]
    assert "alert a-17" in context["elements"][0]["text"] and "incident i-4" in context["elements"][0]["text"]


def test_resolved_alert_with_resolution_time() -> None:
    payload = slack_payload({**ALERT, "type": "alert.resolved", "resolved_at": 1772464320000})
    assert payload["text"].startswith(":white_check_mark: sev-1 detractor spike resolved: region=EU|channel=app")
    assert _fields(payload)["Resolved"] == "2026-03-02T15:12:00Z"


@pytest.mark.parametrize("missing", sorted(set(ALERT) - {"type"}))
def test_any_optional_key_may_be_missing(missing: str) -> None:
    alert = {key: value for key, value in ALERT.items() if key != missing}
    payload = slack_payload(alert)
    json.dumps(payload)
    assert payload["text"] and payload["blocks"][0]["type"] == "header"
    if missing != "segment_id":
        assert "region=EU|channel=app" in payload["text"]


def test_bare_and_mistyped_alert_still_renders() -> None:
    payload = slack_payload({"type": "alert.updated"})
    assert payload["text"] == ":warning: detractor spike update: unknown segment"
    assert _fields(payload) == {"Segment": "unknown segment"}
    assert len(payload["blocks"]) == 2  # header and the segment; no drivers, no context
    odd = slack_payload({"type": "alert.opened", "segment_id": "all", "nps": "low", "baseline_nps": True,
                         "detractor_share": None, "drivers": "touchpoint", "responses": float("nan"),
                         "onset_at": "yesterday"})
    assert _fields(odd) == {"Segment": "all"}
    nps_only = slack_payload({"type": "alert.opened", "nps": -10, "baseline_nps": 5})
    assert _fields(nps_only)["NPS"] == "-10.0 vs baseline +5.0 (change -15.0)"  # change derived when absent
    drivers = slack_payload({"type": "alert.opened", "drivers": [{"dimension": "tier", "value": "gold"}, "x", {}]})
    assert "• tier=gold" in _all_text(drivers)


def test_slack_control_characters_are_escaped() -> None:
    payload = slack_payload({**ALERT, "segment_id": "campaign=<!channel>&co"})
    fields = _fields(payload)
    assert fields["Segment"].startswith("campaign=&lt;!channel&gt;&amp;co")
    assert "<!channel>" not in payload["text"]
    assert payload["blocks"][0]["text"]["text"] == "sev-1 detractor spike opened: campaign=<!channel>&co"  # plain_text


def test_schema_v1_alert_renders_what_it_has() -> None:
    v1 = {"id": "x", "schema_version": 1, "type": "segment.alert", "segment_id": "region=EU", "severity": "sev-2",
          "responses": 86, "detractors": 44, "detractor_share": 0.511628, "baseline_share": 0.225651, "rise_pp": 28.598,
          "nps": -24.419, "baseline_nps": 25.3, "excess_detractors": 24.594, "rule": "detractor-spike.binomial"}
    fields = _fields(slack_payload(v1))
    assert fields["NPS"] == "-24.4 vs baseline +25.3 (change -49.7)"
    assert fields["Detractor share"] == "51.2% vs baseline 22.6%"


def test_trigger_is_one_line() -> None:
    payload = slack_payload({"id": "t1", "type": "retarget.trigger", "campaign_id": "service-recovery",
                             "customer_id": "c0001234", "score": 3, "loyalty": "detractor",
                             "segment_id": "region=EU|channel=app", "channel": "email", "priority": "high"})
    assert payload == {"text": "service-recovery trigger for customer c0001234 (detractor, score 3) in "
                               "region=EU|channel=app via email priority high"}
    assert slack_payload({"type": "retarget.trigger"}) == {"text": "campaign trigger"}
    assert slack_payload({"type": "segment.window", "id": "w1"}) == {"text": "npspulse segment.window w1"}


@pytest.mark.parametrize("revenue", [None, "lots", {"amount": "12"}, {"currency": "EUR"}, {"amount": True}])
def test_missing_or_malformed_revenue_at_risk_leaves_its_field_out(revenue: object) -> None:
    alert = {**ALERT, "revenue_at_risk": revenue}
    assert "Revenue at risk" not in _fields(slack_payload(alert))


def test_revenue_at_risk_of_one_detractor_without_currency() -> None:
    alert = {**ALERT, "revenue_at_risk": {"amount": 0, "customers": 1}}
    assert _fields(slack_payload(alert))["Revenue at risk"] == "0.00 (1 detractor)"

