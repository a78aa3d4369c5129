"""Event-time windows (processors.windows): emit once on close, boundaries, grace, lateness, hopping sums,
idle gaps, and plain-data state that round-trips mid-stream."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest
from window_cases import DAY, HOUR, MIN, SETTINGS, T0

from processors.nps import NpsCounts
from processors.windows import AnswerRef, LateAnswer, SegmentWindows, Slice, WindowResult

SEGMENT = "region=EU"


class Feed:
    """Drives one segment's windows the way the engine does: add, then close at max event time - grace."""

    def __init__(self, windows: SegmentWindows | None = None, max_seen: int | None = None) -> None:
        self.windows = windows if windows is not None else SegmentWindows()
        self.max_seen = max_seen
        self.results: list[WindowResult] = []
        self.accepted: list[tuple[int, int]] = []
        self.refused: list[int] = []

    @property
    def watermark(self) -> int:
        assert self.max_seen is not None
        return self.max_seen - SETTINGS.grace_ms

    def add(self, at: int, score: int = 8, ref: AnswerRef | None = None) -> list[WindowResult]:
        self.max_seen = at if self.max_seen is None else max(self.max_seen, at)
        try:
            self.windows.add(at, score, ref, SETTINGS.slice_ms)
        except LateAnswer:
            self.refused.append(at)
        else:
            self.accepted.append((at, score))
        return self.close(self.watermark)

    def close(self, watermark: int) -> list[WindowResult]:
        out, _ = self.windows.close(watermark, SEGMENT, SETTINGS)
        self.results.extend(out)
        return out

    def flush(self) -> list[WindowResult]:
        assert self.max_seen is not None
        return self.close(self.max_seen + SETTINGS.longest_ms + SETTINGS.slice_ms)


def keyed(results: list[WindowResult]) -> dict[tuple[str, int], list[int]]:
    return {(r.window, r.start): r.counts.to_list() for r in results}


