"""The streaming pipeline: Faust agents as thin adapters around the processors' two stages.

    purchases ──> [purchases agent] ──> profiles table (keyed by customer)
    surveys ────> [surveys agent] ── validate, enrich (profiles table + Redis), segment memberships,
                        │            answer-driven triggers ──> retarget
                        └── pre-aggregated per (segment, 1-min slice) ──> segment-slices (keyed by segment)
    [watermark timer] ── each source partition's stream time, every second, to every slice partition
    segment-slices ─> [segments agent] ── windows in the segments table, closed by the watermark
                        ──> closed windows ──> windows; closed slices ──> detector ──> alert events,
                        alert-driven triggers ──> retarget; Redis snapshots and alert feed
    Parent segments (``all``, and single dimensions that crosses shrink toward) go to every slice partition:
    each keeps a replica so its children's baselines read it locally; only the owner emits its outputs.
    anything unparseable or late ──> dead-letter (original bytes, source topic/partition/offset, reason)

The watermark of a slice partition is the minimum stream time over the survey partitions (idle ones
excluded) minus the grace period, so a lagging partition holds windows open rather than turning its
answers late, and window contents do not depend on arrival order across partitions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from aiokafka.partitioner import murmur2
from faust.types import TP, EventT, Message

from processors.config import Config
from processors.delivery import DeliveryPolicy
from processors.engine import CustomerStage, Outputs, SegmentStage, SegmentState, aggregate_by_slice
from processors.events import EventError, RetargetTrigger, SurveyResponse, TimeBounds, parse_event
from processors.nps import NpsCounts
from processors.profiles import CustomerProfile
from processors.retarget import Retargeter
from processors.segments import Hierarchy
from processors.timeparse import DAY_MS, format_rfc3339_ms
from processors.watermarks import WatermarkTracker
from processors.windows import LateAnswer
from streams import metrics
from streams.delivery_store import DeliveryStore
from streams.redis_store import RedisStore
from streams.topics import TopicNames

log = logging.getLogger("npspulse.pipeline")

BATCH_SIZE = 2000
BATCH_SECONDS = 0.2
WATERMARK_SECONDS = 1.0
SOURCE_IDLE_SECONDS = 3.0
MAX_PENDING_ANSWERS = 50_000
STATUS_SECONDS = 10.0
POSITION_TIMEOUT_SECONDS = 1.0


@dataclass(slots=True)
class PendingAnswer:
    event: EventT
    answer: SurveyResponse
    partition: int


class Pipeline:
    def __init__(self, app: faust.App, config: Config, store: RedisStore | None,
                 delivery: DeliveryStore | DeliveryPolicy | None = None) -> None:
        """``delivery`` admits triggers before they are published: the Redis store shared by every worker, or
        (None) a policy in this worker's memory, whose caps and de-duplication are then per worker."""
        self.app, self.config, self.store = app, config, store
        self.delivery = DeliveryPolicy(config.delivery) if delivery is None else delivery
        self.settings = config.engine
        self.names = TopicNames.from_settings(config.kafka)
        self.partitions = config.kafka.partitions
        self.surveys = self._topic(self.names.surveys)
        self.purchases = self._topic(self.names.purchases)
        self.slices = self._topic(self.names.segment_slices, internal=True)
        self.alerts = self._topic(self.names.alerts)
        self.windows = self._topic(self.names.windows)
        self.retarget = self._topic(self.names.retarget)
        self.dead_letter = self._topic(self.names.dead_letter)
        self.profiles = self._table("profiles", "customer purchase profiles (RFM)")
        # Written once per batch for every segment the batch touched, outside single-event context, so the
        # changelog partition comes from the key: the same murmur2 partitioner that keyed segment-slices.
        self.segments = self._table("segments", "per-segment windows and detector state", use_partitioner=True)
        retargeter = Retargeter(self.settings.campaigns)
        self._hierarchy = Hierarchy(self.settings.segmentation)
        self._replica_keys: dict[tuple[str, int], bytes] = {}
        # the Redis snapshot keeps each segment's latest closed window of the first tumbling family
        self._snapshot_window = next(spec.name for spec in self.settings.windows.specs if spec.tumbling)
        self.customer_stage = CustomerStage(self.settings, retargeter)
        self._retargeter = retargeter
        self._profile_cache: dict[bytes, CustomerProfile] = {}
        self._stages: dict[int, SegmentStage] = {}
        self._trackers: dict[int, WatermarkTracker] = {}
        self._stream_times: dict[int, int] = {}
        self._last_record: dict[int, float] = {}
        self._purchase_times: dict[int, int] = {}  # purchases partition -> max purchase time applied
        self._purchase_seen: dict[int, float] = {}  # purchases partition -> wall time of the last one
        self._purchase_offsets: dict[int, int] = {}  # purchases partition -> last offset processed
        self._survey_offsets: dict[int, int] = {}  # surveys partition -> last offset received
        # Per survey partition, in arrival order: answers waiting for their purchases of earlier days.
        self._pending: dict[int, deque[PendingAnswer]] = {}
        self._received = 0  # answers received since the last drain
        self._dead_lettered: list[EventT] = []  # dead-lettered surveys, acknowledged after a flush
        self._draining = False
        self._in_flight: set[int] = set()  # survey partitions whose answers a drain is processing
        self._paused = False
        self._idle: dict[int, bool] = {}  # survey partition -> idle as last reported
        self._started = time.monotonic()
        self.counters: dict[str, int] = {"surveys": 0, "purchases": 0, "dead_letters": 0, "late_answers": 0,
                                         "alerts": 0, "triggers": 0, "windows": 0}
        app.agent(self.purchases, name="npspulse.purchases")(self.process_purchases)
        app.agent(self.surveys, name="npspulse.surveys")(self.process_surveys)
        app.agent(self.slices, name="npspulse.segments")(self.process_slices)
        app.timer(WATERMARK_SECONDS)(self.send_watermarks)
        app.timer(BATCH_SECONDS)(self.drain_surveys)
        app.timer(STATUS_SECONDS)(self.log_status)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

    def _topic(self, name: str, *, internal: bool = False) -> faust.TopicT:
        return self.app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                              partitions=self.partitions, replicas=self.config.kafka.replication_factor,
                              internal=internal)

    def _table(self, name: str, help_text: str, **options: Any) -> faust.Table:
        table = self.app.Table(name, partitions=self.partitions, key_type=bytes, help=help_text, **options)
        table.value_serializer = "orjson"  # explicit, before the changelog topic is first built
        return table

    def _bounds(self) -> TimeBounds:
        return TimeBounds(now_ms=int(time.time() * 1000), max_future_ms=self.settings.max_future_ms)

    async def _on_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        """Forget what belongs to partitions this worker no longer owns. Held answers of a revoked partition
        were never acknowledged: its new owner gets them again from the committed offset. Partitions kept
        through a rebalance keep everything (Faust does not redeliver what it already handed over)."""
        self._profile_cache.clear()
        for tp in revoked:
            partition = tp.partition
            if tp.topic == self.names.surveys:
                for progress in (self._pending, self._stream_times, self._last_record, self._survey_offsets, self._idle):
                    progress.pop(partition, None)
            elif tp.topic == self.names.purchases:
                for progress in (self._purchase_times, self._purchase_seen, self._purchase_offsets):
                    progress.pop(partition, None)
            elif tp.topic == self.names.segment_slices:
                self._stages.pop(partition, None)  # reloaded from the segments table on first use
                self._trackers.pop(partition, None)
        self._dead_lettered = [e for e in self._dead_lettered if e.message.tp not in revoked]
        log.info("partitions revoked: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in revoked))

    async def _on_assigned(self, sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        self._started = time.monotonic()  # "quiet since" counts from the assignment, not from start-up
        if self._paused:
            self.app.consumer.pause_partitions([tp for tp in assigned if tp.topic == self.names.surveys])

    # ------------------------------------------------------------ purchases -> profiles

    async def process_purchases(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            self._purchase_seen[message.partition] = time.monotonic()
            self._purchase_offsets[message.partition] = message.offset
            metrics.EVENTS_IN.labels(message.topic).inc()
            try:
                purchase = parse_event(event.value, self._bounds(), expected_type="purchase",
                                       default_time_ms=int(message.timestamp * 1000))
                key = purchase.customer_id.encode()
                profile = self._profile(key) or CustomerProfile()
                self.customer_stage.purchase(purchase, profile)
            except EventError as error:
                await self.send_dead_letter(message, error.field, error.reason)
                continue
            self.counters["purchases"] += 1
            if purchase.purchased_at > self._purchase_times.get(message.partition, -1):
                self._purchase_times[message.partition] = purchase.purchased_at
            self._profile_cache[key] = profile
            self.profiles[key] = profile.to_dict()

    def _profile(self, key: bytes) -> CustomerProfile | None:
        """The customer's profile (cache, then table); None for a customer without purchases."""
        profile = self._profile_cache.get(key)
        if profile is None:
            stored = self.profiles.get(key)
            profile = CustomerProfile.from_dict(stored) if stored else None
        return profile

    # ------------------------------------------------------------ surveys -> segment slices

    async def process_surveys(self, stream: faust.StreamT) -> None:
        # Manual acks: an answer is acknowledged once processed and delivered, which may be after it
        # waited for its purchases; a rebalance or crash redelivers whatever was not.
        async for event in stream.noack().events():
            await self.receive_survey(event)
            if self._received >= BATCH_SIZE:
                await self.drain_surveys()

    async def receive_survey(self, event: EventT) -> None:
        message = event.message
        self._last_record[message.partition] = time.monotonic()
        self._survey_offsets[message.partition] = message.offset
        metrics.EVENTS_IN.labels(message.topic).inc()
        try:
            answer = parse_event(event.value, self._bounds(), expected_type="survey")
        except EventError as error:
            await self.send_dead_letter(message, error.field, error.reason)
            self._dead_lettered.append(event)  # acknowledged after the next flush
            return
        self._pending.setdefault(message.partition, deque()).append(PendingAnswer(event, answer, message.partition))
        self._received += 1

    async def drain_surveys(self) -> None:
        """Process held answers whose partition's purchases of earlier days are applied (tiers count
        complete days), in arrival order per partition, so an answer's segments do not depend on how the
        two topics interleave. Never blocks the agent (Faust feeds every stream from one fetch loop):
        answers wait in memory, and the survey partitions pause while too many wait."""
        if self._draining or not (self._dead_lettered or any(self._pending.values())):
            return
        self._draining = True
        try:
            self._received = 0
            ready: list[PendingAnswer] = []
            for partition, queue in list(self._pending.items()):
                covered = -1  # the day start this partition's purchases are known to cover
                while queue:
                    at = queue[0].answer.answered_at
                    day_start = at - at % DAY_MS
                    if day_start > covered:
                        if not await self._purchases_cover(partition, day_start):
                            break
                        covered = day_start
                    ready.append(queue.popleft())
            # Until their slices are queued these answers are neither held nor covered by a stream time: a
            # partition with answers in flight must not look idle, or a marker could overtake its slices.
            self._in_flight = {pending.partition for pending in ready}
            for start in range(0, len(ready), BATCH_SIZE):
                await self._process_answers(ready[start:start + BATCH_SIZE])
            if self._dead_lettered:
                await self.app.producer.flush()
                acks, self._dead_lettered = self._dead_lettered, []
                for event in acks:
                    event.ack()
            self._apply_backpressure()
        finally:
            self._draining = False
            self._in_flight = set()

    @metrics.timed("answers")
    async def _process_answers(self, ready: list[PendingAnswer]) -> None:
        attributes = await self.store.attributes([p.answer.customer_id for p in ready]) if self.store else {}
        partial = attributes is None
        triggers: list[RetargetTrigger] = []
        items = []
        sent: list[Any] = []
        times: dict[int, int] = {}
        for pending in ready:
            answer = pending.answer
            if attributes:
                answer = enrich(answer, attributes.get(answer.customer_id))
            items.extend(self.customer_stage.answer(answer, self._profile(answer.customer_id.encode()), triggers))
            if answer.answered_at > times.get(pending.partition, -1):
                times[pending.partition] = answer.answered_at
        self.counters["surveys"] += len(ready)
        for (segment_id, start), aggregate in aggregate_by_slice(items, self.settings.windows.slice_ms).items():
            value = orjson.dumps({"s": segment_id, "t": start, "c": aggregate.counts.to_list(), "r": aggregate.refs,
                                  "b": aggregate.breakdown})
            if self._hierarchy.is_parent(segment_id):
                # every slice partition keeps a replica of a parent segment: its children there need its baseline
                for partition in range(self.partitions):
                    sent.append(await self.slices.send(key=segment_id.encode(), value=value, partition=partition))
            else:
                sent.append(await self.slices.send(key=segment_id.encode(), value=value))
        sent.extend(await self._send_triggers(triggers, partial))
        # Only after the slices are queued: a watermark marker never overtakes the data it covers.
        for partition, latest in times.items():
            if latest > self._stream_times.get(partition, -1):
                self._stream_times[partition] = latest
        # Delivered before acknowledged, so a stop or crash loses nothing. Waits for these records only,
        # not for the whole producer (the purchases agent's changelog may have a long queue).
        await asyncio.gather(*sent)
        for pending in ready:
            pending.event.ack()

    def _apply_backpressure(self) -> None:
        consumer = self.app.consumer
        surveys = [tp for tp in consumer.assignment() if tp.topic == self.names.surveys]
        waiting = sum(len(queue) for queue in self._pending.values())
        if not self._paused and waiting >= MAX_PENDING_ANSWERS:
            consumer.pause_partitions(surveys)
            self._paused = True
            log.info("%d answers wait for purchases of earlier days; survey partitions paused", waiting)
        elif self._paused and waiting <= MAX_PENDING_ANSWERS // 2:
            consumer.resume_partitions(surveys)
            self._paused = False

    async def _purchases_cover(self, partition: int, day_start: int) -> bool:
        if self._purchase_times.get(partition, -1) >= day_start:
            return True
        return await self._purchases_quiet(partition)

    async def _purchases_quiet(self, partition: int) -> bool:
        tp = TP(self.names.purchases, partition)
        if tp not in self.app.consumer.assignment():
            return True  # not co-partitioned with surveys here (mid-rebalance): nothing to wait for
        quiet = time.monotonic() - self._purchase_seen.get(partition, self._started) >= SOURCE_IDLE_SECONDS
        return quiet and await self._caught_up(tp, self._purchase_offsets.get(partition))

    async def send_watermarks(self) -> None:
        """Every second: each assigned survey partition's stream time to every slice partition."""
        consumer = self.app.consumer
        now = time.monotonic()
        for tp in sorted(consumer.assignment()):
            if tp.topic != self.names.surveys:
                continue
            quiet = now - self._last_record.get(tp.partition, self._started) >= SOURCE_IDLE_SECONDS
            held = bool(self._pending.get(tp.partition)) or tp.partition in self._in_flight
            idle = quiet and not held and await self._caught_up(tp, self._survey_offsets.get(tp.partition))
            if self._idle.get(tp.partition) != idle:
                log.info("survey partition %d is %s", tp.partition, "idle" if idle else "active")
                self._idle[tp.partition] = idle
            value = orjson.dumps({"m": tp.partition, "t": self._stream_times.get(tp.partition), "idle": idle})
            for partition in range(self.partitions):
                await self.slices.send(key=b"", value=value, partition=partition)

    async def log_status(self) -> None:
        """Every few seconds at info level: per partition, the stream time, held answers and watermark."""
        def stamp(ms: int | None) -> str:
            return "-" if ms is None else format_rfc3339_ms(ms)
        sources = {p: (stamp(t), len(self._pending.get(p, ()))) for p, t in sorted(self._stream_times.items())}
        marks = {p: stamp(tracker.watermark()) for p, tracker in sorted(self._trackers.items())}
        log.info("status: surveys (stream time, held) %s; watermarks %s; counters %s; delivery %s%s", sources, marks,
                 self.counters, self.delivery.counters, "; survey partitions paused" if self._paused else "")

    async def _caught_up(self, tp: Any, processed: int | None) -> bool:
        """Everything in the partition has been handled (``processed``: the last offset this worker handled,
        if any since the assignment; else the fetch position must have reached the end)."""
        try:
            highwater = self.app.consumer.highwater(tp)
            # aiokafka's position() waits until the fetcher knows the position, which a paused partition
            # (backpressure, re-applied on assignment) may never get: bounded, or the timer calling this hangs.
            position = await asyncio.wait_for(self.app.consumer.position(tp), POSITION_TIMEOUT_SECONDS) \
                if processed is None else processed + 1
        except Exception:  # not fetched yet, paused, or mid-rebalance: not known to be caught up
            return False
        return highwater is not None and position is not None and position >= highwater

    # ------------------------------------------------------------ segment slices -> windows -> alerts

    async def process_slices(self, stream: faust.StreamT) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_SECONDS):
            await self.handle_slices(batch)

    @metrics.timed("slices")
    async def handle_slices(self, batch: Sequence[EventT]) -> None:
        touched: dict[int, set[str]] = {}
        for event in batch:
            message = event.message
            partition = message.partition
            stage = self._stage(partition)
            changed = touched.setdefault(partition, set())
            try:
                data = orjson.loads(event.value)
                if "m" in data:
                    self._trackers[partition].update(int(data["m"]), data["t"], bool(data["idle"]))
                    continue
                segment_id, start = data["s"], int(data["t"])
                counts = NpsCounts.from_list(data["c"])
                refs = [tuple(ref) for ref in data["r"]]
                breakdown = {str(key): [int(n), int(d)] for key, (n, d) in data.get("b", {}).items()}
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
                await self.send_dead_letter(message, "", f"malformed segment slice: {type(error).__name__}")
                continue
            try:
                stage.add_slice(segment_id, start, counts, refs, breakdown)  # type: ignore[arg-type]
            except LateAnswer:
                if not stage.owns(segment_id):
                    continue  # a replica: the owner partition reports it
                self.counters["late_answers"] += counts.total
                metrics.LATE.inc(counts.total)
                await self.send_dead_letter(message, "answered_at", (
                    f"late: {counts.total} answer(s) of segment {segment_id} for a slice closed before they arrived "
                    "(beyond the grace period)"))
                continue
            changed.add(segment_id)
        out = Outputs()
        for partition, changed in touched.items():
            stage = self._stages[partition]
            watermark = self._trackers[partition].watermark()
            if watermark is not None:
                out.extend(stage.advance(watermark))
                changed.update(stage.last_closed)
            for segment_id in changed:
                self.segments[self._table_key(segment_id, partition)] = {
                    "p": partition, "s": segment_id, **stage.segments[segment_id].to_dict()}
        await self._publish(out)
        # Changelog and outputs delivered before the batch is acknowledged (when this returns).
        await self.app.producer.flush()

    def _stage(self, partition: int) -> SegmentStage:
        stage = self._stages.get(partition)
        if stage is None:
            stage = self._stages[partition] = SegmentStage(
                self.settings, self._retargeter, owns=lambda segment_id: self.partition_of(segment_id) == partition)
            self._trackers[partition] = WatermarkTracker(self.partitions, self.settings.windows.grace_ms)
            for key, value in list(self.segments.items()):
                if value and value.get("p") == partition:
                    stage.load(value.get("s") or key.decode(), SegmentState.from_dict(value))
        return stage

    def partition_of(self, segment_id: str) -> int:
        """The segment-slices partition that owns a segment: where the producer's partitioner sends its key."""
        return partition_for(segment_id.encode(), self.partitions)

    def _table_key(self, segment_id: str, partition: int) -> bytes:
        """The segments-table key of a segment's state on a slice partition. The table's changelog is
        partitioned by key, so a replica of a segment owned elsewhere gets a key that hashes to this partition
        (its state is then recovered with the partition's other segments)."""
        key = segment_id.encode()
        if self.partition_of(segment_id) == partition:
            return key
        cached = self._replica_keys.get((segment_id, partition))
        if cached is None:
            suffix = 0
            while partition_for(cached := key + b"@" + str(suffix).encode(), self.partitions) != partition:
                suffix += 1
            self._replica_keys[(segment_id, partition)] = cached
        return cached

    async def _publish(self, out: Outputs) -> None:
        self.counters["windows"] += len(out.windows)
        metrics.windows_closed(out.windows)
        for window in out.windows:
            await self.windows.send(key=window.segment_id.encode(), value=orjson.dumps(window.to_dict()))
        records = [alert.to_dict() for alert in out.alerts]
        for alert, record in zip(out.alerts, records, strict=True):
            await self.alerts.send(key=alert.segment_id.encode(), value=orjson.dumps(record))
        metrics.alerts_published(records)
        self.counters["alerts"] += sum(1 for alert in out.alerts if alert.kind == "opened")
        await self._send_triggers(out.triggers, False)
        if self.store and out.windows:
            snapshot = self._snapshot_window
            await self.store.save_snapshots([w for w in out.windows if w.window == snapshot], {})
        if self.store and records:
            await self.store.save_alerts(records)

    async def _send_triggers(self, triggers: list[RetargetTrigger], partial: bool) -> list[Any]:
        """Admit the triggers through the delivery policy and publish only the ``sent`` ones. Duplicates (an
        id another partition or worker already decided), capped and opted-out triggers are dropped; so are
        ``undelivered`` ones (Redis down: fail closed), counted in the store's counters and never retried.
        Admission comes before publishing: a crash in between loses those triggers rather than repeat them."""
        if not triggers:
            return []
        if isinstance(self.delivery, DeliveryPolicy):
            decisions = self.delivery.admit_all(triggers)
        else:
            decisions = await self.delivery.admit(triggers)
        metrics.triggers_decided(triggers, decisions)
        sent = []
        for trigger, decision in zip(triggers, decisions, strict=True):
            if not decision.sent:
                continue
            record = trigger.to_dict()
            if partial:
                record["enrichment"] = "partial"
            sent.append(await self.retarget.send(key=trigger.customer_id.encode(), value=orjson.dumps(record)))
        self.counters["triggers"] += len(sent)
        return sent

    async def send_dead_letter(self, message: Message, field: str, reason: str) -> None:
        self.counters["dead_letters"] += 1
        metrics.dead_lettered(message.topic, field, reason)
        headers = [("npspulse.reason", reason.encode()), ("npspulse.field", field.encode()),
                   ("npspulse.source.topic", message.topic.encode()),
                   ("npspulse.source.partition", str(message.partition).encode()),
                   ("npspulse.source.offset", str(message.offset).encode())]
        await self.dead_letter.send(key=message.key, value=message.value, headers=headers)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition aiokafka's default partitioner (Kafka's murmur2) picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def enrich(answer: SurveyResponse, stored: dict[str, str] | None) -> SurveyResponse:
    """Customer attributes from Redis fill what the answer does not say itself (the answer wins)."""
    if not stored:
        return answer
    attributes = {**stored, **answer.attributes}
    filled = {name: stored[name] for name in ("region", "channel") if getattr(answer, name) is None and name in stored}
    for name in ("region", "channel"):
        attributes.pop(name, None)
    return dataclasses.replace(answer, attributes=attributes, **filled)
