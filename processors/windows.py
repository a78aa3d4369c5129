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
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

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


# a driver value's [answers, detractors] in an open slice: detractors * DRIVER_UNIT + answers (no detractor: a small
# int, a shared object up to 256 answers)
DRIVER_UNIT = 1 << 32
ANSWERS_MASK = DRIVER_UNIT - 1


def pack_breakdown(breakdown: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """A ``{"dimension=value": [answers, detractors]}`` breakdown as :class:`Slice` keeps it (one int a value)."""
    return {key: d * DRIVER_UNIT + n for key, (n, d) in breakdown.items()}


class Slice:
    """One open slice's counts, kept answer refs and driver breakdown. Once closed, a segment keeps only its
    counts and refs, as columns (:class:`SegmentWindows`).

    Packed, as a segment keeps about three open slices at a time: the counts are plain int fields (no
    :class:`NpsCounts` object), the refs list exists only once there is a ref, and the breakdown is a dict of
    one int per driver value (``detractors * DRIVER_UNIT + answers``) where it was a list ``[answers,
    detractors]`` each (about 90 bytes a value, most of an open slice). ``counts`` and ``breakdown`` build the
    usual objects when asked (once per closed slice)."""

    __slots__ = ("detractors", "drivers", "passives", "promoters", "refs", "without_attributes")

    def __init__(self, counts: NpsCounts | None = None, answers: Sequence[AnswerRef] | None = None,
                 breakdown: Breakdown | None = None, without_attributes: int = 0) -> None:
        if counts is None:
            self.detractors = self.passives = self.promoters = 0
        else:
            self.detractors, self.passives, self.promoters = counts.detractors, counts.passives, counts.promoters
        self.refs: list[AnswerRef] | None = list(answers) if answers else None
        self.drivers: dict[str, int] | None = None
        if breakdown:
            self.merge_breakdown(breakdown)
        self.without_attributes = without_attributes

    @property
    def counts(self) -> NpsCounts:
        return NpsCounts(self.detractors, self.passives, self.promoters)

    @property
    def total(self) -> int:
        return self.detractors + self.passives + self.promoters

    @property
    def answers(self) -> list[AnswerRef]:
        """The kept answer refs (a new empty list without any)."""
        refs = self.refs
        return [] if refs is None else refs

    @property
    def breakdown(self) -> Breakdown:
        """The driver breakdown as ``{"dimension=value": [answers, detractors]}``, in the order values came."""
        drivers = self.drivers
        if drivers is None:
            return {}
        return {key: [packed & ANSWERS_MASK, packed >> 32] for key, packed in drivers.items()}

    def add(self, score: int, ref: AnswerRef | None, drivers: tuple[str, ...]) -> None:
        """Count one answer (validated, 0-10 score) with its ref and driver values."""
        if score <= 6:  # a detractor, as in ``classify``
            self.detractors += 1
            unit = DRIVER_UNIT + 1  # an answer and a detractor
        else:
            if score <= 8:
                self.passives += 1
            else:
                self.promoters += 1
            unit = 1
        if ref is not None:
            if self.refs is None:
                self.refs = [ref]
            else:
                self.refs.append(ref)
        if drivers:
            mine = self.drivers
            if mine is None:
                mine = self.drivers = {}
            get = mine.get
            for key in drivers:
                mine[key] = get(key, 0) + unit

    @classmethod
    def packed(cls, detractors: int, passives: int, promoters: int, refs: list[AnswerRef] | None,
               drivers: dict[str, int] | None, without_attributes: int = 0) -> Slice:
        """A slice from its packed fields (``drivers``: ``detractors * DRIVER_UNIT + answers`` per value). ``refs``
        and ``drivers`` are kept, not copied; empty ones become None."""
        piece = cls.__new__(cls)
        piece.detractors, piece.passives, piece.promoters = detractors, passives, promoters
        piece.refs, piece.drivers, piece.without_attributes = refs or None, drivers or None, without_attributes
        return piece

    def merge(self, other: Slice) -> None:
        """Add another slice's answers (pre-aggregated upstream) to this one."""
        self.detractors += other.detractors
        self.passives += other.passives
        self.promoters += other.promoters
        if other.refs:
            if self.refs is None:
                self.refs = list(other.refs)
            else:
                self.refs.extend(other.refs)
        if other.drivers:
            mine = self.drivers
            if mine is None:
                self.drivers = dict(other.drivers)
            else:
                get = mine.get
                for key, packed in other.drivers.items():
                    mine[key] = get(key, 0) + packed
        self.without_attributes += other.without_attributes

    def merge_breakdown(self, breakdown: Breakdown) -> None:
        mine = self.drivers
        if mine is None:
            mine = self.drivers = {}
        get = mine.get
        for key, (n, d) in breakdown.items():
            mine[key] = get(key, 0) + d * DRIVER_UNIT + n

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Slice):
            return NotImplemented
        return self.to_list() == other.to_list()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Slice({self.counts!r}, {self.answers!r}, {self.breakdown!r}, "
                f"without_attributes={self.without_attributes})")

    def to_list(self) -> list[Any]:
        return slice_list([self.detractors, self.passives, self.promoters], [list(ref) for ref in self.answers],
                          self.breakdown, self.without_attributes)

    @classmethod
    def from_list(cls, data: list[Any]) -> Slice:
        breakdown = {key: [int(n), int(d)] for key, (n, d) in data[2].items()} if len(data) > 2 else {}
        refs = [tuple(ref) if len(ref) > 4 else (*ref, 0) for ref in data[1]]  # state from before values: 0
        without = int(data[3]) if len(data) > 3 else 0  # state from before the count: 0
        return cls(NpsCounts.from_list(data[0]), refs, breakdown, without)  # type: ignore[arg-type]


