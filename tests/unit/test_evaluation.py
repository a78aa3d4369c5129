"""Evaluation harness (streams.evaluation, streams.fleet_detector, streams.window_tests).

The guard that the harness measures npspulse's detector: the vectorised detector and the product's detector
(processors.spikes) raise identical alarms on a small random fleet. No timing or
rate assertions here (the harness prints those).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from processors.cusum import cached_threshold, fleet_arl0_answers
from processors.nps import NpsCounts
from processors.spikes import DetectionSettings as SpikeSettings
from processors.spikes import SpikeDetector, SpikeState
from processors.timeparse import DAY_MS, MINUTE_MS
from streams.evaluation import (
    EvalConfig,
    MinuteStream,
    alert_durations,
    cycle_hour_means,
    delay_summary,
    evaluate,
    history_day,
    single_threaded_blas,
)
from streams.evaluation_report import render, target_checks
from streams.fleet_detector import (
    DetectorSettings,
    FleetDetector,
    ThresholdTable,
    grid_index,
    round3_index,
)
from streams.window_tests import GRIDS, EpisodeCounter, WindowRules, calibrate, neg_log10_pvalue

T0 = 20_000 * DAY_MS


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> None:
    single_threaded_blas()


def test_vectorised_detector_raises_the_scalar_reference_alarms() -> None:
    size, group, rate = 16, 8, 10.0
    settings = DetectorSettings(fleet_segments=1)  # a tiny fleet budget: many alarms and resolutions
    rng = np.random.default_rng(12)
    fleet = FleetDetector(size, group, settings)
    detector = SpikeDetector(SpikeSettings(segments=settings.fleet_segments))
    segments = [SpikeState() for _ in range(size)]
    parents = [SpikeState() for _ in range(size // group)]  # the harness's parents take every answer

    def feed_parents(t: int, n: np.ndarray, d: np.ndarray) -> None:
        for g, parent in enumerate(parents):
            gn, gd = int(n[g * group:(g + 1) * group].sum()), int(d[g * group:(g + 1) * group].sum())
            if gn:
                parent.baseline.update(t, gn, gd, settings.baseline)

    for day in range(28):  # overdispersed windows, so that thresholds are raised for some segments
        n_day, d_day = history_day(rng, "overdispersed" if day % 2 else "independent", rate, size)
        for w in range(288):
            t = T0 + day * DAY_MS + w * 5 * MINUTE_MS + (3 if w % 2 else 4) * MINUTE_MS
            n, d = n_day[w], d_day[w]
            fleet.feed_history(t, n, d)
            for i, seg in enumerate(segments):
                if n[i]:
                    seg.baseline.update(t, int(n[i]), int(d[i]), settings.baseline)
            feed_parents(t, n, d)
    start = T0 + 28 * DAY_MS
    onset = np.where(np.arange(size) % 3 == 0, rng.integers(60, 600, size), 10**9)
    stream = MinuteStream(rng, "overdispersed", rate, size, onset=onset, shift=0.2)
    opened, resolved = [], []
    for m in range(900):
        t = start + m * MINUTE_MS
        n, d = stream.minute(m)
        if m > 700:  # spikes over: alerts resolve
            d = np.minimum(d, n // 4)
        fleet.step(t, n, d)
        for i, seg in enumerate(segments):
            if not n[i]:
                continue
            counts = NpsCounts(detractors=int(d[i]), passives=int(n[i] - d[i]))
            for event in detector.observe(f"s={i}", "p", t, counts, {}, [seg, parents[i // group]]):
                if event.kind == "opened":
                    assert seg.alert is not None
                    onset_answer = seg.cusums[seg.alert.design].last_zero + 1
                    opened.append((i, t, seg.alert.design, onset_answer, event.severity == "sev-1"))
                elif event.kind == "resolved":
                    resolved.append((i, t))
        feed_parents(t, n, d)
    log = fleet.log.opened()
    vector_opened = sorted(zip(log["segment"].tolist(), log["slice_ms"].tolist(), log["cusum"].tolist(),
                               log["onset"].tolist(), log["sev1"].tolist(), strict=True))
    res_seg, res_ms = fleet.log.resolved()
    assert len(opened) >= 10 and len(resolved) >= 5  # the comparison exercises alarms and resolutions
    assert vector_opened == sorted(opened)
    assert sorted(zip(res_seg.tolist(), res_ms.tolist(), strict=True)) == sorted(resolved)
    assert {x[4] for x in opened} == {True, False}  # both severities compared
    scalar_s = np.array([[c.s for c in seg.cusums] for seg in segments]).T
    np.testing.assert_allclose(fleet.cusum.s, scalar_s, rtol=0, atol=1e-9)
    for seg in segments:  # the scalar detector learns queued slices lazily, at its next slice: catch up
        seg.learn_until(t - 60 * MINUTE_MS, settings.baseline)
    assert all((np.array(seg.baseline.n) == fleet.baseline.n[:, i]).all() for i, seg in enumerate(segments))
    rho = fleet.baseline.rho(np.arange(size))
    assert rho.tolist() == [seg.baseline.rho(settings.baseline) for seg in segments]
    assert (rho > 0.0).sum() >= size // 2  # the inflated thresholds were compared too


def test_threshold_table_keys_match_cached_threshold() -> None:
    rnd = random.Random(3)
    arl0 = np.array([fleet_arl0_answers(rnd.uniform(1.5, 60), 10, 1.0) for _ in range(40)] + [2.0**17, 2.0**17 * 1.0000001])
    q0 = np.array([rnd.uniform(0.15, 0.35) for _ in range(40)] + [0.2505, 0.2495])
    q1 = np.minimum(q0 + 0.10, 0.99)
    for i in range(q0.size):  # the Python definitions, including ties
        assert round3_index(q0[i:i + 1])[0] == round(round(float(q0[i]), 3) * 1000)
        k = math.ceil(16 * math.log2(arl0[i]) - 1e-9)
        assert grid_index(arl0[i:i + 1])[0] == (k + 1 if 2.0 ** (k / 16) < arl0[i] else k)
    table = ThresholdTable(0.10)
    h = table.lookup(arl0[:6], q0[:6], q1[:6])
    expected = [cached_threshold(float(a), float(b), float(c)) for a, b, c in zip(arl0[:6], q0[:6], q1[:6], strict=True)]
    assert h.tolist() == expected
    assert table.lookup(arl0[:6], q0[:6], q1[:6]).tolist() == h.tolist()  # memoised
    # m = 400 gave lattice steps 120 and 60 here (a common factor), on which the threshold search diverged
    assert 5.0 < cached_threshold(2.0 ** (210 / 16), 0.287, 0.387) < 5.5


def test_quick_run_end_to_end_detects_an_obvious_spike() -> None:
    config = EvalConfig.quick()
    results = evaluate(config)
    (group,) = results["groups"]
    (spike,) = group["spikes"]
    assert spike["shift"] == pytest.approx(0.40)
    npspulse = spike["detectors"]["npspulse"]
    assert npspulse["censored"] == 0 and npspulse["detected"] == spike["instances"] - spike["excluded"]
    assert npspulse["p90"] < 100  # +40 pp at r = 10: a few dozen answers
    null = group["nulls"]["independent"]
    for rule, cal in null["calibration"].items():
        assert cal["alarms"] <= null["alarms"], rule  # calibrated at or under npspulse's false alarms
    report = render(results)
    assert "## Targets" in report and "| 10 | +40 pp | 10 |" in report
    assert {verdict for _, verdict, _ in target_checks(results)} <= {"met", "missed", "inconclusive"}
    (batch,) = results["batching"]
    assert batch["instances"] > 0 and batch["per_slice"] > 0


def test_calibration_picks_a_threshold_at_or_under_the_target() -> None:
    rng = np.random.default_rng(4)
    grid = GRIDS["test-5m"]
    counter = EpisodeCounter(grid, 500)
    for _ in range(300):
        counter.add(rng.exponential(1.0, 500) + 0.5)
    counts = counter.counts()
    for target in (0, 3, 40, 1000):
        cal = calibrate(grid, counts, target)
        if math.isinf(cal.threshold):
            assert counts[-1] > target
            continue
        i = int(np.searchsorted(grid, cal.threshold))
        assert cal.alarms == counts[i] <= target
        assert (counts[i:] <= target).all()
        assert i == 0 or counts[i - 1] > target  # the lowest such threshold


def test_episode_counter_counts_runs_of_alarming_windows() -> None:
    grid = np.array([1.0, 2.0, 3.0])
    counter = EpisodeCounter(grid, 1)
    for value in (0.0, 2.5, 2.5, 0.5, 3.0, 1.5, 0.0):
        counter.add(np.array([value]))
    # >= 1: runs (2.5, 2.5) and (3.0, 1.5): 2; >= 2: (2.5, 2.5) and (3.0): 2; >= 3: (3.0): 1
    assert counter.counts().tolist() == [2, 2, 1]
    assert counter.count_at(2.0) == 2 and counter.count_at(9.0) == 0


def test_window_rules_statistics() -> None:
    rules = WindowRules(2)
    for _ in range(5):
        rules.add(np.array([0, 1]), np.array([2, 1]), np.array([1, 0]), np.array([0.25, 0.25]))
    stats = rules.close()
    assert stats["fixed"][0] == pytest.approx(0.5 - 0.25)  # 10 answers, 5 detractors
    assert stats["fixed"][1] == -np.inf  # 5 answers < 10
    p = sum(math.comb(10, k) * 0.25**k * 0.75 ** (10 - k) for k in range(5, 11))
    assert stats["test-5m"][0] == pytest.approx(-math.log10(p))
    assert stats["test-1h"][0] == pytest.approx(-math.log10(p))
    assert neg_log10_pvalue(np.array([2]), np.array([10]), np.array([0.25]))[0] == 0.0  # below the mean


def test_streams_have_the_intended_shares() -> None:
    rng = np.random.default_rng(5)
    n, d = history_day(rng, "daily-cycle", 50.0, 2000)
    n, d = n.reshape(24, 12, -1).sum(axis=1), d.reshape(24, 12, -1).sum(axis=1)
    share = d.sum(axis=1) / n.sum(axis=1)
    np.testing.assert_allclose(share, cycle_hour_means(), atol=0.005)
    assert cycle_hour_means().mean() == pytest.approx(0.25)
    stream = MinuteStream(rng, "overdispersed", 50.0, 4000)
    counts = np.array([stream.minute(m) for m in range(5)])  # one window: shared share per segment
    n5, d5 = counts[:, 0].sum(axis=0), counts[:, 1].sum(axis=0)
    assert d5.sum() / n5.sum() == pytest.approx(0.25, abs=0.01)
    binomial_var = (0.25 * 0.75 / n5).mean()
    assert np.var(d5 / n5) > 1.1 * binomial_var  # overdispersed: 1 + 49/201 = 1.24x at 50 answers


def test_alert_durations_pair_openings_with_resolutions() -> None:
    seg = np.array([1, 0, 1])
    opened = np.array([0, 5, 100]) * MINUTE_MS
    durations, unresolved = alert_durations(seg, opened, np.array([1, 0]), np.array([40, 65]) * MINUTE_MS)
    assert sorted(durations.tolist()) == [40.0, 60.0] and unresolved == 1


def test_delay_summary_censoring() -> None:
    full = delay_summary(np.array([10, 20, 30]), np.array([1, 2, 3]), np.array([]), np.array([]), memoryless=True)
    assert full["mean"] == 20 and full["estimate"] == "empirical"
    cens = delay_summary(np.array([10, 20]), np.array([1, 2]), np.array([90]), np.array([9]), memoryless=True)
    assert cens["mean"] == 60 and cens["estimate"] == "exposure"  # (10 + 20 + 90) answers / 2 detections
    lower = delay_summary(np.array([10, 20]), np.array([1, 2]), np.array([90]), np.array([9]), memoryless=False)
    assert lower["mean"] == 15 and lower["estimate"] == "lower bound"
