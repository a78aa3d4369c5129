"""Event-time windows per segment: tumbling and hopping, with a watermark, a grace period, and emit on close.

Semantics follow Kafka Streams' suppressed windows:
- time is event time; windows are half-open ``[start, end)`` aligned to the epoch; an answer at exactly
  ``end`` belongs to the next window;
- the caller's watermark is ``max event time seen - grace``; a window is final and emitted once the
  watermark reaches its end, exactly once (window ends only move forward);
- an answer whose slice is already closed is late: it is refused here, and the caller counts and reports it.

Answers are added to 1-minute (configurable) **slices**; windows are sums of closed slices. Closed slices
are fed in event-time order whatever the arrival order, so everything decided from them is deterministic.
A segment's whole state is plain data (``to_dict``/``from_dict``) so it can live in a changelogged table.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.nps import NpsCounts
from processors.timeparse import MINUTE_MS

# (event_id, customer_id, score, tier, value in cents): what in-spike campaigns and an alert's revenue at risk
# need to know about one answer; the value is the customer's purchases over the profile horizon (90 days) in the
# base currency, as of the answer's day.
AnswerRef = tuple[str, str, int, str | None, int]
# "dimension=value" -> [answers, detractors]: a slice's answers broken down by their attribute values, so an
# alert can say which values carry a spike.
Breakdown = dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A window family: tumbling when ``step_ms == size_ms``, hopping when smaller."""

    name: str
    size_ms: int
    step_ms: int

    @property
    def tumbling(self) -> bool:
        return self.step_ms == self.size_ms


@dataclass(frozen=True, slots=True)
class WindowSettings:
    specs: tuple[WindowSpec, ...]
    slice_ms: int = MINUTE_MS
    grace_ms: int = 2 * MINUTE_MS

    @property
    def longest_ms(self) -> int:
        return max(spec.size_ms for spec in self.specs)

    def spec(self, name: str) -> WindowSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def count_drivers(breakdown: Breakdown, drivers: tuple[str, ...], score: int) -> None:
    """Count one answer with this (validated, 0-10) score under each of its driver values."""
    detractor = 1 if score <= 6 else 0  # a detractor, as in ``classify``
    for key in drivers:
        row = breakdown.get(key)
        if row is None:
            breakdown[key] = [1, detractor]
        else:
            row[0] += 1
            row[1] += detractor


@dataclass(slots=True)
class Slice:
    """One slice's counts, kept answer refs and driver breakdown. Open slices take answers; a closed slice is
    sealed (:meth:`seal`): its refs become an exact-size tuple and its breakdown (read by the detector at the
    close) is dropped, which saves about 120 bytes per closed slice over a list and an empty dict."""

    counts: NpsCounts = field(default_factory=NpsCounts)
    answers: list[AnswerRef] | tuple[AnswerRef, ...] = field(default_factory=list)
    breakdown: Breakdown | None = field(default_factory=dict)  # None once sealed
    # of ``counts``, the answers segmented without the customer's stored attributes (their store was unreachable)
    without_attributes: int = 0

    def seal(self) -> None:
        """Closed for good: no more answers, breakdown no longer needed."""
        self.answers = tuple(self.answers)
        self.breakdown = None

    def merge_breakdown(self, breakdown: Breakdown) -> None:
        mine = self.breakdown
        assert mine is not None, "a sealed slice takes no answers"
        for key, (n, d) in breakdown.items():
            row = mine.get(key)
            if row is None:
                mine[key] = [n, d]
            else:
                row[0] += n
                row[1] += d

    def to_list(self) -> list[Any]:
        data = [self.counts.to_list(), [list(ref) for ref in self.answers],
                {} if self.breakdown is None else self.breakdown]
        if self.without_attributes:  # only then: state without the count stays as it was (and loads in older code)
            data.append(self.without_attributes)
        return data

    @classmethod
    def from_list(cls, data: list[Any]) -> Slice:
        breakdown = {key: [int(n), int(d)] for key, (n, d) in data[2].items()} if len(data) > 2 else {}
        refs = [tuple(ref) if len(ref) > 4 else (*ref, 0) for ref in data[1]]  # state from before values: 0
        without = int(data[3]) if len(data) > 3 else 0  # state from before the count: 0
        return cls(NpsCounts.from_list(data[0]), refs, breakdown, without)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class WindowResult:
    """The final result of one window of one segment, emitted once when the watermark passes its end.
    ``without_attributes``: how many of its answers were segmented without their customer's stored attributes
    (the attribute store was unreachable); in the record as ``answers_without_attributes``, only when > 0."""

    segment_id: str
    window: str
    start: int
    end: int
    counts: NpsCounts
    without_attributes: int = 0

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"type": "segment.window", "segment_id": self.segment_id, "window": self.window,
                                  "window_start": self.start, "window_end": self.end, **self.counts.summary()}
        if self.without_attributes:
            record["answers_without_attributes"] = self.without_attributes
        return record