def slice_list(counts: list[int], refs: Any, breakdown: Breakdown, without_attributes: int) -> list[Any]:
    """A slice as stored: ``[counts, refs, breakdown]``, plus the count without attributes when there is one
    (state without it stays as it was, and loads in older code). ``refs`` as stored: a list of lists, or their
    orjson as an ``orjson.Fragment``."""
    data = [counts, refs, breakdown]
    if without_attributes:
        data.append(without_attributes)
    return data


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


CLOSED_FIELDS = 4  # per closed slice in SegmentWindows.closed_counts: detractors, passives, promoters, without attributes
EMPTY_REFS = orjson.Fragment(b"[]")
INT16_MAX = 2**15 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def widened(values: array, top: int) -> array:
    """``values`` as int64 if ``top`` does not fit its type (a copy), else itself."""
    if values.typecode != "q" and top > (INT16_MAX if values.typecode == "h" else INT32_MAX):
        return array("q", values)
    return values


class SegmentWindows:
    """One segment's open slices, recently closed slices (enough for the longest window), and late count.

    Closed slices are columns, 16 bytes each plus their refs: starts (``array('i')`` of milliseconds after
    ``closed_base``), counts (``CLOSED_FIELDS`` int16 per slice) and the end of the slice's refs in
    ``closed_ref_data`` (``array('i')``), where each slice's refs are one orjson array (nothing without any),
    about 45 bytes a ref where a tuple of strings took about 280; they are read only when an alert opens or a
    checkpoint stores the state. A value that does not fit widens its column to int64 (starts first move their
    base to the oldest slice kept). An object per closed slice cost about 190 bytes, and a ``bytes`` object per
    slice with refs about 50 more (docs/performance.md)."""

    __slots__ = ("closed_base", "closed_counts", "closed_ref_data", "closed_ref_ends", "closed_ref_origin",
                 "closed_starts", "closed_upto", "late", "open")

    def __init__(self) -> None:
        self.open: dict[int, Slice] = {}
        self.closed_base = 0  # epoch ms that closed_starts count from
        self.closed_starts = array("i")
        self.closed_counts = array("h")
        self.closed_ref_ends = array("i")  # where each slice's refs end, counted from closed_ref_origin
        self.closed_ref_data = bytearray()
        self.closed_ref_origin = 0  # the position of closed_ref_data[0] (pruning moves it, not the ends)
        self.closed_upto: int | None = None  # every slice starting before this is closed
        self.late = 0

    @property
    def closed_refs(self) -> list[bytes]:
        """Each closed slice's refs as orjson bytes (``b""`` without any), in time order."""
        return [self._refs(i) for i in range(len(self.closed_ref_ends))]

    def _refs(self, i: int) -> bytes:
        ends, origin = self.closed_ref_ends, self.closed_ref_origin
        return bytes(self.closed_ref_data[(ends[i - 1] if i else origin) - origin:ends[i] - origin])

    def _first_at_or_after(self, at: int) -> int:
        """The index of the first closed slice starting at or after ``at``."""
        return bisect.bisect_left(self.closed_starts, at - self.closed_base)

    def add(self, at_ms: int, score: int, ref: AnswerRef | None, slice_ms: int,
            drivers: tuple[str, ...] = ()) -> int | None:
        """Count one answer (with its driver values). Returns the end of a slice this call opened (to
        schedule its close), else None. Raises :class:`LateAnswer` if the answer's slice is already closed."""
        current, opened = self._open_slice(at_ms - at_ms % slice_ms, slice_ms, 1)
        current.add(score, ref, drivers)
        return opened

    def add_slice(self, start: int, piece: Slice, slice_ms: int) -> int | None:
        """Merge a pre-aggregated slice (answers of one slice combined upstream); same contract as ``add``. The
        first piece of a slice becomes the open slice itself: the caller hands it over and keeps no reference."""
        current, opened = self._open_slice(start, slice_ms, piece.total, piece)
        if current is not piece:
            current.merge(piece)
        return opened

    def _open_slice(self, start: int, slice_ms: int, answers: int,
                    fresh: Slice | None = None) -> tuple[Slice, int | None]:
        """The open slice at ``start``, opened as ``fresh`` (else a new empty one) if it is not open yet."""
        if self.closed_upto is not None and start < self.closed_upto:
            self.late += answers
            raise LateAnswer(start)
        current = self.open.get(start)
        if current is not None:
            return current, None
        current = self.open[start] = Slice() if fresh is None else fresh
        return current, start + slice_ms

    def next_due(self, settings: WindowSettings) -> int | None:
        """The watermark at which this segment next has work: its earliest open slice closes, or a window
        holding already-closed answers ends (a segment that went quiet still emits its windows on time)."""
        candidates = []
        if self.open:
            candidates.append(min(self.open) + settings.slice_ms)
        if self.closed_starts and self.closed_upto is not None:
            newest = self.closed_starts[-1] + self.closed_base
            for spec in settings.specs:
                end = self.closed_upto - self.closed_upto % spec.step_ms + spec.step_ms
                if end - spec.size_ms <= newest:  # the window still holds a closed answer
                    candidates.append(end)
        return min(candidates) if candidates else None

    def close(self, watermark: int, segment_id: str,
              settings: WindowSettings) -> tuple[list[WindowResult], list[tuple[int, Slice]]]:
        """Close every slice that ends at or before ``watermark``; return the windows that became final and
        the slices just closed (start, slice, with their breakdown for the detector), in time order.

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
            self._append_closed(start, [piece.detractors, piece.passives, piece.promoters], piece.answers,
                                piece.without_attributes)
            newly.append((start, piece))
        self.closed_upto = upto
        if not self.closed_starts:
            return [], newly
        ordered: list[tuple[int, int, WindowResult]] = []
        newest = self.closed_starts[-1] + self.closed_base
        oldest = self.closed_starts[0] + self.closed_base
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

    def _append_closed(self, start: int, counts: list[int], refs: Sequence[AnswerRef], without: int) -> None:
        starts = self.closed_starts
        if not starts:
            self.closed_base = start
        offset = start - self.closed_base
        if starts.typecode == "i" and offset > INT32_MAX:
            shift = starts[0]  # move the base to the oldest slice kept
            if shift and offset - shift <= INT32_MAX:
                for i in range(len(starts)):
                    starts[i] -= shift
                self.closed_base += shift
                offset -= shift
            else:
                starts = self.closed_starts = array("q", starts)
        starts.append(offset)
        columns = self.closed_counts = widened(self.closed_counts, max(*counts, without))
        columns.extend(counts)
        columns.append(without)
        data = self.closed_ref_data
        if refs:
            data += orjson.dumps(refs)
        ends, origin = self.closed_ref_ends, self.closed_ref_origin
        end = origin + len(data)
        if ends.typecode == "i" and end > INT32_MAX and origin:  # count from the oldest refs kept
            for i in range(len(ends)):
                ends[i] -= origin
            end -= origin
            self.closed_ref_origin = 0
        ends = self.closed_ref_ends = widened(ends, end)
        ends.append(end)

    def forget_closed(self) -> None:
        """Drop the closed slices (for state that never emits windows)."""
        del self.closed_starts[:]
        del self.closed_counts[:]
        del self.closed_ref_ends[:]
        self.closed_ref_data.clear()
        self.closed_ref_origin = 0

    def answers_between(self, start: int, end: int) -> list[AnswerRef]:
        """The kept answer references of closed slices in ``[start, end)``."""
        lo = self._first_at_or_after(start)
        hi = self._first_at_or_after(end)
        out: list[AnswerRef] = []
        ends, data, origin = self.closed_ref_ends, self.closed_ref_data, self.closed_ref_origin
        for i in range(lo, hi):
            begin = ends[i - 1] if i else origin
            if ends[i] > begin:
                out.extend(map(tuple, orjson.loads(data[begin - origin:ends[i] - origin])))
        return out

    def _sum(self, start: int, end: int) -> tuple[NpsCounts, int]:
        """The counts of the closed slices in ``[start, end)``, and how many were without attributes."""
        lo = self._first_at_or_after(start) * CLOSED_FIELDS
        hi = self._first_at_or_after(end) * CLOSED_FIELDS
        columns = self.closed_counts
        return (NpsCounts(sum(columns[lo:hi:CLOSED_FIELDS]), sum(columns[lo + 1:hi:CLOSED_FIELDS]),
                          sum(columns[lo + 2:hi:CLOSED_FIELDS])), sum(columns[lo + 3:hi:CLOSED_FIELDS]))

    def _prune(self, keep_from: int) -> None:
        cut = self._first_at_or_after(keep_from)
        if cut:
            del self.closed_starts[:cut]
            del self.closed_counts[:cut * CLOSED_FIELDS]
            ends = self.closed_ref_ends
            kept_from = ends[cut - 1]
            del ends[:cut]
            if kept_from > self.closed_ref_origin:
                del self.closed_ref_data[:kept_from - self.closed_ref_origin]
                self.closed_ref_origin = kept_from

    def closed_slices(self) -> list[tuple[int, NpsCounts, tuple[AnswerRef, ...], int]]:
        """The closed slices in time order: (start, counts, refs, answers without attributes)."""
        return [(start, NpsCounts(*counts), tuple(map(tuple, orjson.loads(refs))) if refs else (), without)
                for start, counts, refs, without in self._closed_rows()]

    def _closed_rows(self) -> Iterator[tuple[int, list[int], bytes, int]]:
        """The closed slices in time order: (start, counts, refs as kept, answers without attributes)."""
        columns, base = self.closed_counts, self.closed_base
        for i, offset in enumerate(self.closed_starts):
            at = i * CLOSED_FIELDS
            yield offset + base, columns[at:at + 3].tolist(), self._refs(i), columns[at + 3]

    def to_dict(self) -> dict[str, Any]:
        return self._as_dict(lambda refs: orjson.loads(refs) if refs else [])

    def stored(self) -> dict[str, Any]:
        """:meth:`to_dict` for ``orjson.dumps`` only, and the same bytes: each closed slice's refs go in as the
        orjson they are kept as (``orjson.Fragment``), not decoded and encoded again at every checkpoint."""
        return self._as_dict(lambda refs: orjson.Fragment(refs) if refs else EMPTY_REFS)

    def _as_dict(self, stored_refs: Callable[[bytes], Any]) -> dict[str, Any]:
        """The state as stored, each closed slice's kept refs as ``stored_refs`` makes them."""
        return {
            "open": [[start, piece.to_list()] for start, piece in sorted(self.open.items())],
            "closed": [[start, slice_list(counts, stored_refs(refs), {}, without)]
                       for start, counts, refs, without in self._closed_rows()],
            "closed_upto": self.closed_upto,
            "late": self.late,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentWindows:
        windows = cls()
        windows.open = {int(start): Slice.from_list(piece) for start, piece in data.get("open", [])}
        for start, piece in data.get("closed", []):
            closed = Slice.from_list(piece)
            windows._append_closed(int(start), closed.counts.to_list(), closed.answers, closed.without_attributes)
        windows.closed_upto = data.get("closed_upto")
        windows.late = int(data.get("late", 0))
        return windows


class LateAnswer(Exception):
    """The answer's slice (starting at ``slice_start``) was already closed."""

    def __init__(self, slice_start: int) -> None:
        self.slice_start = slice_start
        super().__init__(slice_start)
