"""The packed in-memory forms of the per-segment state (docs/performance.md, memory): open slices' driver
breakdowns as one int per value, evidence values as one float64 array, the baseline as one float64 array, the
detector's rows as int32 offsets. Each must behave and store exactly as the plain form it replaced."""

from __future__ import annotations

import math
import random
from array import array
from typing import Any

import orjson
import pytest

from processors.baseline import HOURS, WINDOW_MS, BaselineSettings, HourlyBaseline, hour_of
from processors.nps import NpsCounts
from processors.spikes import MAX_DRIVER_VALUES, NOT_PENDING, OTHER_VALUE, Evidence, SpikeState
from processors.timeparse import DAY_MS, MINUTE_MS
from processors.windows import Breakdown, SegmentWindows, Slice, pack_breakdown

T0 = 20_000 * DAY_MS
KEYS = ("channel=app", "channel=web", "region=EU", "tier=gold", "touchpoint=a%7Cb")


def count_drivers(breakdown: Breakdown, drivers: tuple[str, ...], score: int) -> None:
    """The plain breakdown: one ``[answers, detractors]`` list per driver value."""
    detractor = 1 if score <= 6 else 0
    for key in drivers:
        row = breakdown.setdefault(key, [0, 0])
        row[0] += 1
        row[1] += detractor


def test_open_slice_counts_drivers_as_the_plain_breakdown_does() -> None:
    rng = random.Random(3)
    piece, plain, counts = Slice(), {}, NpsCounts()
    for _ in range(500):
        score = rng.randint(0, 10)
        drivers = tuple(rng.sample(KEYS, rng.randint(0, 3)))
        ref = ("e", "c", score, None, 5) if score <= 6 else None
        piece.add(score, ref, drivers)
        count_drivers(plain, drivers, score)
        counts.add(score)
    assert piece.breakdown == plain and list(piece.breakdown) == list(plain)  # same values, same order
    assert piece.counts == counts and piece.total == counts.total
    assert len(piece.answers) == counts.detractors


def test_open_slice_merges_and_round_trips_in_the_stored_format() -> None:
    piece = Slice(NpsCounts(2, 1, 3), [("e1", "c1", 3, "gold", 700)], {"region=EU": [6, 2]}, 1)
    piece.merge(Slice(NpsCounts(1, 0, 0), [("e2", "c2", 0, None, 0)], {"region=EU": [1, 1], "tier=gold": [1, 1]}))
    assert piece.breakdown == {"region=EU": [7, 3], "tier=gold": [1, 1]}
    stored = orjson.loads(orjson.dumps(piece.to_list()))
    assert stored == [[3, 1, 3], [["e1", "c1", 3, "gold", 700], ["e2", "c2", 0, None, 0]],
                      {"region=EU": [7, 3], "tier=gold": [1, 1]}, 1]
    assert Slice.from_list(stored) == piece
    empty = Slice()
    assert empty.answers == [] and empty.breakdown == {} and empty.to_list() == [[0, 0, 0], [], {}]
    assert empty.drivers is None and empty.refs is None  # nothing allocated for what a slice lacks


def test_windows_close_the_packed_slices_into_the_same_columns() -> None:
    windows = SegmentWindows()
    windows.add(T0 + 5, 3, ("e1", "c1", 3, None, 10), MINUTE_MS, ("channel=app",))
    windows.add(T0 + 7, 9, None, MINUTE_MS, ("channel=app", "tier=gold"))
    windows.add_slice(T0, Slice(NpsCounts(0, 1, 0), [], {"channel=web": [1, 0]}), MINUTE_MS)
    _, newly = windows.close(T0 + MINUTE_MS, "all", _settings())
    [(start, piece)] = newly
    assert start == T0 and piece.counts == NpsCounts(1, 1, 1)
    assert piece.breakdown == {"channel=app": [2, 1], "tier=gold": [1, 0], "channel=web": [1, 0]}
    assert windows.closed_slices() == [(T0, NpsCounts(1, 1, 1), (("e1", "c1", 3, None, 10),), 0)]


