"""Detractor-spike detection (processors.spikes) on closed windows."""

from __future__ import annotations

import random

import orjson
import pytest

from processors.events import SegmentAlert
from processors.nps import NpsCounts, binomial_upper_tail
from processors.spikes import RULE, DetectionSettings, SpikeDetector, SpikeState, severity_for
from processors.windows import WindowResult

MIN = 60_000
HOUR = 60 * MIN
T0 = 20_416 * 24 * HOUR  # 2025-11-24T00:00:00Z
WINDOW = 5 * MIN
SEGMENT = "region=EU"
SETTINGS = DetectionSettings(window="5m", min_responses=10, alpha=1e-4, min_rise=0.05,
                             baseline_halflife_ms=6 * HOUR, min_baseline_responses=200, cooldown_ms=30 * MIN)


def window(index: int, detractors: int, responses: int, promoters: int = 0) -> WindowResult:
    start = T0 + index * WINDOW
    counts = NpsCounts(detractors=detractors, passives=responses - detractors - promoters, promoters=promoters)
    return WindowResult(SEGMENT, "5m", start, start + WINDOW, counts)


def warmed_up(windows: int = 20) -> tuple[SpikeDetector, SpikeState]:
    """A detector whose baseline has seen ``windows`` windows of 50 answers at a 20 % detractor share."""
    detector, state = SpikeDetector(SETTINGS), SpikeState()
    for index in range(windows):
        assert detector.evaluate(state, window(index, 10, 50, promoters=25)) is None
    return detector, state


def decay(minutes: int) -> float:
    return 0.5 ** (minutes * MIN / SETTINGS.baseline_halflife_ms)


def test_warm_up_builds_the_baseline() -> None:
    _, state = warmed_up()
    assert state.responses >= SETTINGS.min_baseline_responses
    assert state.detractors / state.responses == pytest.approx(0.2)
    assert state.promoters / state.responses == pytest.approx(0.5)
    assert state.updated_at == T0 + 20 * WINDOW


@pytest.mark.parametrize(("detractors", "responses"), [(3, 3), (9, 9)])
def test_no_alert_below_min_responses(detractors: int, responses: int) -> None:
    detector, state = warmed_up()
    before = state.responses
    assert detector.evaluate(state, window(20, detractors, responses)) is None
    # Not tested, so not significant: the window joins the baseline.
    assert state.responses == pytest.approx(before * decay(5) + responses)


def test_no_alert_without_enough_baseline() -> None:
    detector, state = SpikeDetector(SETTINGS), SpikeState()
    assert detector.evaluate(state, window(0, 50, 50)) is None  # no baseline at all
    detector, state = warmed_up(windows=3)  # about 149 weighted answers < 200
    assert state.responses < SETTINGS.min_baseline_responses
    assert detector.evaluate(state, window(3, 45, 50)) is None


def test_no_alert_for_a_rise_below_min_rise() -> None:
    # A huge window, 4 pp above the baseline: statistically certain, but below the 5 pp floor.
    detector, state = warmed_up()
    assert detector.evaluate(state, window(20, 2_400, 10_000)) is None


def test_clear_spike_alerts_with_correct_fields() -> None:
    detector, state = warmed_up()
    responses_before = state.responses * decay(5)
    baseline = (state.detractors * decay(5) + 0.5) / (responses_before + 1.0)
    alert = detector.evaluate(state, window(20, 30, 50, promoters=5))
    assert isinstance(alert, SegmentAlert)
    assert alert.segment_id == SEGMENT
    assert (alert.window, alert.window_start, alert.window_end) == ("5m", T0 + 20 * WINDOW, T0 + 21 * WINDOW)
    assert alert.rule == RULE
    assert (alert.responses, alert.detractors, alert.promoters) == (50, 30, 5)
    assert alert.detractor_share == pytest.approx(0.6)
    assert alert.baseline_share == pytest.approx(baseline)
    assert alert.baseline_share == pytest.approx(0.2, abs=0.002)
    assert alert.rise_pp == pytest.approx(100 * (0.6 - baseline))
    assert alert.severity == "sev-1"
    assert alert.p_value == pytest.approx(binomial_upper_tail(30, 50, baseline))
    assert alert.p_value <= SETTINGS.alpha
    assert alert.nps == pytest.approx(-50.0)
    assert alert.baseline_nps == pytest.approx(30.0)
    assert alert.baseline_responses == round(responses_before)
    assert alert.excess_detractors == pytest.approx(30 - 50 * baseline)


