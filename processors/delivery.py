"""Delivery policy for re-targeting triggers: consent (opt-outs), de-duplication by trigger id, frequency caps
per campaign and per customer across campaigns, and each campaign's audience.

:class:`DeliveryPolicy` is the pure in-memory implementation, for the embedded runner;
``streams/delivery_store.py`` enforces the same policy in Redis for the worker, and the tests run one table of
cases against both. The rules, in the order they are checked:

1. **duplicate**: the first decision about a trigger id is final for ``dedup_window``; a repeat is
   ``duplicate`` and carries the first outcome (``first``);
2. **opted_out**: the customer is in the opt-out set;
3. **capped** (reason ``campaign``, then ``customer``): a cap ``{max N, period P}`` holds in every window
   ``(s - P, s]`` of trigger time, so a trigger at ``t`` is admitted only if no such window containing ``t``
   already holds ``N`` sent triggers, whatever the arrival order. History is kept ``2 P`` behind the newest
   sent trigger; a trigger whose windows reach back into history already trimmed (more than ``P`` older than
   a sent one) cannot be checked and is capped. The customer cap is **priority-aware**: a trigger of
   priority ``p`` counts only the sent triggers of priority ``p`` or higher, so lower-priority triggers (a
   referral ask) never use up the allowance of higher ones (service recovery). Per customer there is one
   history per priority band ``p``, holding every sent trigger of priority ``>= p``. In any period a customer
   receives at most ``N`` triggers of each priority level, and at most ``N`` in all unless higher-priority
   triggers come after lower ones have reached the cap (at worst ``N`` x the four levels);
4. otherwise **sent**: it counts towards both caps and joins the campaign's audience.

Time is the trigger's ``created_at`` (event time), never the clock. Only sent triggers count towards caps and
audiences. An audience keeps each customer's latest trigger time; members older than ``audience_retention``
before a newly sent trigger of the campaign are dropped.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from processors.events import RetargetTrigger
from processors.timeparse import DAY_MS

HOUSEKEEPING_EVERY = 4096  # fewest admissions between sweeps of cap histories no window can reach any more
PRIORITIES = ("low", "normal", "high", "urgent")  # lowest first
_RANK = {name: rank for rank, name in enumerate(PRIORITIES)}


def priority_rank(priority: str) -> int:
    """The rank of a trigger priority (0 lowest); an unknown priority ranks as ``normal``."""
    return _RANK.get(priority, _RANK["normal"])


def priority_bands(priority: str) -> tuple[str, ...]:
    """The customer-cap bands a sent trigger of this priority counts in: every band up to its own, lowest
    first. A trigger is checked against the last one (the sent triggers of its priority or higher)."""
    return PRIORITIES[:priority_rank(priority) + 1]


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``max`` sent triggers in any ``period_ms`` of trigger time."""

    max: int
    period_ms: int


DEFAULT_CUSTOMER_CAP = Cap(3, DAY_MS)


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """The ``[delivery]`` section and the per-campaign ``cap`` of ``[[campaigns]]``."""

    customer_cap: Cap | None = DEFAULT_CUSTOMER_CAP  # across campaigns; None: no cross-campaign cap
    campaign_caps: Mapping[str, Cap] = field(default_factory=dict)  # campaign id -> cap (absent: uncapped)
    dedup_window_ms: int = 7 * DAY_MS
    audience_retention_ms: int = 30 * DAY_MS


class Outcome(StrEnum):
    SENT = "sent"
    CAPPED = "capped"
    OPTED_OUT = "opted_out"
    DUPLICATE = "duplicate"
    UNDELIVERED = "undelivered"  # the Redis store only: the policy could not be checked, nothing is sent


CAPPED_BY_CAMPAIGN = "campaign"
CAPPED_BY_CUSTOMER = "customer"


@dataclass(frozen=True, slots=True)
class Decision:
    """What happened to one trigger. ``reason``: ``campaign``/``customer`` for capped, the cause for
    undelivered. ``first``: for a duplicate, the outcome of the first decision about this trigger id."""

    trigger_id: str
    outcome: Outcome
    reason: str = ""
    first: Outcome | None = None

    @property
    def sent(self) -> bool:
        return self.outcome is Outcome.SENT


