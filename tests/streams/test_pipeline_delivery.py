"""The worker's trigger publishing (``Pipeline._send_triggers``) against the delivery policy, without Kafka:
only ``sent`` triggers reach the retarget topic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace

import orjson
from delivery_cases import HOUR, admit, trigger

from processors.delivery import Cap, Decision, DeliveryPolicy, DeliverySettings, Outcome
from processors.events import RetargetTrigger
from streams.delivery_store import REDIS_UNAVAILABLE
from streams.pipeline import Pipeline


class Producer:
    """What ``streams.records_out.send`` uses of Faust's producer: ``send``, recorded per topic."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[bytes, dict]]] = {}

    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None, timestamp: float | None,
                   headers: object) -> None:
        self.records.setdefault(topic, []).append((key, orjson.loads(value)))


class DownStore:
    """A delivery store whose Redis is unreachable: every trigger is undelivered."""

    def __init__(self) -> None:
        self.counters = {outcome.value: 0 for outcome in Outcome}

    async def admit(self, triggers: Sequence[RetargetTrigger]) -> list[Decision]:
        self.counters[Outcome.UNDELIVERED.value] += len(triggers)
        return [Decision(t.id, Outcome.UNDELIVERED, REDIS_UNAVAILABLE) for t in triggers]


def _pipeline(delivery: object) -> SimpleNamespace:
    producer = Producer()

    async def maybe_start_producer() -> Producer:
        return producer

    return SimpleNamespace(delivery=delivery, app=SimpleNamespace(maybe_start_producer=maybe_start_producer),
                           names=SimpleNamespace(retarget="npspulse.retarget"), counters={"triggers": 0},
                           producer=producer)


def published(pipeline: SimpleNamespace) -> list[tuple[bytes, dict]]:
    return pipeline.producer.records.get("npspulse.retarget", [])


def _send(pipeline: SimpleNamespace, triggers: list[RetargetTrigger], partial: bool = False) -> int:
    return len(asyncio.run(Pipeline._send_triggers(pipeline, triggers, partial)))  # type: ignore[arg-type]


def test_only_sent_triggers_are_published_each_id_once() -> None:
    settings = DeliverySettings(customer_cap=Cap(2, HOUR), campaign_caps={"b": Cap(1, HOUR)})
    policy = DeliveryPolicy(settings)
    policy.opt_out(["c9"])
    pipeline = _pipeline(policy)
    first = [trigger(admit("c1", "e1", 0, "")), trigger(admit("c1", "e1", 0, ""))]  # the same id twice
    assert _send(pipeline, first, partial=True) == 1
    later = [trigger(admit("c1", "e2", 60_000, "", "b")), trigger(admit("c1", "e3", 120_000, "")),
             trigger(admit("c9", "e4", 0, ""))]  # sent, customer-capped, opted out
    assert _send(pipeline, later) == 1
    records = published(pipeline)
    assert [(key, record["event_id"]) for key, record in records] == [(b"c1", "e1"), (b"c1", "e2")]
    assert records[0][1]["enrichment"] == "partial" and "enrichment" not in records[1][1]
    assert pipeline.counters["triggers"] == 2
    assert policy.counters == {"sent": 2, "capped": 1, "opted_out": 1, "duplicate": 1}


def test_redis_down_publishes_nothing() -> None:
    store = DownStore()
    pipeline = _pipeline(store)
    assert _send(pipeline, [trigger(admit("c1", "e1", 0, "")), trigger(admit("c2", "e2", 0, ""))]) == 0
    assert published(pipeline) == [] and pipeline.counters["triggers"] == 0
    assert store.counters["undelivered"] == 2
    assert _send(pipeline, []) == 0
