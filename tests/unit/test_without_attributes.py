"""Answers segmented without customer attributes (the worker's Redis outage): a count per slice that travels
with the slice's counts, round-trips through the plain-data state (older state loads as zero), sums over each
window and over an alert's evidence, and is absent from every record when zero."""

from __future__ import annotations

import random

import orjson
from window_cases import DAY, MIN, SETTINGS, T0

from processors.config import Config
from processors.engine import Engine, SegmentAnswer, SegmentStage, SegmentState, aggregate_by_slice
from processors.events import SurveyResponse
from processors.nps import NpsCounts
from processors.retarget import Retargeter
from processors.spikes import DetectionSettings, Evidence, SpikeDetector, SpikeState
from processors.windows import SegmentWindows, Slice, pack_breakdown

KEY = "answers_without_attributes"


def counts(n: int, d: int = 0, p: int = 0) -> NpsCounts:
    return NpsCounts(detractors=d, passives=n - d - p, promoters=p)


def test_slice_round_trips_its_count_and_keeps_the_old_format_without_one() -> None:
    marked = Slice(counts(5, 1), [], {"region=EU": [5, 1]}, 3)
    assert Slice.from_list(orjson.loads(orjson.dumps(marked.to_list()))) == marked
    plain = Slice(counts(5, 1), [], {"region=EU": [5, 1]})
    assert len(plain.to_list()) == 3  # state without the count is written as before (older code loads it)
    old = [[1, 3, 1], [["e1", "c1", 2, "gold", 100]], {"region=EU": [5, 1]}]
    assert Slice.from_list(old).without_attributes == 0


def test_window_sums_the_counts_of_its_slices() -> None:
    windows = SegmentWindows()
    marked = {2: 4, 3: 6, 7: 5}  # minute -> answers without attributes (of 10 that minute)
    for minute in range(12):
        windows.add_slice(T0 + minute * MIN, Slice(counts(10, 2), [], None, marked.get(minute, 0)), MIN)
    results, _ = windows.close(T0 + 12 * MIN, "all", SETTINGS)
    by_window = {(r.window, r.start): r for r in results}
    assert by_window["5m", T0].without_attributes == 10
    assert by_window["5m", T0 + 5 * MIN].without_attributes == 5
    assert by_window["1h/5m", T0 - 50 * MIN].without_attributes == 15  # the hour ending T0+10m: minutes 0-9
    assert by_window["5m", T0].to_dict()[KEY] == 10
    assert by_window["5m", T0].counts.total == 50


def test_window_record_has_no_key_without_such_answers() -> None:
    windows = SegmentWindows()
    for minute in range(5):
        windows.add_slice(T0 + minute * MIN, Slice(counts(4)), MIN)
    results, _ = windows.close(T0 + 5 * MIN, "all", SETTINGS)
    assert results and all(KEY not in r.to_dict() and r.without_attributes == 0 for r in results)


def test_count_survives_a_checkpoint_mid_window() -> None:
    """Open and closed slices round-trip through the state: the window after the restore holds every count."""
    windows = SegmentWindows()
    for minute in range(3):
        windows.add_slice(T0 + minute * MIN, Slice(counts(2), [], None, 2), MIN)
    windows.close(T0 + 2 * MIN, "all", SETTINGS)  # minutes 0 and 1 closed, minute 2 open
    restored = SegmentWindows.from_dict(orjson.loads(orjson.dumps(windows.to_dict())))
    restored.add_slice(T0 + 2 * MIN, Slice(counts(3), [], None, 1), MIN)
    restored.add_slice(T0 + 4 * MIN, Slice(counts(1)), MIN)
    results, _ = restored.close(T0 + 5 * MIN, "all", SETTINGS)
    five = next(r for r in results if r.window == "5m")
    assert (five.counts.total, five.without_attributes) == (10, 7)


def test_old_segment_state_loads_with_no_such_answers() -> None:
    """A segment state checkpointed before the count existed (slices of 3, evidence of 7 elements) loads."""
    evidence = [T0, 10, 3, 4, 2.0, 4.0, {"touchpoint=web": [10, 3, 2.0]}]
    state = SegmentState().to_dict()
    state["windows"] = {"open": [[T0, [[3, 3, 4], [], {}]]], "closed": [], "closed_upto": T0, "late": 0}
    state["spikes"][2] = [evidence, evidence]
    loaded = SegmentState.from_dict(orjson.loads(orjson.dumps(state)))
    assert loaded.windows.open[T0].without_attributes == 0
    assert [e.without_attributes for e in loaded.spikes.evidence] == [0, 0]
    assert loaded.spikes.evidence[0].responses == 10


