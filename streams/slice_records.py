"""The records of the internal segment-slices topic: one run of answers pre-aggregated per (segment, slice).

    {"run": [survey partition, last offset of the run, part],
     "ids": [segment id, ...], "keys": ["dimension=value", ...],
     "v": [[segment index, slice start, [detractors, passives, promoters], [answer ref, ...],
            [key index, answers, detractors, key index, ...], answers without customer attributes (if any)], ...]}

Segment ids and driver keys are written once per record and referred to by index: at a few answers per
(segment, slice) they were most of the bytes, and decoding them most of the segments agent's time. Records
without ``ids`` (from a worker before this format) hold the strings inline: ``[segment id, start, counts, refs,
{"dimension=value": [answers, detractors]}, without?]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from processors.nps import NpsCounts
from processors.windows import AnswerRef, Breakdown

# (segment id, slice start, counts, answer refs, driver breakdown, answers without customer attributes)
SliceEntry = tuple[str, int, NpsCounts, list[AnswerRef], Breakdown, int]
# what a malformed record raises while decoding
DECODE_ERRORS = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError)


def encode_slices(run: Sequence[int], entries: Sequence[Sequence[Any]]) -> bytes:
    """One record of ``entries`` ``[segment id, start, counts list, refs, breakdown, (without)]``."""
    ids: dict[str, int] = {}
    keys: dict[str, int] = {}
    rows = []
    for segment_id, start, counts, refs, breakdown, *without in entries:
        flat: list[int] = []
        for key, (n, d) in breakdown.items():
            flat += (keys.setdefault(key, len(keys)), n, d)
        row = [ids.setdefault(segment_id, len(ids)), start, counts, refs, flat]
        if without and without[0]:
            row.append(without[0])
        rows.append(row)
    return orjson.dumps({"run": list(run), "ids": list(ids), "keys": list(keys), "v": rows})


def decode_slices(data: dict[str, Any]) -> tuple[tuple[int, int, int], list[SliceEntry]]:
    """The run (survey partition, last offset, part) and the entries of a decoded record; raises one of
    DECODE_ERRORS if it is malformed."""
    source, run_end, part = (int(x) for x in data["run"])
    if "ids" not in data:
        return (source, run_end, part), [
            (str(segment_id), int(start), NpsCounts.from_list(counts), [tuple(ref) for ref in refs],
             {str(key): [int(n), int(d)] for key, (n, d) in breakdown.items()}, int(without[0]) if without else 0)
            for segment_id, start, counts, refs, breakdown, *without in data["v"]]
    ids, keys = _strings(data["ids"]), _strings(data["keys"])
    entries = []
    for index, start, counts, refs, flat, *without in data["v"]:
        values = iter(flat)
        breakdown = {keys[_index(k)]: [int(n), int(d)] for k, n, d in zip(values, values, values, strict=True)}
        entries.append((ids[_index(index)], int(start), NpsCounts.from_list(counts), [tuple(ref) for ref in refs],
                        breakdown, int(without[0]) if without else 0))
    return (source, run_end, part), entries  # type: ignore[return-value]


def _strings(items: list[Any]) -> list[str]:
    if not all(type(item) is str for item in items):
        raise TypeError("segment ids and driver keys must be strings")
    return items


def _index(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not an index: {value!r}")
    return value
