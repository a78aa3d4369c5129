"""A fix to faust-streaming's consumer (0.15.3) that the worker's counting depends on: seeking to the committed
offsets while the fetcher is still handing out a batch.

After a rebalance Faust's recovery resumes the stream partitions and calls ``Consumer.perform_seek`` while the
consumer's flow is already active (the flow is resumed to read the changelogs). The fetcher task can then hand out
records of a batch fetched from the previous position while the seek runs: they go into the agents' stream
queues, the seek resets the fetcher's read offsets to the committed ones, the fetcher goes on with the rest of
its batch (a jump past the reset offset, which Faust records as a "gap" and acknowledges), and the recovery then
clears the stream queues (``flow_control.resume()``: the queues are ``clear_on_resume``). The records cleared
were handed over, so the fetcher's read offset is past them: when the client fetches them again from the
committed offset they are dropped as already read. They are never processed, and the gap lets the next commit
pass them. A take-over lost the slices of 8 to 300 answers this way (docs/reliability.md).

The fix: ``perform_seek`` first stops the consumer's flow (the fetcher abandons its batch; the client fetches
it again after the seek) and waits until the fetcher is no longer handing out a record, then seeks. It leaves
the flow stopped: both callers in Faust's recovery resume it right after (clearing the queues first), and the
third caller, the fetcher itself, only seeks when the flow is already stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from faust.transport.consumer import Consumer

log = logging.getLogger("npspulse.faust_fixes")

DRAIN_WAIT_SECONDS = 30.0  # how long a seek waits for the fetcher to leave its batch (a record in hand)


def install() -> None:
    """Patch Faust's ``Consumer`` once per process."""
    if getattr(Consumer, "_npspulse_seek_fix", False):
        return
    original_getmany = Consumer.getmany
    original_perform_seek = Consumer.perform_seek

    async def getmany(self: Any, timeout: float) -> AsyncIterator[Any]:
        # True while the fetcher holds a record of this batch (handing it to the streams, then its read offset)
        try:
            async for item in original_getmany(self, timeout):
                self._npspulse_handing_out = True
                yield item
        finally:
            self._npspulse_handing_out = False

    async def perform_seek(self: Any) -> None:
        if self.flow_active:
            self.stop_flow()  # the fetcher leaves its batch at the next record; the callers resume the flow
        deadline = time.monotonic() + DRAIN_WAIT_SECONDS
        while getattr(self, "_npspulse_handing_out", False):
            if time.monotonic() > deadline:
                log.warning("seeking to the committed offsets while the fetcher still hands out a batch")
                break
            await asyncio.sleep(0.005)
        await original_perform_seek(self)

    Consumer.getmany = getmany  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    Consumer._npspulse_seek_fix = True  # type: ignore[attr-defined]
