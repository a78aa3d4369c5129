"""The worker's checkpoint (``Pipeline.checkpoint``) without Kafka: slice records are acknowledged only once the
segment states holding them are written and flushed; a failed write keeps holding them for the next one. And its
bounded cache of decoded customer profiles."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from processors.engine import SegmentState
from processors.nps import NpsCounts
from processors.windows import WindowResult
from streams.pipeline import Pipeline


class Record:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)
        self.acked = False

    def ack(self) -> None:
        self.acked = True


class Table:
    """What ``streams.table_writes.put`` uses of a Faust table: its store and its changelog topic."""

    def __init__(self, fail: bool) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog: dict[bytes, bytes] = {}
        self.changelog_topic = self
        self.fail = fail

    def partition_for_key(self, key: bytes) -> None:
        return None

    def _on_changelog_sent(self, future: object) -> None:
        return None

    async def send(self, *, key: bytes, value: bytes, partition: None, callback: object) -> asyncio.Future:
        if self.fail:
            raise TypeError("changelog partition unknown")
        self.changelog[key] = value
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


class Store:
    """What the checkpoint uses of ``RedisStore``: the snapshot write, recorded."""

    def __init__(self) -> None:
        self.saved: list[list[WindowResult]] = []

    async def save_snapshots(self, windows: list[WindowResult], spike_states: dict) -> None:
        self.saved.append(list(windows))


def _pipeline(fail: bool) -> SimpleNamespace:
    async def nothing(*args: object) -> None:
        return None

    stage = SimpleNamespace(segments={"all": SegmentState()})
    pipeline = SimpleNamespace(_checkpointed=0.0, _dirty={0: {"all"}}, _held=[Record(0), Record(0)],
                               _stages={0: stage}, _applied={0: {"all": {1: [41, 0]}}}, segments=Table(fail),
                               app=SimpleNamespace(producer=SimpleNamespace(flush=nothing)),
                               _changelog_known=nothing, _table_key=lambda segment, partition: segment.encode(),
                               store=Store(), _snapshots=[])
    return pipeline


def test_a_checkpoint_writes_each_changed_segment_then_acknowledges_its_records() -> None:
    pipeline = _pipeline(fail=False)
    held = list(pipeline._held)
    asyncio.run(Pipeline.checkpoint(pipeline))  # type: ignore[arg-type]
    stored = orjson.loads(pipeline.segments.changelog[b"all"])  # orjson bytes, as the changelog holds them
    assert pipeline.segments.data[b"all"] == pipeline.segments.changelog[b"all"]
    assert stored["o"] == {"1": [41, 0]} and stored["p"] == 0 and stored["s"] == "all"
    assert all(record.acked for record in held) and pipeline._held == [] and pipeline._dirty == {}


def test_a_checkpoint_writes_the_windows_closed_since_the_last_one_to_the_snapshots() -> None:
    pipeline = _pipeline(fail=False)
    closed = [WindowResult("all", "5m", start, start + 300_000, NpsCounts(1, 0, 2)) for start in (0, 300_000)]
    pipeline._snapshots.extend(closed)
    asyncio.run(Pipeline.checkpoint(pipeline))  # type: ignore[arg-type]
    assert pipeline.store.saved == [closed] and pipeline._snapshots == []
    asyncio.run(Pipeline.checkpoint(pipeline))  # type: ignore[arg-type]
    assert pipeline.store.saved == [closed]  # nothing new: no write


def test_a_failed_checkpoint_keeps_its_records_held_and_its_segments_dirty() -> None:
    pipeline = _pipeline(fail=True)
    held = list(pipeline._held)
    with pytest.raises(TypeError):
        asyncio.run(Pipeline.checkpoint(pipeline))  # type: ignore[arg-type]
    assert not any(record.acked for record in held)
    assert pipeline._held == held and pipeline._dirty == {0: {"all"}}
    pipeline.segments.fail = False
    asyncio.run(Pipeline.checkpoint(pipeline))  # type: ignore[arg-type]
    assert all(record.acked for record in held) and b"all" in pipeline.segments.changelog


def test_decoded_profiles_are_bounded_and_an_evicted_one_is_read_back_from_the_table() -> None:
    from processors.memo import BoundedMemo
    from processors.profiles import CustomerProfile

    stored = {key: orjson.dumps({**CustomerProfile().to_dict(), "o": [1, offset]})
              for offset, key in enumerate([b"a", b"b", b"c"])}
    pipeline = SimpleNamespace(_profile_cache=BoundedMemo(2), profiles=stored)
    for key in (b"a", b"b", b"c"):
        Pipeline._profile_and_offset(pipeline, key, 1)  # type: ignore[arg-type]
        assert len(pipeline._profile_cache) <= 2
    assert b"c" in pipeline._profile_cache and b"a" not in pipeline._profile_cache
    profile, offset = Pipeline._profile_and_offset(pipeline, b"a", 1)  # type: ignore[arg-type]
    assert profile is not None and offset == 0  # the last purchase it holds, from the table
