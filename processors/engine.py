"""The engine: events in, window results, alerts and triggers out. Pure: no I/O and no clock reads.

It is two stages so that the streaming pipeline can run them on either side of a repartition:
- :class:`CustomerStage` (keyed by customer): purchase profiles, segment memberships, answer-driven
  triggers; it turns each answer into one :class:`SegmentAnswer` per segment;
- :class:`SegmentStage` (keyed by segment): event-time windows, the spike detector, alert-driven triggers.
:class:`Engine` runs both in-process with one watermark (max event time seen - grace), which is the
embedded default. Time only ever comes in with events, or as an explicit watermark.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from operator import itemgetter
from typing import Any, NamedTuple

from processors.baseline import hour_of
from processors.config import EngineSettings
from processors.dedup import RecentEvents
from processors.events import AlertEvent, EventError, Purchase, RetargetTrigger, SurveyResponse
from processors.nps import Loyalty, classify
from processors.profiles import CurrencyError, CustomerProfile
from processors.retarget import Retargeter
from processors.segments import Hierarchy, Segmenter
from processors.spikes import ChainEstimates, SpikeDetector, SpikeState, chain_estimates
from processors.timeparse import DAY_MS, format_duration_ms
from processors.windows import AnswerRef, SegmentWindows, Slice, WindowResult


@dataclass(slots=True)
class Outputs:
    """What one call produced, in a deterministic order."""

    windows: list[WindowResult] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    triggers: list[RetargetTrigger] = field(default_factory=list)
    late: list[SurveyResponse] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.windows.extend(other.windows)
        self.alerts.extend(other.alerts)
        self.triggers.extend(other.triggers)
        self.late.extend(other.late)


class SegmentAnswer(NamedTuple):
    """One answer as seen by one segment: what the segment stage needs, nothing more (a tuple: an answer makes
    one per segment it belongs to, and a frozen dataclass costs several times more to build)."""

    segment_id: str
    at: int
    score: int
    ref: AnswerRef | None
    drivers: tuple[str, ...] = ()  # "dimension=value" of the answer but those the segment fixes (shared tuples)


class CustomerStage:
    """Per-customer work: profiles from purchases, memberships, answer-driven triggers."""

    def __init__(self, settings: EngineSettings, retargeter: Retargeter) -> None:
        self.settings = settings
        self.segmenter = Segmenter(settings.segmentation)
        self.retargeter = retargeter
        self.profiles: dict[str, CustomerProfile] = {}

    def purchase(self, purchase: Purchase, profile: CustomerProfile | None = None) -> CustomerProfile:
        """Fold a purchase into the customer's profile (refused with EventError for an unknown currency)."""
        try:
            amount = self.settings.profiles.to_base_currency(purchase)
        except CurrencyError as exc:
            raise EventError("currency", str(exc)) from None
        if profile is None:
            profile = self.profiles.setdefault(purchase.customer_id, CustomerProfile())
        profile.add_purchase(purchase.purchased_at, amount, self.settings.profiles.horizon_days)
        return profile

    def answer(self, answer: SurveyResponse, profile: CustomerProfile | None,
               triggers: list[RetargetTrigger] | None = None) -> list[SegmentAnswer]:
        """The segment answers of one survey response given the customer's profile (None: no purchases);
        answer-driven triggers are appended to ``triggers``."""
        memberships, drivers, ref = self.placement(answer, profile, triggers)
        return [SegmentAnswer(segment, answer.answered_at, answer.score, ref, segment_drivers)
                for segment, segment_drivers in zip(memberships, drivers, strict=True)]

    def placement(self, answer: SurveyResponse, profile: CustomerProfile | None,
                  triggers: list[RetargetTrigger] | None = None) -> tuple[list[str], list[tuple[str, ...]],
                                                                          AnswerRef | None]:
        """``answer`` without a tuple per segment: the memberships, each one's drivers (shared lists: do not
        mutate) and the answer's kept ref (None: not kept)."""
        profiles = self.settings.profiles
        if profile is None:
            tier, value = profiles.no_purchase_tier, 0
        else:
            rfm = profile.rfm(answer.answered_at, profiles.horizon_days)
            tier, value = profiles.tier_for(rfm.frequency, rfm.monetary), to_cents(rfm.monetary)
        memberships, drivers = self.segmenter.placement(answer, tier)
        if triggers is not None:
            triggers.extend(self.retargeter.for_answer(answer, memberships, tier))
        # Kept for in-spike campaigns, and every detractor for the revenue at risk of an alert.
        score = answer.score
        keep = score in self.retargeter.alert_scores or classify(score) is Loyalty.DETRACTOR
        ref = (answer.event_id, answer.customer_id, score, tier, value) if keep else None
        return memberships, drivers, ref