@dataclass(slots=True)
class History:
    """Sent-trigger times of one cap key (sorted), and the newest time ever trimmed from them."""

    times: list[int] = field(default_factory=list)
    trimmed: int | None = None

    def fits(self, t: int, cap: Cap) -> bool:
        if self.trimmed is not None and self.trimmed > t - cap.period_ms:
            return False  # a window containing t reaches into trimmed history: it cannot be checked
        return window_fits(self.times, t, cap)

    def record(self, t: int, cap: Cap) -> None:
        """Add a sent time, trimming what is ``2 P`` older (as the Redis script does when it records)."""
        cut = bisect_right(self.times, t - 2 * cap.period_ms)
        if cut:
            newest = self.times[cut - 1]
            self.trimmed = newest if self.trimmed is None else max(self.trimmed, newest)
            del self.times[:cut]
        insort(self.times, t)


def window_fits(times: list[int], t: int, cap: Cap) -> bool:
    """Whether one more trigger at ``t`` keeps every window ``(s - P, s]`` containing ``t`` within the cap.

    ``times`` (sorted) are the sent triggers' times near ``t``. The count of a window ending at ``s`` only
    rises at ``s = t`` and at the later times, so those are the ends to check.
    """
    period = cap.period_ms
    ends = [t, *(v for v in times[bisect_right(times, t):] if v < t + period)]
    return all(bisect_right(times, end) - bisect_right(times, end - period) < cap.max for end in ends)


