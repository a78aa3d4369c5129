"""The human-readable summary of a replay: input, dead letters, per-segment NPS, alerts, triggers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from processors.timeparse import format_rfc3339_ms
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
    add(f"Re-targeting triggers -> {out_dir / 'triggers.jsonl'}")
    if not result.trigger_counts:
        add("  none")
    for campaign, count in sorted(result.trigger_counts.items()):
        customers = len(result.triggered_customers.get(campaign, ()))
        add(f"  {campaign:<22} {count:>8,} triggers for {customers:,} customers")
    return "\n".join(lines)


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
    lines.append(f"Alerts: {len(result.alerts)} -> {out_dir / 'alerts.jsonl'}")
    if not result.alerts:
        lines.append("  none")
        return
    for segment, alerts in _by_segment(result.alerts):
        first = alerts[0]
        lines.append(f"  {segment}: {len(alerts)} alert(s), first for window "
                     f"{_clock(first['window_start'])}-{_clock(first['window_end'])[11:]} UTC ({first['window']} window)")
        for alert in alerts:
            lines.append(
                f"    {alert['severity']}  {_clock(alert['window_start'])[11:]}-{_clock(alert['window_end'])[11:]}  "
                f"detractors {alert['detractors']}/{alert['responses']} = {100 * alert['detractor_share']:.1f}% "
                f"vs baseline {100 * alert['baseline_share']:.1f}% (+{alert['rise_pp']:.1f} pp, p={alert['p_value']:.1e}), "
                f"NPS {alert['nps']:+.0f} vs {alert['baseline_nps']:+.0f}, excess detractors {alert['excess_detractors']:.1f}"
            )


def _by_segment(alerts: Iterable[dict]) -> list[tuple[str, list[dict]]]:
    grouped: dict[str, list[dict]] = {}
    for alert in alerts:
        grouped.setdefault(alert["segment_id"], []).append(alert)
    return sorted(grouped.items(), key=lambda item: (item[1][0]["window_end"], item[0]))


def _clock(ms: int) -> str:
    """'2026-03-02 14:05' (UTC)."""
    return format_rfc3339_ms(ms).replace("T", " ")[:16]