def _settings() -> Any:
    from processors.windows import WindowSettings, WindowSpec
    return WindowSettings((WindowSpec("5m", 5 * MINUTE_MS, 5 * MINUTE_MS),))


def test_evidence_values_accumulate_and_store_as_the_plain_dict() -> None:
    evidence = Evidence()
    assert evidence.values == {} and evidence.keys is None and evidence.rows is None
    evidence.add(T0, NpsCounts(3, 2, 5), pack_breakdown({"tier=gold": [4, 2], "region=EU": [10, 3]}), 0.3, 0.4)
    evidence.add(T0 + MINUTE_MS, NpsCounts(1, 0, 1), pack_breakdown({"tier=gold": [2, 1]}), 0.25, 0.4, 2)
    assert evidence.values == {"tier=gold": [6, 3, 4 * 0.3 + 2 * 0.25], "region=EU": [10, 3, 10 * 0.3]}
    assert all(type(v[0]) is int and type(v[1]) is int for v in evidence.values.values())
    stored = orjson.loads(orjson.dumps(evidence.to_list()))
    assert stored == [T0, 12, 4, 6, 10 * 0.3 + 2 * 0.25, 10 * 0.4 + 2 * 0.4,
                      {"tier=gold": [6, 3, 4 * 0.3 + 2 * 0.25], "region=EU": [10, 3, 3.0]}, 2]
    loaded = Evidence.from_list(stored)
    assert loaded == evidence and loaded.to_list() == evidence.to_list()
    twin = evidence.copy()
    twin.add(T0, NpsCounts(1, 0, 0), pack_breakdown({"tier=gold": [1, 1]}), 0.5, 0.5)
    assert twin != evidence and evidence.values["tier=gold"][0] == 6  # a copy shares nothing


def test_evidence_counts_values_beyond_the_cap_as_other() -> None:
    evidence = Evidence()
    breakdown = {f"store=s{i:04d}": [1, 1] for i in range(MAX_DRIVER_VALUES + 5)}
    evidence.add(T0, NpsCounts(1, 0, 0), pack_breakdown(breakdown), 0.2, 0.5)
    values = evidence.values
    assert len(values) == MAX_DRIVER_VALUES + 1 and values[f"store={OTHER_VALUE}"][:2] == [5, 5]
    assert list(values)[:MAX_DRIVER_VALUES] == list(breakdown)[:MAX_DRIVER_VALUES]


class PlainBaseline:
    """The baseline's update as it was with lists (before the single array): the reference."""

    def __init__(self) -> None:
        self.n, self.d, self.p = [0.0] * HOURS, [0.0] * HOURS, [0.0] * HOURS
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.window: list[float] | None = None
        self.dispersion = [0.0, 0.0, 0.0]

    def update(self, start: int, n: int, d: int, settings: BaselineSettings, promoters: int) -> None:
        window_start = start - start % WINDOW_MS
        if self.last_ms is None:
            self.first_ms = start
        else:
            if self.window is not None and self.window[0] != window_start:
                self.close_window()
            days = start // DAY_MS - self.last_ms // DAY_MS
            if days:
                factor = settings.decay**days
                for counts in (self.n, self.d, self.p):
                    for hour in range(HOURS):
                        counts[hour] *= factor
                a, b, v = self.dispersion
                self.dispersion = [a * factor, b * factor, v * (factor * factor)]
        hour = hour_of(start)
        if self.window is None:
            self.window = [window_start, 0, 0, self.d[hour] / self.n[hour] if self.n[hour] > 0.0 else -1.0,
                           self.n[hour]]
        self.window[1] += n
        self.window[2] += d
        self.n[hour] += n
        self.d[hour] += d
        self.p[hour] += promoters
        self.last_ms = start

    def close_window(self) -> None:
        assert self.window is not None
        _, n, d, q, hour_n = self.window
        self.window = None
        v = q * (1.0 - q)
        if n < 2 or not v > 0.0:
            return
        dev = d - n * q
        a, b, var = self.dispersion
        a += dev * dev - n * v - n * n * v / hour_n
        b += n * (n - 1) * v
        var += n * v + (2 * n * n - 6 * n) * (v * v)
        self.dispersion = [a, b, var]

    def to_list(self) -> list[Any]:
        return [self.n, self.d, self.first_ms, self.last_ms, self.p, self.window, self.dispersion]


