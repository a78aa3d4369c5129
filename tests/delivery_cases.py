"""One table of delivery-policy cases, run against the in-memory policy (tests/unit/test_delivery.py) and the
Redis store (tests/integration/test_delivery_store.py): both must give exactly these decisions and audiences.

A step is an admission with its expected decision written ``outcome[:reason][:first]`` (``sent``,
``capped:campaign``, ``capped:customer``, ``opted_out``, ``duplicate:sent``, ...), or a consent change.
Times are offsets from ``T0`` in milliseconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from processors.delivery import PRIORITIES, Cap, Decision, DeliveryPolicy, DeliverySettings
from processors.events import RetargetTrigger

T0 = 1_772_461_200_000  # 2026-03-02T14:20:00Z
HOUR = 3_600_000
DAY = 24 * HOUR
NO_CAPS = DeliverySettings(customer_cap=None)


@dataclass(frozen=True)
class Step:
    op: str  # "admit", "opt_out" or "opt_in"
    customer: str
    campaign: str = "a"
    event: str = ""
    at: int = 0
    expect: str = ""
    priority: str = "high"


@dataclass(frozen=True)
class Case:
    name: str
    settings: DeliverySettings
    steps: tuple[Step, ...]
    audiences: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # campaign -> expected export


def admit(customer: str, event: str, at: int, expect: str, campaign: str = "a", priority: str = "high") -> Step:
    return Step("admit", customer, campaign, event, at, expect, priority)


def opt_out(customer: str) -> Step:
    return Step("opt_out", customer)


def opt_in(customer: str) -> Step:
    return Step("opt_in", customer)


def trigger(step: Step) -> RetargetTrigger:
    at = T0 + step.at
    return RetargetTrigger(campaign_id=step.campaign, customer_id=step.customer, event_id=step.event, score=2,
                           loyalty="detractor", segment_id="all", reason="test", channel="email", priority=step.priority,
                           created_at=at, expires_at=at + 3 * DAY)


def describe(decision: Decision) -> str:
    """A decision in the table's notation."""
    parts = [decision.outcome.value]
    if decision.reason:
        parts.append(decision.reason)
    if decision.first is not None:
        parts.append(decision.first.value)
    return ":".join(parts)