def test_moderate_spike_is_sev_2() -> None:
    detector, state = warmed_up()
    alert = detector.evaluate(state, window(20, 124, 400))  # 31 %: +11 pp over 20 %
    assert alert is not None
    assert 10 <= alert.rise_pp < 20
    assert alert.severity == "sev-2"


@pytest.mark.parametrize(("rise", "severity"), [
    (0.35, "sev-1"), (0.20, "sev-1"), (0.1999, "sev-2"), (0.10, "sev-2"), (0.0999, "sev-3"), (0.05, "sev-3"),
])
def test_severity_thresholds(rise: float, severity: str) -> None:
    assert severity_for(rise) == severity


def test_cooldown_suppresses_a_repeat_and_allows_one_after() -> None:
    detector, state = warmed_up()
    first = detector.evaluate(state, window(20, 30, 50))
    assert first is not None
    assert state.cooldown_until == first.window_end + SETTINGS.cooldown_ms
    assert detector.evaluate(state, window(21, 30, 50)) is None  # 5 minutes later: within cooldown
    assert detector.evaluate(state, window(24, 30, 50)) is None  # 20 minutes later: within cooldown
    later = detector.evaluate(state, window(27, 30, 50))  # 35 minutes after the first alert's end
    assert later is not None
    assert later.window_start == T0 + 27 * WINDOW
    assert later.id != first.id


def test_baseline_is_frozen_during_significant_windows() -> None:
    detector, state = warmed_up()
    before = SpikeState(*state.to_list())
    assert detector.evaluate(state, window(20, 30, 50)) is not None
    # Only the time decay applies: the alerting window's answers are not added to the baseline.
    assert state.responses == pytest.approx(before.responses * decay(5))
    assert state.detractors == pytest.approx(before.detractors * decay(5))
    assert state.promoters == pytest.approx(before.promoters * decay(5))
    # Significant but suppressed by the cooldown: frozen as well.
    mid = SpikeState(*state.to_list())
    assert detector.evaluate(state, window(21, 30, 50)) is None
    assert state.responses == pytest.approx(mid.responses * decay(5))
    assert state.detractors == pytest.approx(mid.detractors * decay(5))
    # A normal window joins the baseline again.
    calm = SpikeState(*state.to_list())
    assert detector.evaluate(state, window(22, 10, 50)) is None
    assert state.responses == pytest.approx(calm.responses * decay(5) + 50)
    assert state.detractors == pytest.approx(calm.detractors * decay(5) + 10)


def test_state_round_trips_as_plain_data() -> None:
    detector, state = warmed_up()
    detector.evaluate(state, window(20, 30, 50))
    restored = SpikeState.from_list(orjson.loads(orjson.dumps(state.to_list())))
    assert restored == state
    # The restored state behaves the same.
    again = SpikeState.from_list(state.to_list())
    assert detector.evaluate(restored, window(27, 30, 50)) == detector.evaluate(again, window(27, 30, 50))


def test_stationary_null_stream_rarely_alerts() -> None:
    rng = random.Random(424242)
    detector, state = SpikeDetector(SETTINGS), SpikeState()
    alerts = 0
    for index in range(2000):
        detractors = promoters = 0
        for _ in range(50):
            u = rng.random()
            if u < 0.25:
                detractors += 1
            elif u < 0.65:
                promoters += 1
        if detector.evaluate(state, window(index, detractors, 50, promoters)) is not None:
            alerts += 1
    assert state.responses >= SETTINGS.min_baseline_responses  # the test was live for almost every window
    assert alerts <= 3
