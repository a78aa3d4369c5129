"""``Pipeline._caught_up`` without Kafka: whether a source partition has been handled up to its high watermark.
It decides when held answers stop waiting for purchases and when a survey partition counts as idle."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from streams.pipeline import Pipeline

PURCHASES = TP("purchases", 0)


def _pipeline(*, highwater: int, position: int, committed: int | None) -> SimpleNamespace:
    async def fetch_position(tp: TP) -> int:
        return position

    consumer = SimpleNamespace(highwater=lambda tp: highwater, position=fetch_position,
                               _committed_offset={} if committed is None else {PURCHASES: committed})
    return SimpleNamespace(app=SimpleNamespace(consumer=consumer))


def caught_up(pipeline: SimpleNamespace, processed: int | None) -> bool:
    return asyncio.run(Pipeline._caught_up(pipeline, PURCHASES, processed))  # type: ignore[arg-type]


def test_records_fetched_but_not_handed_over_are_not_caught_up() -> None:
    # The fetcher has read to the end (position 10) but nothing was handled since the assignment: handling
    # resumes at the committed offset 4, so six purchases are still queued.
    assert not caught_up(_pipeline(highwater=10, position=10, committed=4), None)
    assert caught_up(_pipeline(highwater=10, position=10, committed=10), None)


def test_the_last_handled_offset_decides_once_there_is_one() -> None:
    pipeline = _pipeline(highwater=10, position=10, committed=4)
    assert not caught_up(pipeline, 8)
    assert caught_up(pipeline, 9)


def test_a_group_that_never_committed_falls_back_to_the_fetch_position() -> None:
    assert caught_up(_pipeline(highwater=10, position=10, committed=None), None)
    assert not caught_up(_pipeline(highwater=10, position=7, committed=None), None)