@dataclass(slots=True)
class SegmentState:
    """All state of one segment: its windows and its detector. Plain data for a changelogged table."""

    windows: SegmentWindows = field(default_factory=SegmentWindows)
    spikes: SpikeState = field(default_factory=SpikeState)

    def to_dict(self) -> dict[str, Any]:
        return {"windows": self.windows.to_dict(), "spikes": self.spikes.to_list()}

    def stored(self) -> dict[str, Any]:
        """:meth:`to_dict` for ``orjson.dumps`` only (the same bytes, see :meth:`SegmentWindows.stored`)."""
        return {"windows": self.windows.stored(), "spikes": self.spikes.to_list()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentState:
        return cls(SegmentWindows.from_dict(data["windows"]), SpikeState.from_list(data["spikes"]))


class SegmentStage:
    """Per-segment work: windows, detection on closed slices, alert-driven triggers.

    Closed slices reach the detector in event-time order across all segments, and within one minute deeper
    segments first, so a child reads its parent's baseline as of the end of the previous minute whatever
    the order in which slices arrived or the watermark moved. ``owns`` says which segments' outputs this
    stage emits: in the worker a slice partition also keeps replicas of the parent segments owned by other
    partitions (fed the same slices), for their baselines and open alerts.
    """

    def __init__(self, settings: EngineSettings, retargeter: Retargeter,
                 owns: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.detector = SpikeDetector(settings.detection)
        self.hierarchy = Hierarchy(settings.segmentation)
        self.retargeter = retargeter
        self.owns = owns or (lambda segment_id: True)
        self.segments: dict[str, SegmentState] = {}
        self.last_closed: list[str] = []  # segments whose state the last ``advance`` changed
        self._due: list[tuple[int, str]] = []  # (watermark at which a slice closes, segment id)
        self._parents: dict[str, str | None] = {}
        self._ancestors: dict[str, tuple[str, ...]] = {}
        self._depths: dict[str, int] = {}  # minus the segment's depth: deeper segments first within a minute

    def add(self, item: SegmentAnswer) -> None:
        """Count one segment answer; raises LateAnswer if its slice is closed."""
        self.add_answer([item.segment_id], [item.drivers], item.at, item.score, item.ref)

    def add_answer(self, memberships: list[str], drivers: list[tuple[str, ...]], at: int, score: int,
                   ref: AnswerRef | None) -> None:
        """``add`` for each membership of one answer (``CustomerStage.placement``), without a tuple per segment;
        raises LateAnswer if its slice is closed."""
        segments = self.segments
        slice_ms = self.settings.windows.slice_ms
        due = self._due
        for segment_id, segment_drivers in zip(memberships, drivers, strict=True):
            state = segments.get(segment_id)
            if state is None:
                state = segments[segment_id] = SegmentState()
            opened = state.windows.add(at, score, ref, slice_ms, segment_drivers)
            if opened is not None:
                heapq.heappush(due, (opened, segment_id))

    def add_slice(self, segment_id: str, start: int, piece: Slice) -> None:
        """Merge a pre-aggregated slice (handed over: it may become the open slice itself); raises LateAnswer
        if the slice is closed."""
        windows = self._state(segment_id).windows
        if piece.refs and not self.owns(segment_id):
            piece.refs = None  # a replica never triggers campaigns
        self._due_at(windows.add_slice(start, piece, self.settings.windows.slice_ms), segment_id)

    def _state(self, segment_id: str) -> SegmentState:
        state = self.segments.get(segment_id)
        if state is None:
            state = self.segments[segment_id] = SegmentState()
        return state

    def _due_at(self, watermark: int | None, segment_id: str) -> None:
        if watermark is not None:
            heapq.heappush(self._due, (watermark, segment_id))

    def load(self, segment_id: str, state: SegmentState) -> None:
        """Adopt a segment's state recovered from storage, scheduling the close of its open slices."""
        self.segments[segment_id] = state
        self._schedule(segment_id, state)

    def _schedule(self, segment_id: str, state: SegmentState) -> None:
        self._due_at(state.windows.next_due(self.settings.windows), segment_id)

    def parent_of(self, segment_id: str) -> str | None:
        if segment_id not in self._parents:
            self._parents[segment_id] = self.hierarchy.parent_of(segment_id)
        return self._parents[segment_id]

    def _ancestors_of(self, segment_id: str) -> tuple[str, ...]:
        """The segment's parent, its parent's parent..., nearest first (remembered)."""
        ancestors = self._ancestors.get(segment_id)
        if ancestors is None:
            chain = []
            parent = self.parent_of(segment_id)
            while parent is not None and parent not in chain:
                chain.append(parent)
                parent = self.parent_of(parent)
            ancestors = self._ancestors[segment_id] = tuple(chain)
        return ancestors

    def advance(self, watermark: int) -> Outputs:
        """Close every slice the watermark has passed; emit the final windows; detect on the closed slices."""
        out = Outputs()
        heap = self._due
        if not heap or heap[0][0] > watermark:
            self.last_closed = []
            return out
        due = set()
        while heap and heap[0][0] <= watermark:
            due.add(heapq.heappop(heap)[1])
        self.last_closed = sorted(due)
        closed: list[tuple[int, int, str, Slice]] = []
        window_settings = self.settings.windows
        depths = self._depths
        segments, owns, emitted = self.segments, self.owns, out.windows
        for segment_id in self.last_closed:
            state = segments[segment_id]
            segment_windows = state.windows
            windows, slices = segment_windows.close(watermark, segment_id, window_settings)
            if owns(segment_id):
                emitted.extend(windows)
            else:
                segment_windows.forget_closed()  # a replica's windows are never emitted: keep only its open slices
            depth = depths.get(segment_id)
            if depth is None:
                depth = depths[segment_id] = -self.hierarchy.depth(segment_id)
            for start, piece in slices:
                if piece.counts.total:
                    closed.append((start, depth, segment_id, piece))
            self._schedule(segment_id, state)
        closed.sort(key=_SLICE_ORDER)
        # Within one minute every segment comes before its ancestors (deeper first), so an ancestor's estimates
        # for that minute stay as they are until its own slice: each parent's are computed once per minute.
        estimates: dict[tuple[str, int], ChainEstimates] = {}
        for start, _, segment_id, piece in closed:
            self._detect(segment_id, start, piece, out, estimates)
        return out

    def _detect(self, segment_id: str, start: int, piece: Slice, out: Outputs,
                estimates: dict[tuple[str, int], ChainEstimates]) -> None:
        segments = self.segments
        state = segments[segment_id].spikes
        chain = [state]
        ancestors = self._ancestors_of(segment_id)
        parent_id = ancestors[0] if ancestors else None
        for parent in ancestors:  # up to the first ancestor this stage has no state of
            parent_state = segments.get(parent)
            if parent_state is None:
                break
            chain.append(parent_state.spikes)
        parents = None
        if parent_id is not None:
            key = (parent_id, start)
            parents = estimates.get(key)
            if parents is None:
                parents = estimates[key] = chain_estimates(hour_of(start), chain[1:],
                                                           self.settings.detection.baseline)
        open_before = state.alert
        events = self.detector.observe_packed(segment_id, parent_id, start, piece.counts, piece.drivers, chain,
                                              piece.without_attributes, parents)
        if (not events and open_before is None) or not self.owns(segment_id):
            return  # nothing to emit (the common case) or a replica
        windows = segments[segment_id].windows
        out.alerts.extend(self._with_revenue(event, windows) for event in events)
        # In-spike campaigns act on the segment's kept answers from the onset (at most the longest window back:
        # the windows always keep that much, whatever the watermark's steps) to the slice that resolves the alert.
        opened = next((e for e in events if e.kind == "opened"), None)
        if opened is not None:
            answers = windows.answers_between(self._since(opened), opened.at)
            out.triggers.extend(self.retargeter.for_alert(segment_id, opened.alert_id, opened.severity, opened.at,
                                                          answers))
        elif open_before is not None:
            at = start + self.settings.windows.slice_ms
            out.triggers.extend(self.retargeter.for_alert(segment_id, open_before.alert_id, open_before.severity, at,
                                                          piece.answers))

    def _since(self, event: AlertEvent) -> int:
        """Where an alert's look-back starts: its onset, at most the longest window before ``at``."""
        return max(event.onset_at, event.at - self.settings.windows.longest_ms)

    def _with_revenue(self, event: AlertEvent, windows: SegmentWindows) -> AlertEvent:
        since = self._since(event)
        cents, customers = revenue_at_risk(windows.answers_between(since, event.at))
        return replace(event, revenue_at_risk_cents=cents, at_risk_customers=customers,
                       currency=self.settings.profiles.currency, revenue_since=since)


_SLICE_ORDER = itemgetter(0, 1, 2)  # (start, -depth, segment id): unique per closed slice


def revenue_at_risk(answers: Iterable[AnswerRef]) -> tuple[int, int]:
    """(summed value in cents, count) of the distinct customers among the detractor answers; a customer who
    answered more than once counts once, at their highest value. Independent of the answers' order."""
    values: dict[str, int] = {}
    for ref in answers:
        if classify(ref[2]) is Loyalty.DETRACTOR:
            values[ref[1]] = max(values.get(ref[1], 0), ref[4])
    return sum(values.values()), len(values)


def to_cents(amount: Decimal) -> int:
    """An amount in the base currency as whole cents (half up)."""
    return int(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) * 100)


def aggregate_by_slice(items: Iterable[SegmentAnswer], slice_ms: int, *,
                       without_attributes: bool = False) -> dict[tuple[str, int], Slice]:
    """Combine segment answers per (segment, slice start): what crosses the repartition, so its traffic
    grows with segments x slices rather than with answers x segments. ``without_attributes``: the answers
    were segmented without customer attributes (each aggregate then counts all of its answers as such)."""
    aggregator = SliceAggregator(slice_ms)
    for item in items:
        aggregator.add_answer([item.segment_id], [item.drivers], item.at, item.score, item.ref)
    return aggregator.aggregates(without_attributes=without_attributes)


class SliceAggregator:
    """``aggregate_by_slice`` fed one answer's placement at a time (``CustomerStage.placement``), without a
    :class:`SegmentAnswer` per segment; same aggregates, in the same order. Each aggregate is a packed
    :class:`Slice`, as the segment stage keeps it."""

    __slots__ = ("combined", "slice_ms")

    def __init__(self, slice_ms: int) -> None:
        self.slice_ms = slice_ms
        self.combined: dict[tuple[str, int], Slice] = {}

    def add_answer(self, memberships: list[str], drivers: list[tuple[str, ...]], at: int, score: int,
                   ref: AnswerRef | None) -> None:
        combined = self.combined
        start = at - at % self.slice_ms
        for segment_id, segment_drivers in zip(memberships, drivers, strict=True):
            key = (segment_id, start)
            aggregate = combined.get(key)
            if aggregate is None:
                aggregate = combined[key] = Slice()
            aggregate.add(score, ref, segment_drivers)

    def aggregates(self, *, without_attributes: bool = False) -> dict[tuple[str, int], Slice]:
        """The aggregates so far (``without_attributes``: as in ``aggregate_by_slice``)."""
        if without_attributes:
            for aggregate in self.combined.values():
                aggregate.without_attributes = aggregate.total
        return self.combined


class Engine:
    """Both stages in-process with one watermark: the embedded default.

    An answer's tier counts the purchases of complete days before it, so an answer waits (briefly, and
    only around midnight) until a purchase of its own day or later has arrived, or until answers have
    moved one grace period into its day: a purchase from late yesterday that arrives just after the first
    answers of today still counts, as it does in the streaming worker.
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        retargeter = Retargeter(settings.campaigns)
        self.customers = CustomerStage(settings, retargeter)
        self.segments = SegmentStage(settings, retargeter)
        self.max_event_time: int | None = None
        self.max_purchase_time: int | None = None
        self.late_answers = 0
        self._held: list[SurveyResponse] = []
        self._recent = RecentEvents(settings.dedup_horizon_ms)

    @property
    def watermark(self) -> int | None:
        if self.max_event_time is None:
            return None
        return self.max_event_time - self.settings.windows.grace_ms

    def process(self, event: SurveyResponse | Purchase) -> Outputs:
        """Apply one event and return what it caused (closing windows it pushed the watermark past). An event
        whose id was seen within the dedup horizon is refused with EventError (field ``event_id``)."""
        out = Outputs()
        refuse_duplicate(self._recent, event)
        if isinstance(event, Purchase):
            # Purchases shape profiles only; answers alone drive the window watermark.
            self.customers.purchase(event)
            if self.max_purchase_time is None or event.purchased_at > self.max_purchase_time:
                self.max_purchase_time = event.purchased_at
            if self._held:
                self._release(out, flush=False)
            return out
        at = event.answered_at
        if self.max_event_time is None or at > self.max_event_time:
            self.max_event_time = at
        slice_ms = self.settings.windows.slice_ms
        watermark = self.max_event_time - self.settings.windows.grace_ms
        if at - at % slice_ms + slice_ms <= watermark:
            self.late_answers += 1
            out.late.append(event)
            # Late for the windows, but still a customer's answer: answer-driven campaigns act on it.
            self.customers.placement(event, self.customers.profiles.get(event.customer_id), out.triggers)
        elif not self._held and self._purchases_cover(at):
            self._apply(event, out)
        else:
            self._held.append(event)
        if self._held:
            self._release(out, flush=False)
        out.extend(self.segments.advance(watermark))
        return out

    def process_all(self, events: Iterable[SurveyResponse | Purchase]) -> Outputs:
        out = Outputs()
        for event in events:
            out.extend(self.process(event))
        out.extend(self.flush())
        return out

    def flush(self) -> Outputs:
        """End of input: apply held answers, close every open slice and emit every window with answers."""
        out = Outputs()
        self._release(out, flush=True)
        if self.max_event_time is None:
            return out
        windows = self.settings.windows
        out.extend(self.segments.advance(self.max_event_time + windows.longest_ms + windows.slice_ms))
        return out

    def _purchases_cover(self, at: int) -> bool:
        day_start = at - at % DAY_MS
        if self.max_purchase_time is not None and self.max_purchase_time >= day_start:
            return True
        return self.max_event_time is not None and self.max_event_time >= day_start + self.settings.windows.grace_ms

    def _apply(self, answer: SurveyResponse, out: Outputs) -> None:
        memberships, drivers, ref = self.customers.placement(answer, self.customers.profiles.get(answer.customer_id),
                                                             out.triggers)
        self.segments.add_answer(memberships, drivers, answer.answered_at, answer.score, ref)

    def _release(self, out: Outputs, *, flush: bool) -> None:
        waiting = []
        for answer in self._held:
            if flush or self._purchases_cover(answer.answered_at):
                self._apply(answer, out)
            else:
                waiting.append(answer)
        self._held = waiting


def refuse_duplicate(recent: RecentEvents, event: SurveyResponse | Purchase) -> None:
    """Raise EventError if the event's id was seen within the horizon (else remember it)."""
    at = event.purchased_at if isinstance(event, Purchase) else event.answered_at
    if not recent.first(event.event_id, at):
        raise EventError("event_id", f"duplicate: event id seen within the last "
                                     f"{format_duration_ms(recent.horizon_ms)} of event time")