def test_baseline_in_one_array_matches_the_plain_lists_exactly() -> None:
    rng, settings = random.Random(5), BaselineSettings(min_history=50)
    base, plain = HourlyBaseline(), PlainBaseline()
    at = T0 + 7 * MINUTE_MS
    for _ in range(3000):
        at += MINUTE_MS * rng.choice((1, 1, 2, 3, 7, 90))
        n = rng.randint(1, 12)
        d = rng.randint(0, n)
        p = rng.randint(0, n - d)
        base.update(at, n, d, settings, promoters=p)
        plain.update(at, n, d, settings, p)
        if rng.random() < 0.05:
            assert base.to_list() == plain.to_list()
            base = HourlyBaseline.from_list(orjson.loads(orjson.dumps(base.to_list())))  # and keeps going alike
    assert at - T0 > 3 * DAY_MS and base.to_list() == plain.to_list()
    assert orjson.dumps(base.to_list()) == orjson.dumps(plain.to_list())  # the stored bytes too
    assert base.sums() == (sum(plain.n), sum(plain.d), sum(plain.p))
    assert base.first_ms == plain.first_ms and base.last_ms == plain.last_ms
    assert isinstance(base.n, array) and base.n.tolist() == plain.n
    assert base == HourlyBaseline.from_list(base.to_list())


def test_new_baseline_reads_as_empty() -> None:
    base = HourlyBaseline()
    assert base.to_list() == [[0.0] * HOURS, [0.0] * HOURS, None, None, [0.0] * HOURS, None, [0.0, 0.0, 0.0]]
    assert base.history == 0.0 and base.traffic_per_window() == 0.0 and base.rho() == 0.0
    assert math.isnan(base.values[-1])  # no slice yet


def test_detector_rows_are_offsets_that_rebase_or_widen() -> None:
    state = SpikeState()
    state.append_row(T0, 10, 3, 5)
    kept = T0 + 10 * DAY_MS
    state.append_row(kept, 8, 1, NOT_PENDING)
    assert state.rows.typecode == "i" and state.row_base == T0 and state.rows.itemsize == 4
    assert state.row_list() == [[T0, 10, 3, 5], [kept, 8, 1, NOT_PENDING]]
    state.forget_before(kept)  # the first row is pending: kept
    assert len(state.row_list()) == 2
    state.learn_until(kept, BaselineSettings())
    state.forget_before(kept)
    assert state.row_list() == [[kept, 8, 1, NOT_PENDING]] and state.baseline.history == 10.0
    far = T0 + 30 * DAY_MS  # beyond int32 milliseconds of the base: rebased on the oldest row kept
    state.append_row(far, 1, 0, 1)
    assert state.rows.typecode == "i" and state.row_base == kept
    assert state.row_list() == [[kept, 8, 1, NOT_PENDING], [far, 1, 0, 1]]
    state.append_row(far + 30 * DAY_MS, 2, 1, 0)  # the kept rows span more than int32: widened to int64
    assert state.rows.typecode == "q" and state.row_list()[-1] == [far + 30 * DAY_MS, 2, 1, 0]
    assert state.recent_counts(far) == (3, 1)
    loaded = SpikeState.from_list(orjson.loads(orjson.dumps(state.to_list())))
    assert loaded.row_list() == state.row_list() and loaded.rows.typecode == "q"
    stored = orjson.loads(orjson.dumps(SpikeState.from_list(orjson.loads(orjson.dumps(
        SpikeState().to_list()))).to_list()))
    assert stored[3] == [] and stored[5] == []


