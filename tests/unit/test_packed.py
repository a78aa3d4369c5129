"""Kept JSON bytes: the same bytes as orjson.dumps, in an object of their own size."""

import sys
import tracemalloc

import orjson

from processors.packed import dumps_kept


def test_kept_bytes_equal_orjson_dumps() -> None:
    value = {"p": 3, "refs": [["e-1", "c-1", 3, None, 12_345]], "share": 0.25}
    assert dumps_kept(value) == orjson.dumps(value)


def test_kept_bytes_hold_no_more_memory_than_their_length() -> None:
    value = [["e-1", "c-1", 3, "gold", 5]]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [dumps_kept(value) for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # each: the object (header + 25 bytes) and a list slot; orjson's own result would hold its >= 1 KB buffer
    assert held < 1000 * (sys.getsizeof(kept[0]) + 40)