def test_evidence_round_trips_its_count() -> None:
    evidence = Evidence()
    evidence.add(T0, counts(10, 3), pack_breakdown({"touchpoint=web": [10, 3]}), 0.2, 0.5, 4)
    evidence.add(T0 + MIN, counts(10, 3), None, 0.2, 0.5)
    assert evidence.without_attributes == 4
    data = evidence.to_list()
    assert len(data) == 8 and Evidence.from_list(orjson.loads(orjson.dumps(data))) == evidence
    assert evidence.copy() == evidence
    assert len(Evidence().to_list()) == 7


def test_aggregate_by_slice_counts_every_answer_of_a_partial_batch() -> None:
    items = [SegmentAnswer(segment, T0 + k * 20_000, 3 + k % 7, None) for k in range(9) for segment in ("all", "region=EU")]
    partial = aggregate_by_slice(items, MIN, without_attributes=True)
    assert {key: a.without_attributes for key, a in partial.items()} == {key: a.total for key, a in partial.items()}
    assert sum(a.without_attributes for a in partial.values()) == 18
    assert all(a.without_attributes == 0 for a in aggregate_by_slice(items, MIN).values())


def _history(stage: SegmentStage, segment_id: str, days: int = 7, n: int = 20, share: float = 0.2) -> None:
    state = SpikeState()
    rng = random.Random(days)
    baseline = stage.settings.detection.baseline
    for minute in range(days * 24 * 60):
        d = sum(rng.random() < share for _ in range(n))
        state.baseline.update(T0 - days * DAY + minute * MIN, n, d, baseline, promoters=(n - d) // 2)
    stage.load(segment_id, SegmentState(spikes=state))


def test_alert_says_how_many_of_its_answers_were_without_attributes(default_config: Config) -> None:
    """A spike fed as slices, some marked: each alert event counts the marked answers from its onset on."""
    settings = default_config.engine
    stage = SegmentStage(settings, Retargeter(settings.campaigns))
    _history(stage, "all")
    rng = random.Random(5)
    marked: dict[int, int] = {}
    events = []
    for minute in range(180):
        start = T0 + minute * MIN
        share = 0.6 if 10 <= minute < 60 else 0.2
        d = sum(rng.random() < share for _ in range(20))
        without = 20 if 11 <= minute < 21 else 0  # Redis down for ten minutes of the spike, from before it opens
        marked[start] = without
        stage.add_slice("all", start, Slice(counts(20, d, (20 - d) // 2), [], {"touchpoint=web": [20, d]}, without))
        out = stage.advance(start + MIN)
        events += out.alerts
    kinds = [e.kind for e in events]
    assert "opened" in kinds and "resolved" in kinds
    for event in events:
        expected = sum(n for start, n in marked.items() if event.onset_at <= start < event.at)
        assert event.answers_without_attributes == expected
        assert event.to_dict().get(KEY, 0) == expected
    assert all(e.answers_without_attributes for e in events)


def test_detector_without_the_count_is_unchanged() -> None:
    """The count only rides along: the same slices with or without it give the same alerts otherwise."""
    def run(without: int) -> list[dict]:
        detector, state = SpikeDetector(DetectionSettings(segments=100)), SpikeState()
        rng = random.Random(3)
        for minute in range(7 * 24 * 60):
            d = sum(rng.random() < 0.2 for _ in range(10))
            state.baseline.update(T0 - 7 * DAY + minute * MIN, 10, d, DetectionSettings().baseline, promoters=(10 - d) // 2)
        events = []
        for minute in range(60):
            d = sum(rng.random() < (0.7 if minute >= 10 else 0.2) for _ in range(10))
            events += detector.observe("all", None, T0 + minute * MIN, counts(10, d), {}, [state], without)
        return [{k: v for k, v in e.to_dict().items() if k != KEY} for e in events]
    assert run(0) and run(0) == run(4)


def test_embedded_engine_never_marks_its_output(default_config: Config) -> None:
    """The embedded runner has no attribute store: no record carries the key (its output is unchanged)."""
    engine = Engine(default_config.engine)
    answers = [SurveyResponse(f"e{k}", f"c{k % 50}", k % 11, T0 + k * 10_000, channel="web", region="EU")
               for k in range(400)]
    out = engine.process_all(answers)
    assert out.windows
    assert not [r for r in out.windows if KEY in r.to_dict()]
    assert not [a for a in out.alerts if KEY in a.to_dict()]