class SegmentWindows:
    """One segment's open slices, recently closed slices (enough for the longest window), and late count."""

    __slots__ = ("closed", "closed_starts", "closed_upto", "late", "open")

    def __init__(self) -> None:
        self.open: dict[int, Slice] = {}
        self.closed: list[Slice] = []
        self.closed_starts: list[int] = []
        self.closed_upto: int | None = None  # every slice starting before this is closed
        self.late = 0

    def add(self, at_ms: int, score: int, ref: AnswerRef | None, slice_ms: int,
            drivers: tuple[str, ...] = ()) -> int | None:
        """Count one answer (with its driver values). Returns the end of a slice this call opened (to
        schedule its close), else None. Raises :class:`LateAnswer` if the answer's slice is already closed."""
        current, opened = self._open_slice(at_ms - at_ms % slice_ms, slice_ms, 1)
        current.counts.add(score)
        if ref is not None:
            current.answers.append(ref)  # type: ignore[union-attr]  # an open slice's refs are a list
        count_drivers(current.breakdown, drivers, score)  # type: ignore[arg-type]  # open: not sealed
        return opened

    def add_slice(self, start: int, counts: NpsCounts, refs: list[AnswerRef], slice_ms: int,
                  breakdown: Breakdown | None = None, without_attributes: int = 0) -> int | None:
        """Merge a pre-aggregated slice (answers of one slice combined upstream, ``without_attributes`` of them
        segmented without customer attributes); same contract as ``add``."""
        current, opened = self._open_slice(start, slice_ms, counts.total)
        current.counts.merge(counts)
        current.answers.extend(refs)  # type: ignore[union-attr]  # an open slice's refs are a list
        if breakdown:
            current.merge_breakdown(breakdown)
        current.without_attributes += without_attributes
        return opened

    def _open_slice(self, start: int, slice_ms: int, answers: int) -> tuple[Slice, int | None]:
        if self.closed_upto is not None and start < self.closed_upto:
            self.late += answers
            raise LateAnswer(start)
        current = self.open.get(start)
        if current is not None:
            return current, None
        current = self.open[start] = Slice()
        return current, start + slice_ms

    def next_due(self, settings: WindowSettings) -> int | None:
        """The watermark at which this segment next has work: its earliest open slice closes, or a window
        holding already-closed answers ends (a segment that went quiet still emits its windows on time)."""
        candidates = []
        if self.open:
            candidates.append(min(self.open) + settings.slice_ms)
        if self.closed_starts and self.closed_upto is not None:
            newest = self.closed_starts[-1]
            for spec in settings.specs:
                end = self.closed_upto - self.closed_upto % spec.step_ms + spec.step_ms
                if end - spec.size_ms <= newest:  # the window still holds a closed answer
                    candidates.append(end)
        return min(candidates) if candidates else None

    def close(self, watermark: int, segment_id: str,
              settings: WindowSettings) -> tuple[list[WindowResult], list[tuple[int, Slice]]]:
        """Close every slice that ends at or before ``watermark``; return the windows that became final and
        the slices just closed (start, slice), in time order.

        Results are ordered by window end, then by spec order; windows with no answers are not emitted.
        """
        slice_ms = settings.slice_ms
        upto = watermark - watermark % slice_ms
        previous = self.closed_upto
        if previous is not None and upto <= previous:
            return [], []
        # Keep what windows ending after `previous` still need; they are emitted below or later.
        self._prune((upto if previous is None else previous) - settings.longest_ms)
        newly: list[tuple[int, Slice]] = []
        for start in sorted(s for s in self.open if s < upto):
            piece = self.open.pop(start)
            self.closed_starts.append(start)
            self.closed.append(piece)
            newly.append((start, piece))
        self.closed_upto = upto
        if not self.closed_starts:
            return [], newly
        ordered: list[tuple[int, int, WindowResult]] = []
        newest = self.closed_starts[-1]
        oldest = self.closed_starts[0]
        for order, spec in enumerate(settings.specs):
            step = spec.step_ms
            low = oldest if previous is None else max(previous, oldest)
            end = low - low % step + step  # first aligned end after `low`
            last = min(upto, newest + spec.size_ms)
            while end <= last:
                counts, without = self._sum(end - spec.size_ms, end)
                if counts.total:
                    ordered.append((end, order, WindowResult(segment_id, spec.name, end - spec.size_ms, end,
                                                             counts, without)))
                end += step
        ordered.sort(key=lambda item: (item[0], item[1]))
        return [result for _, _, result in ordered], newly

    def forget_closed(self) -> None:
        """Drop the closed slices (for state that never emits windows)."""
        self.closed.clear()
        self.closed_starts.clear()

    def answers_between(self, start: int, end: int) -> list[AnswerRef]:
        """The kept answer references of closed slices in ``[start, end)`` (valid until the next close)."""
        lo = bisect.bisect_left(self.closed_starts, start)
        hi = bisect.bisect_left(self.closed_starts, end)
        out: list[AnswerRef] = []
        for piece in self.closed[lo:hi]:
            out.extend(piece.answers)
        return out

    def _sum(self, start: int, end: int) -> tuple[NpsCounts, int]:
        """The counts of the closed slices in ``[start, end)``, and how many were without attributes."""
        lo = bisect.bisect_left(self.closed_starts, start)
        hi = bisect.bisect_left(self.closed_starts, end)
        total = NpsCounts()
        without = 0
        for piece in self.closed[lo:hi]:
            total.merge(piece.counts)
            without += piece.without_attributes
        return total, without

    def _prune(self, keep_from: int) -> None:
        cut = bisect.bisect_left(self.closed_starts, keep_from)
        if cut:
            del self.closed_starts[:cut]
            del self.closed[:cut]

    def to_dict(self) -> dict[str, Any]:
        return {
            "open": [[start, piece.to_list()] for start, piece in sorted(self.open.items())],
            "closed": [[start, piece.to_list()] for start, piece in zip(self.closed_starts, self.closed,
                                                                       strict=True)],
            "closed_upto": self.closed_upto,
            "late": self.late,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentWindows:
        windows = cls()
        windows.open = {int(start): Slice.from_list(piece) for start, piece in data.get("open", [])}
        for start, piece in data.get("closed", []):
            windows.closed_starts.append(int(start))
            closed = Slice.from_list(piece)
            closed.seal()
            windows.closed.append(closed)
        windows.closed_upto = data.get("closed_upto")
        windows.late = int(data.get("late", 0))
        return windows


class LateAnswer(Exception):
    """The answer's slice (starting at ``slice_start``) was already closed."""

    def __init__(self, slice_start: int) -> None:
        self.slice_start = slice_start
        super().__init__(slice_start)
