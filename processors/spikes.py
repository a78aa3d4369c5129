"""Detractor-spike detection per segment on closed windows.

For each closed detection window the detector compares the window's detractor share with the segment's
trailing baseline: an exponentially weighted sum of earlier windows (half-life configurable), so state is
O(1) per segment. A window alerts when all hold:
- it has at least ``min_responses`` answers and the baseline at least ``min_baseline_responses``;
- the rise over the baseline share is at least ``min_rise`` (no alert on a statistically certain 1-pp
  drift of a huge segment);
- the one-sided exact binomial test P(X >= d | n, p0) is at most ``alpha`` (so 3 answers can never alert);
- the segment is not in cooldown after an earlier alert.
While a window is significant (alerting or suppressed by cooldown) the baseline is frozen, so an incident
does not teach the baseline that it is normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.events import SegmentAlert
from processors.nps import binomial_upper_tail
from processors.timeparse import HOUR_MS, MINUTE_MS
from processors.windows import WindowResult

RULE = "detractor-spike.binomial"


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    window: str = "5m"
    min_responses: int = 10
    alpha: float = 1e-5
    min_rise: float = 0.05
    baseline_halflife_ms: int = 6 * HOUR_MS
    min_baseline_responses: int = 200
    cooldown_ms: int = 30 * MINUTE_MS


@dataclass(slots=True)
class SpikeState:
    """Exponentially weighted baseline counts as of ``updated_at``, and the end of any cooldown."""

    detractors: float = 0.0
    promoters: float = 0.0
    responses: float = 0.0
    updated_at: int | None = None
    cooldown_until: int | None = None

    def to_list(self) -> list[Any]:
        return [self.detractors, self.promoters, self.responses, self.updated_at, self.cooldown_until]

    @classmethod
    def from_list(cls, data: list[Any]) -> SpikeState:
        return cls(*data)


def severity_for(rise: float) -> str:
    """sev-1 for a rise of 20 pp or more, sev-2 for 10 pp or more, sev-3 otherwise."""
    if rise >= 0.20:
        return "sev-1"
    return "sev-2" if rise >= 0.10 else "sev-3"


class SpikeDetector:
    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings

    def evaluate(self, state: SpikeState, result: WindowResult) -> SegmentAlert | None:
        """Test one closed window against the baseline, update the state, and return an alert or None."""
        settings = self.settings
        self._decay(state, result.end)
        counts = result.counts
        n, d = counts.total, counts.detractors
        significant, alert = False, None
        if n >= settings.min_responses and state.responses >= settings.min_baseline_responses:
            baseline = (state.detractors + 0.5) / (state.responses + 1.0)
            share = d / n
            rise = share - baseline
            if rise >= settings.min_rise:
                p_value = binomial_upper_tail(d, n, baseline)
                significant = p_value <= settings.alpha
                in_cooldown = state.cooldown_until is not None and result.end <= state.cooldown_until
                if significant and not in_cooldown:
                    alert = self._alert(state, result, baseline, rise, p_value)
                    state.cooldown_until = result.end + settings.cooldown_ms
        if not significant:
            state.detractors += d
            state.promoters += counts.promoters
            state.responses += n
        return alert

    def _decay(self, state: SpikeState, now: int) -> None:
        if state.updated_at is not None and now > state.updated_at:
            factor = 0.5 ** ((now - state.updated_at) / self.settings.baseline_halflife_ms)
            state.detractors *= factor
            state.promoters *= factor
            state.responses *= factor
        state.updated_at = now if state.updated_at is None else max(now, state.updated_at)

    def _alert(self, state: SpikeState, result: WindowResult, baseline: float, rise: float,
               p_value: float) -> SegmentAlert:
        counts = result.counts
        baseline_nps = 100.0 * (state.promoters - state.detractors) / state.responses
        return SegmentAlert(
            segment_id=result.segment_id, window=result.window, window_start=result.start,
            window_end=result.end, rule=RULE, severity=severity_for(rise), responses=counts.total,
            detractors=counts.detractors, promoters=counts.promoters,
            detractor_share=counts.detractors / counts.total, baseline_share=baseline,
            baseline_responses=round(state.responses), rise_pp=100.0 * rise, p_value=p_value, nps=counts.nps,
            baseline_nps=baseline_nps, excess_detractors=counts.detractors - counts.total * baseline,
        )