CASES = [
    Case("campaign cap per customer, other campaigns untouched",
         DeliverySettings(customer_cap=None, campaign_caps={"a": Cap(1, 7 * DAY)}),
         (admit("c1", "e1", 0, "sent"), admit("c1", "e2", HOUR, "capped:campaign"),
          admit("c2", "e3", HOUR, "sent"), admit("c1", "e4", 2 * HOUR, "sent", campaign="b"),
          admit("c1", "e5", 3 * HOUR, "sent", campaign="b"), admit("c1", "e6", 7 * DAY, "sent"))),
    Case("customer cap across campaigns",
         DeliverySettings(customer_cap=Cap(2, DAY)),
         (admit("c1", "e1", 0, "sent"), admit("c1", "e2", 1, "sent", campaign="b"),
          admit("c1", "e3", 2, "capped:customer", campaign="c"), admit("c2", "e4", 2, "sent", campaign="c"),
          admit("c1", "e5", DAY, "sent", campaign="c"), admit("c1", "e6", DAY, "capped:customer"))),
    Case("the campaign cap is checked before the customer cap",
         DeliverySettings(customer_cap=Cap(1, DAY), campaign_caps={"a": Cap(1, DAY)}),
         (admit("c1", "e1", 0, "sent"), admit("c1", "e2", 1, "capped:campaign"),
          admit("c1", "e3", 2, "capped:customer", campaign="b"))),
    Case("sliding window: admitted again once the period has passed",
         DeliverySettings(customer_cap=None, campaign_caps={"a": Cap(1, DAY)}),
         (admit("c1", "e1", 0, "sent"), admit("c1", "e2", DAY - 1, "capped:campaign"),
          admit("c1", "e3", DAY, "sent"), admit("c1", "e4", 2 * DAY - 1, "capped:campaign"),
          admit("c1", "e5", 2 * DAY, "sent"))),
    Case("sliding window of two: the oldest leaves, one more fits",
         DeliverySettings(customer_cap=Cap(2, DAY)),
         (admit("c1", "e1", 0, "sent"), admit("c1", "e2", 12 * HOUR, "sent"),
          admit("c1", "e3", 23 * HOUR, "capped:customer"), admit("c1", "e4", DAY, "sent"),
          admit("c1", "e5", 35 * HOUR, "capped:customer"), admit("c1", "e6", 36 * HOUR, "sent"))),
    Case("out of order: an earlier trigger may not overfill a later window",
         DeliverySettings(customer_cap=Cap(1, DAY)),
         (admit("c1", "e1", 10 * HOUR, "sent"), admit("c1", "e2", 0, "capped:customer"),
          admit("c1", "e3", -15 * HOUR, "sent"), admit("c1", "e4", 30 * HOUR, "capped:customer"),
          admit("c1", "e5", 34 * HOUR, "sent"), admit("c1", "e6", 9 * HOUR, "capped:customer"))),
    Case("a trigger whose windows reach into trimmed history is capped",
         DeliverySettings(customer_cap=Cap(2, DAY)),
         (admit("c1", "e1", 0, "sent"), admit("c1", "e2", 3 * DAY, "sent"),  # trims e1: more than 2 days older
          admit("c1", "e3", 12 * HOUR, "capped:customer"),  # (-12h, 12h] held e1, which is no longer known
          admit("c1", "e4", 25 * HOUR, "sent"))),  # no window of it reaches back to e1
    Case("opted-out customers are never admitted and use no cap",
         DeliverySettings(customer_cap=Cap(1, DAY)),
         (opt_out("c1"), admit("c1", "e1", 0, "opted_out"), admit("c1", "e2", 1, "opted_out", campaign="b"),
          admit("c2", "e3", 1, "sent"), opt_in("c1"), admit("c1", "e4", 2, "sent"),
          admit("c1", "e1", 0, "duplicate:opted_out"), opt_out("c1"), admit("c1", "e5", DAY + 2, "opted_out")),
         audiences={"a": [("c2", T0 + 1), ("c1", T0 + 2)], "b": []}),
    Case("a trigger id is decided once; repeats do not count",
         DeliverySettings(customer_cap=Cap(2, DAY)),
         (admit("c1", "e1", 0, "sent"), admit("c1", "e1", 0, "duplicate:sent"), admit("c1", "e1", 0, "duplicate:sent"),
          admit("c1", "e2", 1, "sent"), admit("c1", "e3", 2, "capped:customer"),
          admit("c1", "e3", 2, "duplicate:capped"),
          admit("c1", "e1", 0, "capped:customer", campaign="b"))),  # another campaign: another trigger id
    Case("no caps configured: everything not opted out or repeated is sent",
         NO_CAPS,
         tuple(admit("c1", f"e{i}", i, "sent") for i in range(12))),
    Case("audiences: sent triggers only, latest time per customer, trimmed by retention",
         DeliverySettings(customer_cap=Cap(1, HOUR), audience_retention_ms=DAY),
         (admit("c1", "e1", 0, "sent"), admit("c2", "e2", 5, "sent"), admit("c2", "e3", 6, "capped:customer"),
          admit("c1", "e4", 2 * HOUR, "sent"), admit("c1", "e5", HOUR + 1, "capped:customer"),
          admit("c3", "e6", 10, "sent", campaign="b"), admit("c4", "e7", DAY + 5, "sent"),
          admit("c5", "e8", 3 * HOUR, "sent")),
         audiences={"a": [("c1", T0 + 2 * HOUR), ("c5", T0 + 3 * HOUR), ("c4", T0 + DAY + 5)],
                    "b": [("c3", T0 + 10)]}),
    Case("priority-aware customer cap: low-priority triggers never block higher ones",
         DeliverySettings(customer_cap=Cap(2, DAY)),
         (admit("c1", "e1", 0, "sent", priority="low"), admit("c1", "e2", 1, "sent", priority="low"),
          admit("c1", "e3", 2, "capped:customer", priority="low"),  # two of priority >= low already
          admit("c1", "e4", 3, "sent", campaign="b", priority="high"),  # counts only priority >= high: none yet
          admit("c1", "e5", 4, "sent", campaign="c", priority="normal"),  # >= normal: e4 only
          admit("c1", "e6", 5, "capped:customer", campaign="b", priority="normal"),  # >= normal: e4, e5
          admit("c1", "e7", 6, "sent", campaign="b", priority="urgent"),  # >= urgent: none
          admit("c1", "e8", 7, "capped:customer", campaign="b", priority="high"),  # >= high: e4, e7
          admit("c1", "e9", DAY + 1, "capped:customer", priority="low"),  # (1, DAY + 1] holds e4, e5, e7
          admit("c1", "e10", DAY + 7, "sent", priority="low"))),  # (7, DAY + 7]: none
    Case("priority-aware customer cap: higher-priority triggers use up the lower bands",
         DeliverySettings(customer_cap=Cap(2, DAY)),
         (admit("c1", "e1", 0, "sent", priority="urgent"), admit("c1", "e2", HOUR, "sent", priority="high"),
          admit("c1", "e3", 2 * HOUR, "capped:customer", priority="low"),
          admit("c1", "e4", 2 * HOUR, "capped:customer", priority="normal"),
          admit("c1", "e5", 2 * HOUR, "capped:customer", priority="high"),
          admit("c1", "e6", 2 * HOUR, "sent", priority="urgent"),  # >= urgent: e1 only
          admit("c2", "e7", 0, "sent", priority="normal"), admit("c2", "e8", 1, "sent", priority="normal"),
          admit("c2", "e9", 2, "sent", priority="high"), admit("c2", "e10", 3, "sent", priority="high"),
          admit("c2", "e11", 4, "capped:customer", priority="high"))),
    Case("an older trigger does not lower a customer's audience time",
         NO_CAPS,
         (admit("c1", "e1", 10 * HOUR, "sent"), admit("c1", "e2", HOUR, "sent")),
         audiences={"a": [("c1", T0 + 10 * HOUR)]}),
]


