"""A replay's reports: the human-readable summary (input, dead letters, per-segment NPS, alerts, triggers) and
the self-contained HTML report (the dashboard's page with the replay's data embedded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.alert_text import clock, describe_alert
from streams.dashboard import render_page
from streams.dashboard.model import history_points, trend
from streams.replay import ReplayResult, describe_span


def render_summary(result: ReplayResult, out_dir: Path, *, top: int = 15) -> str:
    lines: list[str] = []
    add = lines.append
    rate = result.lines / result.seconds if result.seconds > 0 else 0.0
    add("npspulse replay: the embedded engine (in-process, in-memory state; no Kafka, no Redis)")
    add(f"  input        {result.lines:,} lines: {result.surveys:,} answers, {result.purchases:,} purchases "
        f"in {result.seconds:.1f} s ({rate:,.0f} lines/s)")
    add(f"  event time   {describe_span(result)}")
    dead = ", ".join(f"{name}: {count}" for name, count in sorted(result.dead_letters.items()))
    add(f"  dead letters {result.dead_lettered:,} lines -> {out_dir / 'dead-letter.jsonl'}" + (f"  ({dead})" if dead else ""))
    add(f"  late answers {result.late:,} beyond the grace period (in the dead-letter file, reason 'late')")
    add(f"  windows      {result.windows:,} closed window results -> {out_dir / 'windows.jsonl'}")
    add("")
    alerted = {alert["segment_id"] for alert in result.alerts}
    _segments(lines, result, alerted, top)
    add("")
    _alerts(lines, result, out_dir)
    add("")
    _triggers(lines, result, out_dir)
    return "\n".join(lines)


def _triggers(lines: list[str], result: ReplayResult, out_dir: Path) -> None:
    """Per campaign: triggers sent (in the file) and those the delivery policy held back."""
    lines.append(f"Re-targeting triggers -> {out_dir / 'triggers.jsonl'} (sent ones only; the delivery policy "
                 "held back the rest)")
    campaigns = sorted({campaign for campaign, _, _ in result.delivery})
    if not campaigns:
        lines.append("  none")
        return
    lines.append(f"  {'campaign':<22} {'sent':>8} {'customers':>9} {'capped (campaign/customer)':>26} {'opted out':>9} "
                 f"{'duplicates':>10}")
    for campaign in campaigns:
        held = result.held_back(campaign)
        by_campaign, by_customer = held.get("capped:campaign", 0), held.get("capped:customer", 0)
        capped = f"{by_campaign + by_customer:,} ({by_campaign:,}/{by_customer:,})"
        lines.append(f"  {campaign:<22} {result.trigger_counts.get(campaign, 0):>8,} "
                     f"{len(result.triggered_customers.get(campaign, ())):>9,} {capped:>26} "
                     f"{held.get('opted_out', 0):>9,} {held.get('duplicate', 0):>10,}")


def _segments(lines: list[str], result: ReplayResult, alerted: set[str], top: int) -> None:
    totals = result.segment_totals
    by_volume = sorted(totals, key=lambda s: (-totals[s].total, s))
    shown = by_volume[:top] + sorted(s for s in alerted if s not in by_volume[:top])
    lines.append(f"Segments: {len(totals)} with answers; NPS over the whole input with 95% interval "
                 f"(top {min(top, len(totals))} by volume, and every alerted one, marked !)")
    lines.append(f"  {'segment':<34} {'answers':>8} {'NPS':>7} {'95% interval':>17} {'detractors':>11}")
    for segment in shown:
        counts = totals[segment]
        low, high = counts.interval()
        mark = "!" if segment in alerted else " "
        lines.append(f"{mark} {segment:<34} {counts.total:>8,} {counts.nps:>+7.1f} [{low:>+6.1f}, {high:>+6.1f}] "
                     f"{100 * counts.detractor_share:>10.1f}%")


def _alerts(lines: list[str], result: ReplayResult, out_dir: Path) -> None:
    opened = [alert for alert in result.alerts if alert["type"] == "alert.opened"]
    incidents = {alert["incident_id"] for alert in result.alerts}
    lines.append(f"Alerts: {len(opened)} opened in {len(incidents)} incident(s); {len(result.alerts)} events "
                 f"(opened, updated, resolved) -> {out_dir / 'alerts.jsonl'}")
    if not result.alerts:
        lines.append("  none")
        return
    by_incident: dict[str, list[dict]] = {}
    for alert in result.alerts:
        by_incident.setdefault(alert["incident_id"], []).append(alert)
    for incident, events in sorted(by_incident.items(), key=lambda item: (item[1][0]["at"], item[0])):
        root = next((e for e in events if e["alert_id"] == incident), events[0])
        segments = sorted({e["segment_id"] for e in events})
        lines.append(f"  incident {incident[:8]} from {clock(root['onset_at'])} UTC: {len(segments)} segment(s), "
                     f"led by {root['segment_id']}")
        for event in events:
            lines.append(f"    {describe_alert(event)}")


def report_data(result: ReplayResult, source: str) -> dict[str, Any]:
    """The dashboard's data for a replay run with ``keep_history``: every segment's windows, trend and last
    alert state, every alert event, and a chart for "all" and each alerted segment."""
    if result.history is None:
        raise ValueError("the replay kept no window history (run it with keep_history=True)")
    last_event: dict[str, dict] = {}
    for event in result.alerts:
        last_event[event["segment_id"]] = event
    segments = []
    for segment_id, windows in sorted(result.history.items()):
        points = history_points(windows)
        event = last_event.get(segment_id)
        alert = None if event is None else {
            "state": "resolved" if event["type"] == "alert.resolved" else "open", "alert_id": event["alert_id"],
            "incident_id": event["incident_id"], "severity": event["severity"], "at": event["at"]}
        segments.append({"segment_id": segment_id, "alert": alert, "history": points, "trend": trend(points)})
    alerted = list(dict.fromkeys(event["segment_id"] for event in result.alerts))
    charts = [segment for segment in ("all", *alerted) if segment in result.history]
    return {"title": f"npspulse replay report: {source}", "subtitle": f"Replay of {describe_span(result)}",
            "hint": "NPS: the last hour of the replay (5-minute windows pooled) with its 95% interval. Change: "
                    "against the rest of the replay. Answers: in the last hour. Trend: the whole replay, band = "
                    "95% interval. Charts: 'all' and every segment that alerted.",
            "segments": segments, "alerts": result.alerts, "charts": list(dict.fromkeys(charts))}


def write_html_report(result: ReplayResult, path: Path, source: str) -> None:
    """One self-contained HTML file (inline CSS, JS and data; nothing fetched) with the dashboard's views."""
    data = report_data(result, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(data, title=data["title"]), encoding="utf-8")
