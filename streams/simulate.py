"""A realistic synthetic stream of purchases and NPS answers, with injected incidents. Deterministic per seed.

- A population of customers, each with a region, a preferred channel, an age and a membership attribute,
  and a spending propensity; 90 days of purchase history precede the simulated period, so value tiers are
  real from the first answer.
- Answers arrive as a Poisson process with a daily cycle; each picks a customer, a touchpoint and a
  channel. Post-purchase touchpoints are preceded by the purchase they ask about.
- Each (region, channel, touchpoint) has its own stationary detractor share; an incident adds percentage
  points to the detractor share of the answers it matches for its duration.
- Arrival order jitters by up to ``jitter`` behind event time (out of order, within the grace period).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from processors.segments import parse_segment_id
from processors.timeparse import DAY_MS, MINUTE_MS, format_rfc3339_ms, parse_duration_ms, parse_rfc3339_ms

DEFAULT_START = "2026-03-02T00:00:00Z"
REGIONS = (("EU", 0.40), ("NA", 0.30), ("APAC", 0.20), ("LATAM", 0.10))
CHANNELS = (("app", 0.40), ("web", 0.35), ("store", 0.15), ("phone", 0.10))
TOUCHPOINTS = (("checkout", 0.35), ("delivery", 0.30), ("support", 0.20), ("onboarding", 0.15))
SIMULATED_DIMENSIONS = ("region", "channel", "touchpoint", "membership")
POST_PURCHASE = frozenset({"checkout", "delivery"})
CATEGORIES = ("grocery", "fashion", "electronics", "home", "beauty")
COMMENTS = ("Great service, thanks!", "Delivery was late again.", "The app keeps crashing at checkout.",
            "Support solved it quickly.", "Too expensive for what it is.", "Love the new loyalty perks.")
BASE_DETRACTOR = 0.22
SHARE_OFFSETS = {"EU": 0.01, "NA": -0.02, "APAC": 0.03, "LATAM": 0.0, "app": -0.02, "web": 0.0, "store": -0.04,
                 "phone": 0.06, "checkout": -0.03, "delivery": 0.03, "support": 0.05, "onboarding": -0.02}
PROMOTERS_AMONG_NON_DETRACTORS = 0.62
_INCIDENT = re.compile(
    r"^\s*(?P<segment>[^@]+?)\s*@\s*\+?(?P<offset>\d+\s*[smhdw])\s+for\s+(?P<duration>\d+\s*[smhdw])"
    r"\s*[:,]?\s*(?P<shift>[+-]\d+(?:\.\d+)?)\s*pp\s*$")


@dataclass(frozen=True, slots=True)
class Incident:
    """Raise the detractor share of matching answers by ``shift`` during [start, start + duration)."""

    match: tuple[tuple[str, str], ...]
    offset_ms: int
    duration_ms: int
    shift: float

    def applies(self, values: dict[str, str], at_ms: int, start_ms: int) -> bool:
        begin = start_ms + self.offset_ms
        if not begin <= at_ms < begin + self.duration_ms:
            return False
        return all(values.get(name) == value for name, value in self.match)


def parse_incident(text: str) -> Incident:
    """``"region=EU|channel=app @ +14h for 60m +30pp"``: segment, offset from the start, duration, shift."""
    found = _INCIDENT.match(text)
    if not found:
        raise ValueError(f"incident {text!r} is not of the form 'region=EU|channel=app @ +14h for 60m +30pp'")
    match = tuple(parse_segment_id(found.group("segment").strip()))
    for name, _ in match:
        if name not in SIMULATED_DIMENSIONS:
            raise ValueError(f"incident dimension {name!r} is not simulated; use {', '.join(SIMULATED_DIMENSIONS)}")
    offset = parse_duration_ms(found.group("offset").replace(" ", ""))
    duration = parse_duration_ms(found.group("duration").replace(" ", ""))
    shift = float(found.group("shift")) / 100.0
    if not -1.0 < shift < 1.0:
        raise ValueError(f"incident shift {found.group('shift')}pp is outside -100..+100")
    return Incident(match, offset, duration, shift)


@dataclass(slots=True)
class SimulationSettings:
    customers: int = 20_000
    duration_ms: int = DAY_MS
    answers_per_minute: float = 60.0
    start_ms: int = field(default_factory=lambda: parse_rfc3339_ms(DEFAULT_START))
    seed: int = 1
    incidents: tuple[Incident, ...] = ()
    jitter_ms: int = 20_000
    malformed_rate: float = 0.0
    history_days: int = 90


@dataclass(slots=True)
class _Customer:
    customer_id: str
    region: str
    channel: str
    age: int
    member: bool
    monthly_purchases: float
    basket: float


def simulate(settings: SimulationSettings) -> Iterator[dict]:
    """Yield events (JSON-ready dicts, or raw strings for injected malformed lines) in arrival order."""
    rng = random.Random(settings.seed)
    customers = [_customer(rng, index) for index in range(settings.customers)]
    yield from _history(rng, customers, settings)
    events: list[tuple[int, int, dict | str]] = []
    sequence = 0
    for at, customer in _answer_times(rng, customers, settings):
        touchpoint = _pick(rng, TOUCHPOINTS)
        channel = customer.channel if rng.random() < 0.8 else _pick(rng, CHANNELS)
        if touchpoint in POST_PURCHASE and rng.random() < 0.6:
            bought = at - rng.randint(5, 120) * MINUTE_MS
            events.append((bought, sequence, _purchase(rng, customer, bought, channel, sequence)))
            sequence += 1
        answer = _answer(rng, customer, at, touchpoint, channel, settings, sequence)
        arrival = at + rng.randint(0, settings.jitter_ms)
        if settings.malformed_rate and rng.random() < settings.malformed_rate:
            answer = _corrupt(rng, answer)
        events.append((arrival, sequence, answer))
        sequence += 1
    events.sort(key=lambda item: (item[0], item[1]))
    for _, _, event in events:
        yield event


def write_jsonl(events: Iterator[dict | str], out: IO[bytes]) -> int:
    count = 0
    for event in events:
        out.write(event.encode() if isinstance(event, str) else orjson.dumps(event))
        out.write(b"\n")
        count += 1
    return count


def simulate_to_file(settings: SimulationSettings, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        return write_jsonl(simulate(settings), out)


def _customer(rng: random.Random, index: int) -> _Customer:
    return _Customer(
        customer_id=f"c{index:07d}", region=_pick(rng, REGIONS), channel=_pick(rng, CHANNELS),
        age=min(90, max(18, int(rng.gauss(42, 14)))), member=rng.random() < 0.35,
        monthly_purchases=rng.gammavariate(1.5, 1.0), basket=rng.lognormvariate(math.log(45), 0.6),
    )


def _history(rng: random.Random, customers: list[_Customer], settings: SimulationSettings) -> Iterator[dict]:
    begin = settings.start_ms - settings.history_days * DAY_MS
    events = []
    for customer in customers:
        expected = customer.monthly_purchases * settings.history_days / 30.0
        for _ in range(_poisson(rng, expected)):
            at = rng.randrange(begin, settings.start_ms)
            events.append((at, _purchase(rng, customer, at, customer.channel, len(events), prefix="h")))
    events.sort(key=lambda item: item[0])
    for _, event in events:
        yield event


def _answer_times(rng: random.Random, customers: list[_Customer], settings: SimulationSettings):
    """Poisson arrivals with a daily cycle (thinning): quiet at night, busiest in the afternoon."""
    peak = settings.answers_per_minute * 1.6 / MINUTE_MS
    at = float(settings.start_ms)
    end = settings.start_ms + settings.duration_ms
    while True:
        at += rng.expovariate(peak)
        if at >= end:
            return
        hour = (at % DAY_MS) / 3_600_000
        intensity = 1.0 + 0.6 * math.sin((hour - 9.0) / 24.0 * 2 * math.pi)
        if rng.random() < intensity / 1.6:
            yield int(at), customers[rng.randrange(len(customers))]


def _purchase(rng: random.Random, customer: _Customer, at: int, channel: str, sequence: int,
              prefix: str = "p") -> dict:
    amount = round(customer.basket * rng.lognormvariate(0, 0.35), 2)
    return {"type": "purchase", "event_id": f"{prefix}{sequence:09d}-{customer.customer_id}",
            "customer_id": customer.customer_id, "amount": f"{max(amount, 0.5):.2f}", "currency": "EUR",
            "category": rng.choice(CATEGORIES), "channel": channel, "purchased_at": at}


def _answer(rng: random.Random, customer: _Customer, at: int, touchpoint: str, channel: str,
            settings: SimulationSettings, sequence: int) -> dict:
    values = {"region": customer.region, "channel": channel, "touchpoint": touchpoint,
              "membership": "member" if customer.member else "guest"}
    share = BASE_DETRACTOR + SHARE_OFFSETS[customer.region] + SHARE_OFFSETS[channel] + SHARE_OFFSETS[touchpoint]
    for incident in settings.incidents:
        if incident.applies(values, at, settings.start_ms):
            share += incident.shift
    share = min(0.98, max(0.01, share))
    if rng.random() < share:
        score = rng.choices(range(7), weights=(3, 2, 3, 4, 6, 8, 9))[0]
    elif rng.random() < PROMOTERS_AMONG_NON_DETRACTORS:
        score = rng.choice((9, 10, 10))
    else:
        score = rng.choice((7, 8))
    event = {"type": "survey", "event_id": f"s{sequence:09d}", "customer_id": customer.customer_id,
             "score": score, "answered_at": format_rfc3339_ms(at), "touchpoint": touchpoint, "channel": channel,
             "region": customer.region,
             "attributes": {"age": str(customer.age), "membership": values["membership"]}}
    if rng.random() < 0.15:
        event["comment"] = rng.choice(COMMENTS)
    return event


def _corrupt(rng: random.Random, event: dict) -> dict | str:
    """One of the malformed shapes producers really send."""
    kind = rng.randrange(5)
    bad = dict(event)
    if kind == 0:
        bad["score"] = 11
    elif kind == 1:
        del bad["customer_id"]
    elif kind == 2:
        bad["score"] = 7.5
    elif kind == 3:
        bad["answered_at"] = "yesterday"
    else:
        return orjson.dumps(event).decode()[:-7]  # truncated line: not JSON
    return bad


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    roll, acc = rng.random(), 0.0
    for value, weight in weighted:
        acc += weight
        if roll < acc:
            return value
    return weighted[-1][0]


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method; the means here are small (a few purchases per customer).
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k