def brute_force(answers: list[tuple[int, int]]) -> dict[tuple[str, int], list[int]]:
    """Every non-empty window of every spec, counted directly from the answers."""
    out: dict[tuple[str, int], list[int]] = {}
    for spec in SETTINGS.specs:
        ends = {at - at % spec.step_ms + spec.step_ms + k * spec.step_ms
                for at, _ in answers for k in range(spec.size_ms // spec.step_ms)}
        for end in sorted(ends):
            counts = NpsCounts()
            for at, score in answers:
                if end - spec.size_ms <= at < end:
                    counts.add(score)
            if counts.total:
                out[(spec.name, end - spec.size_ms)] = counts.to_list()
    return out


def test_window_is_emitted_once_when_the_watermark_passes_its_end() -> None:
    feed = Feed()
    for minute in range(5):
        assert feed.add(T0 + minute * MIN + 10_000, score=minute * 2) == []
    assert feed.add(T0 + 6 * MIN) == []            # watermark T0+4m: [T0, T0+5m) still open
    assert feed.add(T0 + 6 * MIN + 59_999) == []   # watermark T0+4m59.999s
    emitted = feed.add(T0 + 7 * MIN)               # watermark T0+5m: final
    assert [(r.window, r.start, r.end) for r in emitted] == [("5m", T0, T0 + 5 * MIN),
                                                             ("1h/5m", T0 + 5 * MIN - HOUR, T0 + 5 * MIN)]
    assert emitted[0].counts.to_list() == [4, 1, 0]  # scores 0, 2, 4, 6, 8
    assert emitted[0].segment_id == SEGMENT
    for extra in (T0 + 7 * MIN, T0 + 7 * MIN + 30_000, T0 + 8 * MIN):
        assert not any(r.start == T0 and r.window == "5m" for r in feed.add(extra))
    assert feed.close(T0 + 5 * MIN) == []  # a watermark that does not move emits nothing
    feed.flush()
    assert Counter((r.window, r.start) for r in feed.results).most_common(1)[0][1] == 1


def test_answer_exactly_at_a_boundary_belongs_to_the_next_window() -> None:
    feed = Feed()
    feed.add(T0 + 4 * MIN + 59_999, score=10)
    feed.add(T0 + 5 * MIN, score=0)
    feed.flush()
    got = keyed(feed.results)
    assert got[("5m", T0)] == [0, 0, 1]
    assert got[("5m", T0 + 5 * MIN)] == [1, 0, 0]


def test_out_of_order_answers_within_grace_are_counted_in_their_window() -> None:
    feed = Feed()
    feed.add(T0 + 4 * MIN + 50_000, score=9)
    feed.add(T0 + 6 * MIN + 30_000, score=9)  # watermark T0+4m30s: slice [4m, 5m) still open
    feed.add(T0 + 4 * MIN + 10_000, score=2)  # 2m20s behind, its slice is open: counted in [T0, T0+5m)
    feed.add(T0 + 6 * MIN + 59_000, score=9)  # watermark T0+4m59s
    feed.add(T0 + 3 * MIN + 59_000, score=1)  # slice [3m, 4m) closed? watermark rounds down to 4m -> yes
    assert feed.refused == [T0 + 3 * MIN + 59_000]
    feed.add(T0 + 4 * MIN + 30_000, score=3)  # slice [4m, 5m) still open
    assert feed.refused == [T0 + 3 * MIN + 59_000]
    feed.flush()
    got = keyed(feed.results)
    assert got[("5m", T0)] == [2, 0, 1]
    assert got[("5m", T0 + 5 * MIN)] == [0, 0, 2]


def test_late_answer_beyond_grace_raises_and_is_counted() -> None:
    feed = Feed()
    feed.add(T0 + 5 * MIN + 30_000, score=0)
    feed.add(T0 + 8 * MIN)  # watermark T0+6m: slices before 6m are closed
    assert feed.windows.late == 0
    with pytest.raises(LateAnswer) as caught:
        feed.windows.add(T0 + 5 * MIN + 59_000, 0, None, SETTINGS.slice_ms)
    assert caught.value.slice_start == T0 + 5 * MIN
    assert feed.windows.late == 1
    with pytest.raises(LateAnswer):
        feed.windows.add(T0, 0, None, SETTINGS.slice_ms)
    assert feed.windows.late == 2
    feed.windows.add(T0 + 6 * MIN, 0, None, SETTINGS.slice_ms)  # first open slice: accepted
    assert feed.windows.late == 2
    feed.flush()
    assert keyed(feed.results)[("5m", T0 + 5 * MIN)] == [2, 1, 0]  # the late answers are not in it


def test_hopping_windows_contain_the_right_sums() -> None:
    feed = Feed()
    answers = [(T0 + minute * MIN + 1_000, minute % 11) for minute in range(70)]
    for at, score in answers:
        feed.add(at, score)
    feed.flush()
    got = keyed(feed.results)
    assert got == brute_force(answers)
    hourly = {start: counts for (window, start), counts in got.items() if window == "1h/5m"}
    # The first hopping window holds the first 5 minutes; a full hour holds 60 answers.
    assert sum(hourly[T0 + 5 * MIN - HOUR]) == 5
    assert sum(hourly[T0]) == 60
    assert sum(hourly[T0 + 10 * MIN]) == 60
    assert sorted(hourly) == [T0 + k * 5 * MIN - HOUR for k in range(1, 26)]  # ends T0+5m .. T0+125m


def test_random_stream_matches_brute_force_and_emits_each_window_once() -> None:
    rng = random.Random(7)
    feed = Feed()
    times = sorted(T0 + rng.randrange(0, 3 * HOUR) for _ in range(600))
    # Arrival order: jitter of up to 90 s, inside the 2-minute grace.
    arrivals = sorted(times, key=lambda t: t + rng.randrange(0, 90_000))
    for at in arrivals:
        feed.add(at, rng.randrange(11))
    feed.flush()
    assert feed.refused == []
    assert keyed(feed.results) == brute_force(feed.accepted)
    assert len(feed.results) == len(keyed(feed.results))
    ends = [r.end for r in feed.results]
    assert ends == sorted(ends)


def test_idle_gap_emits_nothing_empty_and_keeps_pending_content() -> None:
    feed = Feed()
    feed.add(T0 + 1 * MIN, score=0)
    feed.add(T0 + 2 * MIN, score=10)
    feed.add(T0 + 4 * MIN + 59_000)  # watermark T0+2m59s: nothing final yet
    assert feed.results == []
    gap = T0 + 3 * DAY
    emitted = feed.add(gap, score=5)
    assert emitted, "the pending windows must be emitted when the watermark jumps"
    assert all(r.counts.total > 0 for r in emitted)
    assert all(r.end <= T0 + 5 * MIN + HOUR for r in emitted)
    got = keyed(emitted)
    assert got[("5m", T0)] == [1, 1, 1]
    hopping = [(start, counts) for (window, start), counts in got.items() if window == "1h/5m"]
    assert len(hopping) == 12
    assert all(counts == [1, 1, 1] for _, counts in hopping)
    feed.flush()
    assert keyed(feed.results)[("5m", gap - gap % (5 * MIN))] == [1, 0, 0]
    assert len(feed.results) == 1 + 12 + 1 + 12


def test_round_trip_mid_stream_gives_the_same_results() -> None:
    rng = random.Random(11)
    times = sorted(T0 + rng.randrange(0, 2 * HOUR) for _ in range(400))
    arrivals = [(at, rng.randrange(11), rng.random() < 0.3) for at in
                sorted(times, key=lambda t: t + rng.randrange(0, 60_000))]

    def ref(i: int, at: int, score: int, keep: bool) -> AnswerRef | None:
        return (f"e-{i}", f"c-{i % 17}", score, "gold" if i % 2 else None, 100 * i) if keep else None

    straight = Feed()
    for i, (at, score, keep) in enumerate(arrivals):
        straight.add(at, score, ref(i, at, score, keep))
    straight.flush()

    first = Feed()
    half = len(arrivals) // 2
    for i, (at, score, keep) in enumerate(arrivals[:half]):
        first.add(at, score, ref(i, at, score, keep))
    assert first.windows.open and first.windows.closed_slices(), "the snapshot must hold open and closed slices"
    data = orjson.loads(orjson.dumps(first.windows.to_dict()))
    restored = SegmentWindows.from_dict(data)
    assert restored.to_dict() == first.windows.to_dict()
    second = Feed(restored, first.max_seen)
    for i, (at, score, keep) in enumerate(arrivals[half:], start=half):
        second.add(at, score, ref(i, at, score, keep))
    second.flush()

    assert [r.to_dict() for r in first.results + second.results] == [r.to_dict() for r in straight.results]
    assert second.windows.to_dict() == straight.windows.to_dict()


def test_answers_between_returns_kept_refs() -> None:
    feed = Feed()
    detractor_a: AnswerRef = ("e-1", "c-1", 3, "gold", 62_050)
    detractor_b: AnswerRef = ("e-2", "c-2", 0, None, 0)
    detractor_c: AnswerRef = ("e-3", "c-3", 6, "silver", 15_000)
    feed.add(T0 + 1 * MIN, 3, detractor_a)
    feed.add(T0 + 2 * MIN, 9, None)  # not kept
    feed.add(T0 + 4 * MIN, 0, detractor_b)
    feed.add(T0 + 5 * MIN, 6, detractor_c)  # next window
    feed.add(T0 + 7 * MIN)  # watermark T0+5m: [T0, T0+5m) final
    assert feed.windows.answers_between(T0, T0 + 5 * MIN) == [detractor_a, detractor_b]
    restored = SegmentWindows.from_dict(orjson.loads(orjson.dumps(feed.windows.to_dict())))
    assert restored.answers_between(T0, T0 + 5 * MIN) == [detractor_a, detractor_b]
    assert restored.answers_between(T0 + 2 * MIN, T0 + 5 * MIN) == [detractor_b]
    # Slices that are still open are not returned.
    assert feed.windows.answers_between(T0 + 5 * MIN, T0 + 10 * MIN) == []


def test_state_is_plain_data() -> None:
    feed = Feed()
    feed.add(T0, 3, ("e-1", "c-1", 3, None, 0))
    feed.add(T0 + 4 * MIN)
    data = feed.windows.to_dict()
    assert orjson.loads(orjson.dumps(data)) == orjson.loads(orjson.dumps(SegmentWindows.from_dict(data).to_dict()))
    assert data["closed_upto"] == T0 + 2 * MIN
    assert [start for start, _ in data["closed"]] == [T0]
    assert [start for start, _ in data["open"]] == [T0 + 4 * MIN]


def test_state_from_before_answer_values_loads_with_value_zero() -> None:
    """Answer refs stored before they carried the customer's value load as value 0."""
    data = {"open": [], "closed": [[T0, [[1, 0, 0], [["e-1", "c-1", 3, "gold"]], {}]]], "closed_upto": T0 + MIN,
            "late": 0}
    assert SegmentWindows.from_dict(data).answers_between(T0, T0 + MIN) == [("e-1", "c-1", 3, "gold", 0)]


def test_closing_keeps_counts_and_refs_as_columns_and_drops_the_breakdown() -> None:
    windows = SegmentWindows()
    windows.add_slice(T0, Slice(NpsCounts(1, 0, 2), [("e-1", "c-1", 3, None, 0)], {"channel=app": [3, 1]}, 1), MIN)
    _, newly = windows.close(T0 + MIN, "all", SETTINGS)
    assert [(start, piece.breakdown) for start, piece in newly] == [(T0, {"channel=app": [3, 1]})]  # for the detector
    assert windows.closed_slices() == [(T0, NpsCounts(1, 0, 2), (("e-1", "c-1", 3, None, 0),), 1)]
    assert windows.to_dict()["closed"] == [[T0, [[1, 0, 2], [["e-1", "c-1", 3, None, 0]], {}, 1]]]


def test_closed_slices_load_as_columns_and_store_as_they_were() -> None:
    data = {"open": [[T0 + 2 * MIN, [[0, 1, 0], [], {"channel=app": [1, 0]}]]],
            "closed": [[T0, [[1, 0, 0], [["e-1", "c-1", 3, "gold", 5]], {}]], [T0 + MIN, [[0, 0, 4], [], {}, 2]]],
            "closed_upto": T0 + 2 * MIN, "late": 0}
    windows = SegmentWindows.from_dict(data)
    assert windows.closed_slices() == [(T0, NpsCounts(1, 0, 0), (("e-1", "c-1", 3, "gold", 5),), 0),
                                       (T0 + MIN, NpsCounts(0, 0, 4), (), 2)]
    assert windows.open[T0 + 2 * MIN].breakdown == {"channel=app": [1, 0]}
    assert orjson.loads(orjson.dumps(windows.to_dict())) == data


def test_pruning_drops_whole_rows_of_every_column() -> None:
    windows = SegmentWindows()
    for minute in range(70):  # more than the longest window (1 h) of slices
        windows.add_slice(T0 + minute * MIN, Slice(NpsCounts(minute % 3, 1, 0), [(f"e-{minute}", "c", 1, None, 0)]), MIN)
        windows.close(T0 + (minute + 1) * MIN, "all", SETTINGS)
    closed = windows.closed_slices()
    assert len(windows.closed_counts) == 4 * len(windows.closed_starts) == 4 * len(windows.closed_refs)
    assert closed[0][0] > T0 and closed[-1][0] == T0 + 69 * MIN
    assert all(counts == NpsCounts((start - T0) // MIN % 3, 1, 0) and refs[0][0] == f"e-{(start - T0) // MIN}"
               for start, counts, refs, _ in closed)