class DeliveryPolicy:
    """The delivery policy in memory (see the module docstring). Deterministic: no clock, no I/O."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self.counters: dict[str, int] = {outcome.value: 0 for outcome in Outcome if outcome is not Outcome.UNDELIVERED}
        self._opted_out: set[str] = set()
        self._seen: dict[str, Outcome] = {}  # trigger id -> first outcome
        self._seen_order: list[tuple[int, str]] = []  # heap of (clock when decided, trigger id)
        self._campaign_sent: dict[tuple[str, str], History] = {}  # (campaign, customer) -> sent history
        self._customer_sent: dict[tuple[str, str], History] = {}  # (customer, priority band) -> sent history
        self._audiences: dict[str, dict[str, int]] = {}  # campaign -> customer -> latest trigger time
        self._audience_heaps: dict[str, list[tuple[int, str]]] = {}
        self._clock: int | None = None  # latest event time seen: bounds memory only
        self._since_housekeeping = 0
        self._sweep_after = HOUSEKEEPING_EVERY

    # ------------------------------------------------------------ consent

    def opt_out(self, customer_ids: Iterable[str]) -> int:
        """Add customers to the opt-out set; returns how many were not in it yet."""
        before = len(self._opted_out)
        self._opted_out.update(customer_ids)
        return len(self._opted_out) - before

    def opt_in(self, customer_ids: Iterable[str]) -> int:
        """Remove customers from the opt-out set; returns how many were in it."""
        before = len(self._opted_out)
        self._opted_out.difference_update(customer_ids)
        return before - len(self._opted_out)

    def opted_out(self) -> list[str]:
        return sorted(self._opted_out)

    # ------------------------------------------------------------ admission

    def admit(self, trigger: RetargetTrigger, now_ms: int | None = None) -> Decision:
        """Decide one trigger at its ``created_at``. ``now_ms`` is the caller's event-time clock (e.g. the
        engine's max event time); it only bounds memory (state no window can reach is forgotten)."""
        t = trigger.created_at
        clock = self._tick(t if now_ms is None else max(t, now_ms))
        trigger_id = trigger.id
        first = self._seen.get(trigger_id)
        if first is not None:
            self.counters[Outcome.DUPLICATE.value] += 1
            return Decision(trigger_id, Outcome.DUPLICATE, first=first)
        decision = self._decide(trigger, trigger_id, t)
        self._seen[trigger_id] = decision.outcome
        heapq.heappush(self._seen_order, (clock, trigger_id))
        self.counters[decision.outcome.value] += 1
        return decision

    def admit_all(self, triggers: Iterable[RetargetTrigger], now_ms: int | None = None) -> list[Decision]:
        return [self.admit(trigger, now_ms) for trigger in triggers]

    def _decide(self, trigger: RetargetTrigger, trigger_id: str, t: int) -> Decision:
        if trigger.customer_id in self._opted_out:
            return Decision(trigger_id, Outcome.OPTED_OUT)
        campaign_cap = self.settings.campaign_caps.get(trigger.campaign_id)
        customer_cap = self.settings.customer_cap
        campaign_key = (trigger.campaign_id, trigger.customer_id)
        campaign_history = self._campaign_sent.get(campaign_key) or History()
        if campaign_cap is not None and not campaign_history.fits(t, campaign_cap):
            return Decision(trigger_id, Outcome.CAPPED, CAPPED_BY_CAMPAIGN)
        bands = priority_bands(trigger.priority)
        own_band = self._customer_sent.get((trigger.customer_id, bands[-1])) or History()
        if customer_cap is not None and not own_band.fits(t, customer_cap):
            return Decision(trigger_id, Outcome.CAPPED, CAPPED_BY_CUSTOMER)
        if campaign_cap is not None:
            self._campaign_sent.setdefault(campaign_key, campaign_history).record(t, campaign_cap)
        if customer_cap is not None:
            for band in bands:
                self._customer_sent.setdefault((trigger.customer_id, band), History()).record(t, customer_cap)
        self._join_audience(trigger.campaign_id, trigger.customer_id, t)
        return Decision(trigger_id, Outcome.SENT)

    # ------------------------------------------------------------ audiences

    def audience(self, campaign_id: str, since_ms: int | None = None) -> list[tuple[str, int]]:
        """(customer id, latest trigger time) of the campaign's audience, by time then id."""
        members = self._audiences.get(campaign_id, {})
        return sorted(((customer, at) for customer, at in members.items() if since_ms is None or at >= since_ms),
                      key=lambda item: (item[1], item[0]))

    def _join_audience(self, campaign_id: str, customer_id: str, t: int) -> None:
        members = self._audiences.setdefault(campaign_id, {})
        heap = self._audience_heaps.setdefault(campaign_id, [])
        if t > members.get(customer_id, t - 1):
            members[customer_id] = t
            heapq.heappush(heap, (t, customer_id))
        cutoff = t - self.settings.audience_retention_ms
        while heap and heap[0][0] <= cutoff:
            at, customer = heapq.heappop(heap)
            if members.get(customer) == at:
                del members[customer]

    # ------------------------------------------------------------ memory bounds

    def state_sizes(self) -> dict[str, int]:
        """How much the policy remembers: trigger ids, cap histories, audience members, opt-outs."""
        return {"trigger_ids": len(self._seen), "cap_keys": len(self._campaign_sent) + len(self._customer_sent),
                "audience_members": sum(len(members) for members in self._audiences.values()),
                "opted_out": len(self._opted_out)}

    def _tick(self, now: int) -> int:
        """Advance the event-time clock and forget what the Redis store lets expire: a trigger id
        ``dedup_window`` after its decision, a cap history ``2 P`` after its newest sent trigger. Amortised
        O(log n) per admission: ids leave a heap, and histories are swept after as many admissions as were left."""
        clock = self._clock = now if self._clock is None else max(self._clock, now)
        cutoff = clock - self.settings.dedup_window_ms
        while self._seen_order and self._seen_order[0][0] <= cutoff:
            self._seen.pop(heapq.heappop(self._seen_order)[1], None)
        self._since_housekeeping += 1
        if self._since_housekeeping >= self._sweep_after:
            self._since_housekeeping = 0
            self._sweep_histories(clock)
            self._sweep_after = max(HOUSEKEEPING_EVERY, len(self._campaign_sent) + len(self._customer_sent))
        return clock

    def _sweep_histories(self, clock: int) -> None:
        for key in [k for k, history in self._campaign_sent.items()
                    if _expired(history, clock, self.settings.campaign_caps.get(k[0]))]:
            del self._campaign_sent[key]
        for key in [k for k, history in self._customer_sent.items()
                    if _expired(history, clock, self.settings.customer_cap)]:
            del self._customer_sent[key]


def _expired(history: History, clock: int, cap: Cap | None) -> bool:
    """Whether the Redis key of this history has expired (TTL ``2 P`` after its newest sent trigger)."""
    return cap is None or not history.times or history.times[-1] <= clock - 2 * cap.period_ms
