"""The streaming pipeline: Faust agents as thin adapters around the processors' two stages.

    purchases ──> [purchases agent] ──> profiles table (keyed by customer)
    surveys ────> [surveys agent] ── validate, enrich (profiles table + Redis), segment memberships,
                        │            answer-driven triggers ──> retarget
                        └── pre-aggregated per (segment, 1-min slice) ──> segment-slices (one record per
                            partition and batch, on the partition that owns each segment)
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
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from aiokafka.partitioner import murmur2
from faust.streams import _current_event
from faust.types import TP, EventT, Message

from processors.config import Config
from processors.dedup import RecentEvents
from processors.delivery import DeliveryPolicy
from processors.engine import (
    CustomerStage,
    Outputs,
    SegmentStage,
    SegmentState,
    SliceAggregator,
    refuse_duplicate,
)
from processors.events import EventError, RetargetTrigger, SurveyResponse, TimeBounds, parse_event
from processors.memo import BoundedMemo
from processors.packed import dumps_kept
from processors.profiles import CustomerProfile
from processors.retarget import Retargeter
from processors.segments import Hierarchy
from processors.timeparse import DAY_MS, format_rfc3339_ms
from processors.watermarks import WatermarkTracker
from processors.windows import LateAnswer, Slice, WindowResult
from streams import metrics, records_out
from streams.delivery_store import DeliveryStore
from streams.redis_store import RedisStore
from streams.slice_records import DECODE_ERRORS, decode_slices, encode_slices
from streams.table_writes import put
from streams.topics import TopicNames

log = logging.getLogger("npspulse.pipeline")

BATCH_SIZE = 2000
BATCH_SECONDS = 0.05
WATERMARK_SECONDS = 1.0
SOURCE_IDLE_SECONDS = 3.0
MAX_PENDING_ANSWERS = 50_000
STATUS_SECONDS = 10.0
POSITION_TIMEOUT_SECONDS = 1.0
# Segment state is written to its table at most this often: a write serialises a segment's whole windows, so
# writing per batch made the segments agent the pipeline's bottleneck. Slice records are acknowledged only once
# a checkpoint holds their effect, and each table value records the last answer run it counted.
CHECKPOINT_SECONDS = 2.0
MAX_RUN_ENDS = 10_000  # run ends kept per survey partition while its commits lag (about 20M answers)
PROFILE_CACHE_SIZE = 100_000  # decoded customer profiles kept beside the profiles table
SEGMENT_CACHE_SIZE = 65_536  # segment ids whose partition and parenthood are remembered
SLICES_PER_RECORD = 500  # (segment, slice) aggregates per segment-slices record, well under Kafka's 1 MB limit


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
        self.dead_letter = self._topic(self.names.dead_letter)
        self.profiles = self._table("profiles", "customer purchase profiles (RFM)")
        # Written once per batch for every segment the batch touched, outside single-event context, so the
        # changelog partition comes from the key: the same murmur2 partitioner that keyed segment-slices.
        self.segments = self._table("segments", "per-segment windows and detector state", use_partitioner=True)
        # Per survey partition, where the runs forwarded since its last commit end: a restart cuts the same runs.
        self.survey_runs = self._table("survey-runs", "ends of forwarded answer runs", use_partitioner=True)
        retargeter = Retargeter(self.settings.campaigns)
        self._hierarchy = Hierarchy(self.settings.segmentation)
        self._replica_keys: BoundedMemo[tuple[bytes, int], bytes] = BoundedMemo(SEGMENT_CACHE_SIZE)
        self._known_changelogs: set[str] = set()  # changelog topics the producer's metadata lists
        # segment -> its slice partition (murmur2 of its id)
        self._owners: BoundedMemo[str, int] = BoundedMemo(SEGMENT_CACHE_SIZE)
        # segment -> the slice partitions its slices go to, and whether each holds a replica
        self._targets: BoundedMemo[str, tuple[tuple[int, bool], ...]] = BoundedMemo(SEGMENT_CACHE_SIZE)
        # the Redis snapshot keeps each segment's latest closed window of the first tumbling family
        self._snapshot_window = next(spec.name for spec in self.settings.windows.specs if spec.tumbling)
        self.customer_stage = CustomerStage(self.settings, retargeter)
        self._retargeter = retargeter
        # decoded profiles beside the table (which holds the same state): profile, last purchase's partition, offset
        self._profile_cache: BoundedMemo[bytes, tuple[CustomerProfile, int, int]] = BoundedMemo(PROFILE_CACHE_SIZE)
        self._held_purchases: list[EventT] = []  # applied purchases, acknowledged once their records are delivered
        self._recent: dict[TP, RecentEvents] = {}  # source partition -> event ids within the dedup horizon
        self._stages: dict[int, SegmentStage] = {}
        self._trackers: dict[int, WatermarkTracker] = {}
        self._stream_times: dict[int, int] = {}
        self._announced: dict[int, int] = {}  # survey partition -> slice boundary its last run's marker passed
        self._last_record: dict[int, float] = {}
        self._purchase_times: dict[int, int] = {}  # purchases partition -> max purchase time applied
        self._purchase_seen: dict[int, float] = {}  # purchases partition -> wall time of the last one
        self._purchase_offsets: dict[int, int] = {}  # purchases partition -> last offset processed
        self._survey_offsets: dict[int, int] = {}  # surveys partition -> last offset received
        # Per survey partition, in arrival order: answers waiting for their purchases of earlier days.
        self._pending: dict[int, deque[PendingAnswer]] = {}
        self._received = 0  # answers received since the last drain
        self._run_ends: dict[int, deque[int]] = {}  # survey partition -> ends of runs since its last commit
        self._replay_bounds: dict[int, deque[int]] = {}  # survey partition -> run ends stored before the restart
        self._dead_lettered: list[EventT] = []  # dead-lettered surveys, acknowledged after a flush
        self._draining = False
        self._in_flight: set[int] = set()  # survey partitions whose answers a drain is processing
        self._paused = False
        self._idle: dict[int, bool] = {}  # survey partition -> idle as last reported
        # Per slice partition: segment -> survey partition -> the last run its state counted, [last offset, part]
        # (stored with the state, so slices forwarded or delivered again after a crash count once).
        self._applied: dict[int, dict[str, dict[int, list[int]]]] = {}
        self._dirty: dict[int, set[str]] = {}  # slice partition -> segments changed since the checkpoint
        self._held: list[EventT] = []  # slices applied but not yet in a checkpoint: acknowledged after it
        self._checkpointed = time.monotonic()
        # Closed windows for the Redis snapshots, written at the checkpoint: a segment's windows of the last
        # seconds in one command each (per window, the writes were an eighth of the worker's time in a backlog).
        self._snapshots: list[WindowResult] = []
        self._started = time.monotonic()
        self.counters: dict[str, int] = {"surveys": 0, "purchases": 0, "dead_letters": 0, "late_answers": 0,
                                         "alerts": 0, "triggers": 0, "windows": 0}
        app.agent(self.purchases, name="npspulse.purchases")(self.process_purchases)
        app.agent(self.surveys, name="npspulse.surveys")(self.process_surveys)
        app.agent(self.slices, name="npspulse.segments")(self.process_slices)
        app.timer(WATERMARK_SECONDS)(self.send_watermarks)
        app.timer(BATCH_SECONDS)(self.drain_surveys)
        app.timer(WATERMARK_SECONDS)(self.acknowledge_purchases)
        app.timer(STATUS_SECONDS)(self.log_status)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

    def _topic(self, name: str, *, internal: bool = False) -> faust.TopicT:
        return self.app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                              partitions=self.partitions, replicas=self.config.kafka.replication_factor,
                              internal=internal)

    def _table(self, name: str, help_text: str, **options: Any) -> faust.Table:
        """A table of orjson bytes (:func:`processors.packed.dumps_kept`), encoded and decoded here: the changelog
        holds the bytes the "orjson" codec wrote before (so older changelogs recover), and a ``memory://`` table
        keeps these bytes, not a copy of the state as Python objects (several times smaller, docs/performance.md)."""
        # value_type=bytes makes the table, its store and its changelog topic all "raw" (a value_serializer set
        # after construction reaches the writes but not the changelog topic's decoding on recovery)
        return self.app.Table(name, partitions=self.partitions, key_type=bytes, value_type=bytes, help=help_text,
                              **options)

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
                for progress in (self._pending, self._stream_times, self._announced, self._last_record,
                                 self._survey_offsets, self._idle, self._run_ends, self._replay_bounds):
                    progress.pop(partition, None)
            elif tp.topic == self.names.purchases:
                for progress in (self._purchase_times, self._purchase_seen, self._purchase_offsets):
                    progress.pop(partition, None)
            elif tp.topic == self.names.segment_slices:
                # reloaded from the segments table on first use; what no checkpoint holds is redelivered
                for progress in (self._stages, self._trackers, self._applied, self._dirty):
                    progress.pop(partition, None)
        self._dead_lettered = [e for e in self._dead_lettered if e.message.tp not in revoked]
        self._held = [e for e in self._held if e.message.tp not in revoked]
        self._held_purchases = [e for e in self._held_purchases if e.message.tp not in revoked]
        for tp in revoked:
            self._recent.pop(tp, None)
        log.info("partitions revoked: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in revoked))

    async def _on_assigned(self, sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        self._started = time.monotonic()  # "quiet since" counts from the assignment, not from start-up
        self._paused = False  # a new assignment fetches every partition; the next drain pauses again if needed

    # ------------------------------------------------------------ purchases -> profiles

    async def process_purchases(self, stream: faust.StreamT) -> None:
        # Manual acks: a purchase is acknowledged once its profile's changelog record is delivered. Each profile
        # keeps the offset of the last purchase folded into it, so one redelivered after a crash counts once.
        async for event in stream.noack().events():
            message = event.message
            self._purchase_seen[message.partition] = time.monotonic()
            self._purchase_offsets[message.partition] = message.offset
            self._held_purchases.append(event)
            metrics.EVENTS_IN.labels(message.topic).inc()
            try:
                purchase = parse_event(event.value, self._bounds(), expected_type="purchase",
                                       default_time_ms=int(message.timestamp * 1000))
                key = purchase.customer_id.encode()
                profile, applied = self._profile_and_offset(key, message.partition)
                if message.offset > applied:
                    refuse_duplicate(self._recent_events(message.tp), purchase)
                    profile = profile or CustomerProfile()
                    self.customer_stage.purchase(purchase, profile)
            except EventError as error:
                await self.send_dead_letter(message, error.field, error.reason)
                continue
            if message.offset > applied:
                self.counters["purchases"] += 1
                self._profile_cache.put(key, (profile, message.partition, message.offset))
                await put(self.profiles, key, dumps_kept({**profile.to_dict(), "o": [message.partition, message.offset]}))
            if purchase.purchased_at > self._purchase_times.get(message.partition, -1):
                self._purchase_times[message.partition] = purchase.purchased_at
            if len(self._held_purchases) >= BATCH_SIZE:
                await self.acknowledge_purchases()

    async def acknowledge_purchases(self) -> None:
        """Acknowledge the purchases whose profile records are delivered (after every batch, and every second)."""
        if not self._held_purchases:
            return
        held, self._held_purchases = self._held_purchases, []
        await self.app.producer.flush()
        for event in held:
            event.ack()

    def _recent_events(self, tp: TP) -> RecentEvents:
        """The event ids seen on a source partition within the dedup horizon (a producer retry keeps its key,
        so it lands on the same partition). Kept in memory: ids seen before a restart are not remembered."""
        recent = self._recent.get(tp)
        if recent is None:
            recent = self._recent[tp] = RecentEvents(self.settings.dedup_horizon_ms)
        return recent

    def _profile(self, key: bytes) -> CustomerProfile | None:
        """The customer's profile (cache, then table); None for a customer without purchases."""
        return self._profile_and_offset(key, -1)[0]

    def _profile_and_offset(self, key: bytes, partition: int) -> tuple[CustomerProfile | None, int]:
        """The customer's profile and the offset of the last purchase from ``partition`` it holds (-1: none)."""
        cached = self._profile_cache.get(key)
        if cached is None:
            with as_current_event(None):  # RocksDB: look in every partition's store, not only the current event's
                raw = self.profiles.get(key)
            if not raw:
                return None, -1
            stored = orjson.loads(raw)
            source, offset = stored.get("o") or (-1, -1)
            cached = self._profile_cache.put(key, (CustomerProfile.from_dict(stored), int(source), int(offset)))
        profile, source, offset = cached
        return profile, offset if source == partition else -1

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
            refuse_duplicate(self._recent_events(message.tp), answer)
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
            ready: dict[int, list[PendingAnswer]] = {}
            for partition, queue in list(self._pending.items()):
                covered = -1  # the day start this partition's purchases are known to cover
                while queue:
                    at = queue[0].answer.answered_at
                    day_start = at - at % DAY_MS
                    if day_start > covered:
                        if not await self._purchases_cover(partition, day_start):
                            break
                        covered = day_start
                    ready.setdefault(partition, []).append(queue.popleft())
            # Until their slices are queued these answers are neither held nor covered by a stream time: a
            # partition with answers in flight must not look idle, or a marker could overtake its slices.
            self._in_flight = set(ready)
            runs = {partition: self._runs(partition, answers) for partition, answers in ready.items()}
            while any(runs.values()):
                await self._process_answers([queue.popleft() for queue in runs.values() if queue])
            if self._dead_lettered:
                await self.app.producer.flush()
                acks, self._dead_lettered = self._dead_lettered, []
                for event in acks:
                    event.ack()
            await self._apply_backpressure()
        finally:
            self._draining = False
            self._in_flight = set()

    def _runs(self, partition: int, answers: list[PendingAnswer]) -> deque[list[PendingAnswer]]:
        """A survey partition's ready answers cut into runs of at most BATCH_SIZE, never across the end of a run
        forwarded before the last restart (so a replayed run has the same offsets, and counts once)."""
        bounds = self._replay_bounds.get(partition)
        if bounds is None:
            raw = self.survey_runs.get(self._partition_key(b"survey-runs", partition))
            stored = orjson.loads(raw) if raw else []
            bounds = self._replay_bounds[partition] = deque(sorted(int(hi) for hi in stored))
        runs: deque[list[PendingAnswer]] = deque()
        run: list[PendingAnswer] = []
        for pending in answers:
            offset = pending.event.message.offset
            while bounds and bounds[0] < offset:
                bounds.popleft()
                if run:
                    runs.append(run)
                    run = []
            run.append(pending)
            if len(run) >= BATCH_SIZE:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        return runs

    async def _changelog_known(self, table: faust.Table) -> None:
        """Wait until the producer's metadata lists ``table``'s changelog topic. Faust partitions a record of a
        ``use_partitioner`` table eagerly, from that cached metadata; a fresh deployment's changelog topics,
        created at start-up, may be missing from it, and aiokafka then raises TypeError on every write (the
        agent crashed at each restart until the next metadata refresh, minutes later)."""
        topic = table.changelog_topic.get_topic_name()
        if topic not in self._known_changelogs:
            await self.app.producer._ensure_producer().partitions_for(topic)  # refreshes metadata until listed
            self._known_changelogs.add(topic)

    async def _record_runs(self, runs: list[list[PendingAnswer]]) -> None:
        """Store, before forwarding, where each run ends (every end after the partition's committed offset)."""
        await self._changelog_known(self.survey_runs)
        for run in runs:
            partition = run[0].partition
            tp = TP(self.names.surveys, partition)
            # Faust's last commit (the next offset to read); before any, every end is kept (up to a bound)
            committed = getattr(self.app.consumer, "_committed_offset", {}).get(tp) or 0
            ends = self._run_ends.setdefault(partition, deque(maxlen=MAX_RUN_ENDS))
            while ends and ends[0] < committed:
                ends.popleft()
            ends.append(run[-1].event.message.offset)
            with as_current_event(run[-1].event):
                await put(self.survey_runs, self._partition_key(b"survey-runs", partition), dumps_kept(list(ends)))
        await self.app.producer.flush()

    @metrics.timed("answers")
    async def _process_answers(self, runs: list[list[PendingAnswer]]) -> None:
        """Forward runs of answers (one run per survey partition) as segment slices and triggers; acknowledge
        the answers once all of it is delivered. Each slice record names its run, (survey partition, last
        offset), so a segment counts a run once however often it is forwarded."""
        await self._record_runs(runs)
        answers = [pending for run in runs for pending in run]
        attributes = await self.store.attributes([p.answer.customer_id for p in answers]) if self.store else {}
        partial = attributes is None
        triggers: list[RetargetTrigger] = []
        sent: list[Any] = []
        times: dict[int, int] = {}
        slice_ms = self.settings.windows.slice_ms
        for run in runs:
            source = run[0].partition
            aggregator = SliceAggregator(slice_ms)
            for pending in run:
                answer = pending.answer
                if attributes:
                    answer = enrich(answer, attributes.get(answer.customer_id))
                memberships, drivers, ref = self.customer_stage.placement(
                    answer, self._profile(answer.customer_id.encode()), triggers)
                aggregator.add_answer(memberships, drivers, answer.answered_at, answer.score, ref)
                if answer.answered_at > times.get(source, -1):
                    times[source] = answer.answered_at
            sent.extend(await self._send_slices(aggregator.aggregates(without_attributes=partial), source,
                                                run[-1].event.message.offset))
        self.counters["surveys"] += len(answers)
        sent.extend(await self._send_triggers(triggers, partial))
        # Only after the slices are queued: a watermark marker never overtakes the data it covers.
        for partition, latest in times.items():
            if latest > self._stream_times.get(partition, -1):
                self._stream_times[partition] = latest
        await self._announce_stream_times(times)
        # Delivered before acknowledged, so a stop or crash loses nothing. Waits for these records only,
        # not for the whole producer (the purchases agent's changelog may have a long queue).
        await asyncio.gather(*sent)
        for pending in answers:
            pending.event.ack()

    async def _send_slices(self, aggregates: dict[tuple[str, int], Slice], source: int, last_offset: int) -> list[Any]:
        """One run's answers pre-aggregated per (segment, slice), sent as one record per slice partition (in
        parts) rather than one per slice: the segments agent decodes a few large records, not thousands. A slice
        carries the number of its answers segmented without customer attributes when that run was segmented
        without them (Redis unreachable): the count travels with the counts it is part of."""
        by_partition: dict[int, list[tuple[str, int, Slice, bool]]] = {}
        for (segment_id, start), piece in aggregates.items():
            for partition, replica in self._slice_targets(segment_id):
                by_partition.setdefault(partition, []).append((segment_id, start, piece, replica))
        sent = []
        for partition, entries in sorted(by_partition.items()):
            for part, first in enumerate(range(0, len(entries), SLICES_PER_RECORD)):
                value = encode_slices([source, last_offset, part], entries[first:first + SLICES_PER_RECORD])
                sent.append(await records_out.send(self.app, self.names.segment_slices, None, value, partition))
        return sent

    async def _apply_backpressure(self) -> None:
        waiting = sum(len(queue) for queue in self._pending.values())
        if not self._paused and waiting >= MAX_PENDING_ANSWERS:
            self._paused = True
            await self._fetch_surveys(False)
            log.info("%d answers wait for purchases of earlier days; survey partitions paused", waiting)
        elif self._paused and waiting <= MAX_PENDING_ANSWERS // 2:
            self._paused = False
            await self._fetch_surveys(True)
            log.info("%d answers wait for purchases of earlier days; survey partitions resumed", waiting)

    async def _fetch_surveys(self, fetch: bool) -> None:
        """Pause or resume fetching the assigned survey partitions in the Kafka client itself: records it
        fetched but did not hand over are fetched again on resume. (Faust's ``pause_partitions`` drops the
        records of a partition it pauses mid-batch while the client's position moves past them: those
        answers were lost to the worker and its offset commits stalled at the gap.)"""
        thread = self.app.consumer._thread  # Faust's aiokafka consumer runs on this thread's event loop
        topic = self.names.surveys

        def apply() -> None:
            client = thread._ensure_consumer()
            surveys = [tp for tp in client.assignment() if tp.topic == topic]
            (client.resume if fetch else client.pause)(*surveys)
        await thread.call_thread(apply)

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

    async def _announce_stream_times(self, partitions: Iterable[int]) -> None:
        """After a run is forwarded: each of its survey partitions' stream time to every slice partition, when
        the watermark it allows (stream time - grace) has passed a slice boundary since the last such marker:
        only then can the segment side close anything. A slice then closes as soon as its closing answer is
        forwarded, not at the next ``send_watermarks`` (on average half a second later). Queued after the run's
        slices on the same producer and partitions, so it never overtakes them. Only while the timer last reported
        every assigned survey partition active: then the marker changes no idle flag, it only brings forward a
        stream time the timer would send within a second. Otherwise (a partition idle, or not reported since the
        assignment) the timer alone decides, as before: announcing one partition active while another is still
        marked idle would let the watermark jump past that other partition's answers (the likely cause of a run
        of tests/faults/test_services.py's broker restart with 2,198 late answers, before this condition)."""
        sources = [tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.names.surveys]
        if not sources or any(self._idle.get(source) is not False for source in sources):
            return
        slice_ms, grace_ms = self.settings.windows.slice_ms, self.settings.windows.grace_ms
        for source in partitions:
            stream_time = self._stream_times.get(source)
            if stream_time is None:
                continue
            boundary = (stream_time - grace_ms) // slice_ms
            if boundary <= self._announced.get(source, boundary - 1):
                continue
            self._announced[source] = boundary
            value = orjson.dumps({"m": source, "t": stream_time, "idle": False})
            for partition in range(self.partitions):
                await self.slices.send(key=b"", value=value, partition=partition)

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
        """Everything in the partition up to its high watermark has been handled. ``processed``: the last offset
        this worker handled since the assignment. Without one, handling resumes at the committed offset: the fetch
        position is no measure, as it passes records fetched but not yet handed to an agent (a partition then
        looked caught up with its records still queued; answers could be segmented before their customer's
        purchases). Only a group that never committed falls back to the fetch position."""
        try:
            highwater = self.app.consumer.highwater(tp)
            if processed is not None:
                position = processed + 1
            elif (committed := getattr(self.app.consumer, "_committed_offset", {}).get(tp)) is not None:
                position = committed
            else:
                # aiokafka's position() waits until the fetcher knows the position, which a paused partition
                # (backpressure, re-applied on assignment) may never get: bounded, or the timer calling this hangs.
                position = await asyncio.wait_for(self.app.consumer.position(tp), POSITION_TIMEOUT_SECONDS)
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
        assigned = self.app.consumer.assignment()
        generation = self.app.consumer_generation_id
        stale = 0
        for event in batch:
            message = event.message
            if message.tp not in assigned:
                continue  # revoked while this batch was taken: its next owner reads it from the commit
            if message.generation_id != generation:
                # Taken before a rebalance that kept its partition: Faust clears its stream queues on a rebalance
                # but not the take buffer, and reads the partition again from the committed offset. Handled now,
                # it would come before the records it follows, whose runs would then be skipped as counted. The
                # reference taken here is never released, so this copy is not acknowledged either.
                message.incref()
                stale += 1
                continue
            message.incref()  # Faust acknowledges the batch; this reference holds it until the checkpoint
            self._held.append(event)
            partition = message.partition
            stage = self._stage(partition)
            changed = touched.setdefault(partition, set())
            try:
                data = orjson.loads(event.value)
                if "m" in data:
                    self._trackers[partition].update(int(data["m"]), data["t"], bool(data["idle"]))
                    continue
                (source, run_end, part), entries = decode_slices(data)
            except DECODE_ERRORS as error:
                await self.send_dead_letter(message, "", f"malformed segment slice: {type(error).__name__}")
                continue
            applied = self._applied.get(partition)
            if applied is None:
                continue  # revoked during an await above
            run = [run_end, part]
            fresh: dict[str, bool] = {}  # segment -> run not yet counted (a record holds several slices of one)
            for segment_id, start, piece in entries:
                if (new := fresh.get(segment_id)) is None:
                    runs = applied.setdefault(segment_id, {})
                    new = fresh[segment_id] = run > runs.get(source, [-1, -1])
                    if new:
                        runs[source] = run
                if not new:
                    continue  # a run forwarded again after a restart: the checkpointed state already counts it
                try:
                    stage.add_slice(segment_id, start, piece)
                except LateAnswer:
                    if not stage.owns(segment_id):
                        continue  # a replica: the owner partition reports it
                    self.counters["late_answers"] += piece.total
                    metrics.LATE.inc(piece.total)
                    await self.send_dead_letter(message, "answered_at", (
                        f"late: {piece.total} answer(s) of segment {segment_id} for a slice closed before they "
                        "arrived (beyond the grace period)"), value=orjson.dumps([segment_id, start, *piece.to_list()]))
                    continue
                changed.add(segment_id)
        if stale:
            log.info("%d segment-slices records taken before the last rebalance left to their redelivery", stale)
        out = Outputs()
        for partition, changed in touched.items():
            stage = self._stages.get(partition)
            if stage is None:
                continue  # revoked meanwhile
            watermark = self._trackers[partition].watermark()
            if watermark is not None:
                out.extend(stage.advance(watermark))
                changed.update(stage.last_closed)
            self._dirty.setdefault(partition, set()).update(changed)
        await self._publish(out)
        if time.monotonic() - self._checkpointed >= CHECKPOINT_SECONDS:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Write every changed segment's state with the last run it counted from each survey partition, wait
        until the changelog and the outputs are delivered, then acknowledge the slice records it holds. A crash
        before this point redelivers those records (and maybe forwards their answers again): the stored runs
        let each through once."""
        self._checkpointed = time.monotonic()
        if self.store and self._snapshots:
            snapshots, self._snapshots = self._snapshots, []
            await self.store.save_snapshots(snapshots, {})
        await self._changelog_known(self.segments)
        dirty, self._dirty = self._dirty, {}
        held, self._held = self._held, []
        of_partition = {event.message.partition: event for event in held}
        try:
            for partition, changed in dirty.items():
                stage, applied = self._stages.get(partition), self._applied.get(partition)
                if stage is None or applied is None or partition not in of_partition:
                    continue  # revoked: its next owner replays from the commit
                with as_current_event(of_partition[partition]):
                    for segment_id in changed:
                        runs = {str(source): run for source, run in applied.get(segment_id, {}).items()}
                        await put(self.segments, self._table_key(segment_id, partition), dumps_kept({
                            "p": partition, "s": segment_id, "o": runs, **stage.segments[segment_id].stored()}))
            await self.app.producer.flush()
        except BaseException:
            # Not checkpointed: keep holding (an agent restarted by Faust checkpoints them next time), or the
            # records would never be acknowledged and the partition's commits would stop here.
            for partition, changed in dirty.items():
                self._dirty.setdefault(partition, set()).update(changed)
            self._held[:0] = held
            raise
        for event in held:
            event.ack()

    def _stage(self, partition: int) -> SegmentStage:
        stage = self._stages.get(partition)
        if stage is None:
            stage = self._stages[partition] = SegmentStage(
                self.settings, self._retargeter, owns=lambda segment_id: self.partition_of(segment_id) == partition)
            self._trackers[partition] = WatermarkTracker(self.partitions, self.settings.windows.grace_ms)
            applied = self._applied[partition] = {}
            for key, raw in list(self.segments.items()):
                # a key lies on the changelog partition of its state's slice partition (``_table_key``)
                if not raw or partition_for(key, self.partitions) != partition:
                    continue
                value = orjson.loads(raw)
                if value.get("p") == partition:
                    segment_id = value.get("s") or key.decode()
                    stage.load(segment_id, SegmentState.from_dict(value))
                    applied[segment_id] = {int(source): [int(end), int(part)]
                                           for source, (end, part) in (value.get("o") or {}).items()}
        return stage

    def partition_of(self, segment_id: str) -> int:
        """The segment-slices partition that owns a segment: where the producer's partitioner sends its key."""
        partition = self._owners.get(segment_id)
        if partition is None:
            partition = self._owners.put(segment_id, partition_for(segment_id.encode(), self.partitions))
        return partition

    def _slice_targets(self, segment_id: str) -> tuple[tuple[int, bool], ...]:
        """The slice partitions a segment's slices go to, each with whether it is a replica there. Every slice
        partition keeps a replica of a parent segment: its children there need its baseline and open alert. A
        replica emits nothing, so it gets the counts only: answers kept for triggers and revenue, the driver
        breakdown of alert evidence and the enrichment mark go to the owner."""
        targets = self._targets.get(segment_id)
        if targets is None:
            owner = self.partition_of(segment_id)
            if self._hierarchy.is_parent(segment_id):
                targets = tuple((partition, partition != owner) for partition in range(self.partitions))
            else:
                targets = ((owner, False),)
            self._targets.put(segment_id, targets)
        return targets

    def _table_key(self, segment_id: str, partition: int) -> bytes:
        """The segments-table key of a segment's state on a slice partition. The table's changelog is
        partitioned by key, so a replica of a segment owned elsewhere gets a key that hashes to this partition
        (its state is then recovered with the partition's other segments)."""
        key = segment_id.encode()
        return key if self.partition_of(segment_id) == partition else self._partition_key(key, partition)

    def _partition_key(self, key: bytes, partition: int) -> bytes:
        """``key`` with the shortest suffix that makes the murmur2 partitioner pick ``partition``."""
        cached = self._replica_keys.get((key, partition))
        if cached is None:
            suffix = 0
            while partition_for(cached := key + b"@" + str(suffix).encode(), self.partitions) != partition:
                suffix += 1
            self._replica_keys.put((key, partition), cached)
        return cached

    async def _publish(self, out: Outputs) -> None:
        # Alerts first: a slice boundary that is also a window boundary closes a window of every segment, and
        # queueing those (hundreds) before the alerts delayed the alerts by tens of milliseconds.
        records = [alert.to_dict() for alert in out.alerts]
        for alert, record in zip(out.alerts, records, strict=True):
            await records_out.send(self.app, self.names.alerts, alert.segment_id.encode(), orjson.dumps(record))
        self.counters["windows"] += len(out.windows)
        metrics.windows_closed(out.windows)
        for window in out.windows:
            await records_out.send(self.app, self.names.windows, window.segment_id.encode(),
                                   orjson.dumps(window.to_dict()))
        metrics.alerts_published(records)
        self.counters["alerts"] += sum(1 for alert in out.alerts if alert.kind == "opened")
        await self._send_triggers(out.triggers, False)
        if self.store:
            snapshot = self._snapshot_window
            self._snapshots.extend(w for w in out.windows if w.window == snapshot)
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
            sent.append(await records_out.send(self.app, self.names.retarget, trigger.customer_id.encode(),
                                               orjson.dumps(record)))
        self.counters["triggers"] += len(sent)
        return sent

    async def send_dead_letter(self, message: Message, field: str, reason: str, *, value: bytes | None = None) -> None:
        """The message's bytes (or ``value``: the offending part of it) with the reason and its source."""
        self.counters["dead_letters"] += 1
        metrics.dead_lettered(message.topic, field, reason)
        headers = [("npspulse.reason", reason.encode()), ("npspulse.field", field.encode()),
                   ("npspulse.source.topic", message.topic.encode()),
                   ("npspulse.source.partition", str(message.partition).encode()),
                   ("npspulse.source.offset", str(message.offset).encode())]
        await self.dead_letter.send(key=message.key, value=message.value if value is None else value, headers=headers)


@contextmanager
def as_current_event(event: EventT | None) -> Iterator[None]:
    """Use tables as if processing ``event``: Faust's RocksDB store keeps a database per partition and, for a table
    without ``use_partitioner``, files a key under the partition of the current event and looks it up *only* in
    that partition's database. Writes after a batch run with none current (or one of another partition), so they
    name their event. ``None``: no event current, so a read finds a key whatever partition it was filed under (the
    store uses its key index, or every assigned partition's database). The surveys agent segments the answers of
    every survey partition in one drain, run from its own loop with the last answer it received current: a
    customer's profile, filed under the partition of their purchases, read as missing when that answer was of
    another partition (tier ``none``; a restarted worker, whose decoded-profile cache is empty, segmenting a
    backlog)."""
    token = _current_event.set(None if event is None else weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


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
