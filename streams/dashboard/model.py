"""The data the dashboard renders, the same for the live page (``/api/segments?history=N``) and the static
replay report: per segment its recent windows as compact points and a trend (the last hour against the rest)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from processors.nps import NpsCounts
from processors.timeparse import HOUR_MS

# [window_start, window_end, responses, detractors, promoters, nps, nps_low, nps_high] (epoch ms, counts, points)
POINT_FIELDS = ("start", "end", "responses", "detractors", "promoters", "nps", "nps_low", "nps_high")
RECENT_MS = HOUR_MS


def _finite(value: float, digits: int = 2) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def history_points(windows: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    """Closed windows (dicts as on the windows topic) as compact points, oldest first; a window without
    answers has no NPS and no interval."""
    points = []
    for window in sorted(windows, key=lambda w: w["window_start"]):
        nps, low, high = window.get("nps"), window.get("nps_low"), window.get("nps_high")
        if not window["responses"]:  # no NPS; its interval would span the whole scale
            nps = low = high = None
        points.append([window["window_start"], window["window_end"], window["responses"], window["detractors"],
                       window["promoters"], None if nps is None else round(nps, 2),
                       None if low is None else round(low, 2), None if high is None else round(high, 2)])
    return points


def _pooled(points: Iterable[list[Any]]) -> NpsCounts:
    counts = NpsCounts()
    for _, _, responses, detractors, promoters, *_ in points:
        counts.merge(NpsCounts(detractors, responses - detractors - promoters, promoters))
    return counts


def trend(points: list[list[Any]], recent_ms: int = RECENT_MS) -> dict[str, Any]:
    """NPS of the windows ending in the last ``recent_ms`` of the history (pooled, with its 95% interval),
    the NPS of the earlier windows, and the change between them (None without answers on either side)."""
    if not points:
        return {"recent_ms": recent_ms, "responses": 0, "nps": None, "nps_low": None, "nps_high": None,
                "earlier_responses": 0, "earlier_nps": None, "change": None}
    cut = points[-1][1] - recent_ms
    recent = _pooled(p for p in points if p[0] >= cut)
    earlier = _pooled(p for p in points if p[0] < cut)
    low, high = recent.interval()
    change = recent.nps - earlier.nps if recent.total and earlier.total else math.nan
    return {"recent_ms": recent_ms, "responses": recent.total, "nps": _finite(recent.nps),
            "nps_low": _finite(low) if recent.total else None, "nps_high": _finite(high) if recent.total else None,
            "earlier_responses": earlier.total, "earlier_nps": _finite(earlier.nps), "change": _finite(change)}


def with_history(row: dict[str, Any], windows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """An API segment row with its ``history`` points and ``trend`` added."""
    points = history_points(windows)
    return {**row, "history": points, "trend": trend(points)}