def run_memory(settings: DeliverySettings, steps: list[Step] | tuple[Step, ...],
               campaigns: list[str]) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """The steps through the in-memory policy: its decisions, in the table's notation, and the audiences."""
    policy = DeliveryPolicy(settings)
    decisions = []
    for step in steps:
        if step.op == "opt_out":
            policy.opt_out([step.customer])
        elif step.op == "opt_in":
            policy.opt_in([step.customer])
        else:
            decisions.append(describe(policy.admit(trigger(step))))
    return decisions, {campaign: policy.audience(campaign) for campaign in campaigns}


def random_steps(seed: int, count: int = 400, *, max_lateness: int | None = None,
                 priorities: bool = False) -> list[Step]:
    """A random sequence over few customers and campaigns, with repeated trigger ids and consent changes
    (``priorities``: each trigger of a random priority, else all ``high``).

    Times are shuffled across three days (``max_lateness`` None: the two implementations must still agree on
    every decision), or a stream time running forward with triggers up to ``max_lateness`` behind it."""
    rng = random.Random(seed)
    steps: list[Step] = []
    stream_time = 0
    for index in range(count):
        stream_time += rng.randrange(0, 20 * 60_000)
        customer = f"c{rng.randrange(4)}"
        roll = rng.random()
        if roll < 0.04:
            steps.append(opt_out(customer))
        elif roll < 0.08:
            steps.append(opt_in(customer))
        elif roll < 0.18 and steps:
            repeat = rng.choice([step for step in steps if step.op == "admit"] or [None])
            if repeat is not None:
                steps.append(repeat)
        else:
            at = (rng.randrange(-DAY, 2 * DAY, 60_000) if max_lateness is None
                  else stream_time - rng.randrange(0, max_lateness + 1, 60_000))
            priority = rng.choice(PRIORITIES) if priorities else "high"
            steps.append(admit(customer, f"e{index}", at, "", campaign=rng.choice("abc"), priority=priority))
    return steps


RANDOM_SETTINGS = DeliverySettings(customer_cap=Cap(3, DAY), campaign_caps={"a": Cap(1, 12 * HOUR), "b": Cap(2, DAY)},
                                   audience_retention_ms=DAY)
