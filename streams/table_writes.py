"""Table writes that ``producer.flush()`` really waits for.

``table[key] = value`` queues the changelog record in Faust's ``ProducerBuffer``; ``producer.flush()`` drains that
buffer with ``flush_atmost``, which returns as soon as the buffer hands nothing to the Kafka client for 0.1 s
(a busy event loop), and only then waits for the client's own queue. A record still in Faust's buffer was not
waited for: an input acknowledged after that flush could be committed while the state that counts it was still in
memory, and a SIGKILL lost it (``tests/faults/test_kill.py`` lost one answer about one run in four).

:func:`put` stores the value locally as the table would and sends its changelog record straight to the Kafka client,
as the pipeline sends its output records: ``producer.flush()`` (which ends with the client's flush) then covers it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import faust


async def put(table: faust.Table, key: bytes, value: bytes) -> Awaitable[Any]:
    """Set ``table[key] = value``; returns the changelog record's delivery future. Like a table write, it must run
    with a current event (the RocksDB store files the key under that event's partition)."""
    table.data[key] = value
    return await table.changelog_topic.send(key=key, value=value, partition=table.partition_for_key(key),
                                            callback=table._on_changelog_sent)