@pytest.mark.parametrize("rows", [[], [[T0, 1, 0, NOT_PENDING]], [[T0, 1, 0, 1], [T0 + 60_000, 2**31, 0, 0]]])
def test_stored_rows_pack_back_to_what_they_were(rows: list[list[int]]) -> None:
    state = SpikeState()
    for row in rows:
        state.append_row(*row)
    assert SpikeState.from_list(state.to_list()).row_list() == rows == state.row_list()


def test_closed_columns_widen_rebase_and_keep_refs_apart() -> None:
    windows = SegmentWindows()
    refs = [("e1", "c1", 3, "gold", 10), ("e2", "c2", 0, None, 0)]
    later = T0 + 10 * DAY_MS
    windows._append_closed(T0, [1, 2, 3], refs[:1], 0)
    windows._append_closed(T0 + MINUTE_MS, [0, 0, 4], [], 0)
    windows._append_closed(later, [1, 0, 0], refs[1:], 1)
    assert windows.closed_starts.typecode == "i" and windows.closed_counts.typecode == "h"
    assert windows.closed_refs == [orjson.dumps([refs[0]]), b"", orjson.dumps([refs[1]])]
    assert windows.answers_between(T0, later + 1) == refs
    windows._prune(T0 + MINUTE_MS)  # drops the first slice and its refs
    assert windows.closed_ref_origin == len(orjson.dumps([refs[0]]))
    assert bytes(windows.closed_ref_data) == orjson.dumps([refs[1]])
    assert windows.answers_between(T0, later + 1) == refs[1:]
    assert windows.closed_slices() == [(T0 + MINUTE_MS, NpsCounts(0, 0, 4), (), 0),
                                       (later, NpsCounts(1, 0, 0), (refs[1],), 1)]
    windows._prune(later)
    windows._append_closed(T0 + 30 * DAY_MS, [40_000, 0, 0], [], 0)  # rebased starts, int64 counts
    assert windows.closed_starts.typecode == "i" and windows.closed_base == later
    assert windows.closed_counts.typecode == "q" and windows._sum(T0, T0 + 31 * DAY_MS)[0].detractors == 40_001
    windows._append_closed(T0 + 60 * DAY_MS, [1, 0, 0], [], 0)  # the kept slices span more than int32 ms
    assert windows.closed_starts.typecode == "q"
    assert orjson.dumps(windows.stored()) == orjson.dumps(windows.to_dict())  # refs as kept: the same bytes
    stored = orjson.loads(orjson.dumps(windows.to_dict()))
    assert [row[0] for row in stored["closed"]] == [later, T0 + 30 * DAY_MS, T0 + 60 * DAY_MS]
    loaded = SegmentWindows.from_dict(stored)
    assert loaded.closed_slices() == windows.closed_slices() and loaded.to_dict() == windows.to_dict()
    windows.forget_closed()
    assert windows.closed_slices() == [] and windows.closed_ref_origin == 0 and not windows.closed_ref_data


def test_untouched_cusums_and_evidence_are_not_built_and_store_as_before() -> None:
    state = SpikeState()
    state.baseline.update(T0, 5, 1, BaselineSettings())
    stored = orjson.loads(orjson.dumps(state.to_list()))
    assert state._cusums is None and state._evidence is None
    assert stored[1] == [[0.0, 0, 0], [0.0, 0, 0]] and stored[2] == [Evidence().to_list(), Evidence().to_list()]
    loaded = SpikeState.from_list(stored)
    assert loaded._cusums is None and loaded._evidence is None and loaded == state
    assert [c.s for c in loaded.cusums] == [0.0, 0.0] and loaded.evidence[1].since is None  # built when read
    assert loaded == state and loaded.to_list() == stored
    loaded.cusums[0].update_slice(3, 5, 0.2, 0.3)
    assert loaded != state
    again = SpikeState.from_list(orjson.loads(orjson.dumps(loaded.to_list())))
    assert again._cusums is not None and again == loaded
