"""One readable line per alert event (schema 2), for `npspulse tail` and the replay summary."""

from __future__ import annotations

from typing import Any

from processors.timeparse import format_rfc3339_ms
from streams.slack_format import revenue_line


def clock(ms: int) -> str:
    """'2026-03-02 14:05' (UTC)."""
    return format_rfc3339_ms(ms).replace("T", " ")[:16]


def describe_alert(record: dict[str, Any]) -> str:
    """``opened sev-1 region=EU  since 14:02 (opened 14:09)  detractors 31/52 = 59.6% [46-72] vs 24.0% ...,
    revenue at risk EUR 12,345.05 (17 detractors)``"""
    kind = str(record.get("type", "alert.?")).removeprefix("alert.")
    times = f"since {clock(record['onset_at'])[11:]}"
    if kind == "opened":
        times += f" (opened {clock(record['at'])[11:]})"
    else:
        times += f", {kind} {clock(record['at'])[11:]}"
    revenue = revenue_line(record.get("revenue_at_risk"))
    drivers = ", ".join(f"{d['dimension']}={d['value']} (+{d['excess']:.0f})" for d in record.get("drivers", []))
    return (f"{kind:<8} {record['severity']} {record['segment_id']}  {times}  "
            f"detractors {record['detractors']}/{record['responses']} = {100 * record['detractor_share']:.1f}% "
            f"[{100 * record['share_low']:.0f}-{100 * record['share_high']:.0f}] vs baseline "
            f"{100 * record['baseline_share']:.1f}% ({record['rise_pp']:+.1f} pp), NPS {record['nps']:+.0f} vs "
            f"{record['baseline_nps']:+.0f}, excess detractors {record['excess_detractors']:.1f}"
            + (f", revenue at risk {revenue}" if revenue else "")
            + (f"; drivers {drivers}" if drivers else ""))
