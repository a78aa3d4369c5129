"""The one-line alert text of `npspulse tail` and the replay summary (streams.alert_text)."""

from __future__ import annotations

from test_slack_format import ALERT

from streams.alert_text import describe_alert


def test_alert_line_carries_the_evidence_and_the_revenue_at_risk() -> None:
    line = describe_alert(ALERT)
    assert line.startswith("opened   sev-1 region=EU|channel=app  since 14:00 (opened 14:12)")
    assert "detractors 60/120 = 50.0% [41-59] vs baseline 25.0% (+25.0 pp)" in line
    assert "excess detractors 30.0, revenue at risk EUR 12,345.05 (17 detractors since 14:00); drivers " in line


def test_alert_line_without_revenue_at_risk() -> None:
    """Alerts from before the field (or from the evaluation detectors) render as before."""
    line = describe_alert({key: value for key, value in ALERT.items() if key != "revenue_at_risk"})
    assert "revenue" not in line and "excess detractors 30.0; drivers " in line
