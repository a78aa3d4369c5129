"""``streams.faust_fixes`` without Kafka: Faust's recovery seeks to the committed offsets while the fetcher may
still be handing out a batch fetched from the previous position. Without the fix the fetcher went on after the
seek, so its read offset ended past records that the recovery then cleared from the stream queues: fetched
again from the committed offset, they were dropped as already read (the take-over fault test lost answers)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
from faust.types import TP

from streams import faust_fixes

SLICES = TP("flt.segment-slices", 0)
COMMITTED = 10


def _consumer(batch: list[int]) -> Any:
    faust_fixes.install()
    app = faust.App("faust-seek-test", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)
    consumer = app.consumer
    fetches = [{SLICES: [SimpleNamespace(offset=offset) for offset in batch]}]

    async def wait_next_records(timeout: float) -> tuple[Any, Any]:
        if not consumer.flow_active:
            await consumer.can_resume_flow.wait()
        return (fetches.pop(0) if fetches else {}), {SLICES}

    async def seek_to_committed() -> dict[TP, int]:
        await asyncio.sleep(0.02)  # the committed offsets come back from the broker
        return {SLICES: COMMITTED}

    consumer._wait_next_records = wait_next_records
    consumer._to_message = lambda tp, record: record
    consumer.highwater = lambda tp: None
    consumer.seek_to_committed = seek_to_committed
    return consumer


async def _fetcher(consumer: Any, handed: list[int], stop: asyncio.Event) -> None:
    """Faust's fetcher loop in short: hand each record to the streams (slowly: a full stream buffer), then
    record it as read."""
    while not stop.is_set():
        async for tp, message in consumer.getmany(timeout=0.01):
            await asyncio.sleep(0.005)
            handed.append(message.offset)
            consumer._read_offset[tp] = message.offset
        await asyncio.sleep(0)


def test_a_seek_waits_until_the_fetcher_has_left_its_batch() -> None:
    async def scenario() -> tuple[list[int], list[int], Any, Any]:
        consumer = _consumer(list(range(COMMITTED, COMMITTED + 40)))
        handed: list[int] = []
        stop = asyncio.Event()
        fetcher = asyncio.ensure_future(_fetcher(consumer, handed, stop))
        while len(handed) < 3:
            await asyncio.sleep(0.001)
        await consumer.perform_seek()  # as Faust's recovery does, with the flow active
        at_seek = list(handed)
        read_offset = consumer._read_offset[SLICES]
        await asyncio.sleep(0.1)  # the recovery then clears the stream queues and resumes the flow
        stop.set()
        consumer.resume_flow()
        await asyncio.wait_for(fetcher, 5)
        return handed, at_seek, read_offset, consumer._read_offset[SLICES]

    handed, at_seek, read_offset, final_read_offset = asyncio.run(scenario())
    # Nothing was handed out after the seek: everything from the committed offset is fetched (and handed) again.
    assert handed == at_seek
    assert len(handed) < 40
    assert read_offset == final_read_offset == COMMITTED
