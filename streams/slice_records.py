"""The records of the internal segment-slices topic: one run of answers pre-aggregated per (segment, slice).

    {"run": [survey partition, last offset of the run, part],
     "ids": [segment id, ...], "keys": ["dimension=value", ...], "refs": [answer ref, ...],
     "v": [[segment index, slice start, detractors, passives, promoters, [ref index, ...],
            [key index, packed, key index, packed, ...], answers without customer attributes (if any)], ...],
     "r": [segment index, slice start, detractors, passives, promoters, segment index, ...]}

``v`` holds what the owner of a segment gets; ``r`` the counts-only replicas of parent segments (flat, five
numbers each). A driver value's ``packed`` is ``detractors * 2**32 + answers``, as an open :class:`Slice`
keeps it. Segment ids, driver keys and answer refs are written once per record and referred to by index:
an answer's ref sits in each of its segments' entries, and decoding the repeated copies (and a list per driver
value) was most of the segments agent's time at a few answers per (segment, slice). Two older formats still
decode (records in flight during an upgrade): with ``ids`` but inline refs and ``[key index, answers,
detractors, ...]`` breakdowns; and without ``ids``, strings inline: ``[segment id, start, [d, p, pr], refs,
{"dimension=value": [answers, detractors]}, without?]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from processors.nps import NpsCounts
from processors.windows import Slice

# (segment id, slice start, its answers there): what a record holds
SliceEntry = tuple[str, int, Slice]
# what a malformed record raises while decoding
DECODE_ERRORS = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError)
REPLICA_FIELDS = 5


def encode_slices(run: Sequence[int], entries: Sequence[tuple[str, int, Slice, bool]]) -> bytes:
    """One record of ``(segment id, start, slice, replica)`` entries; a replica's counts only are sent."""
    ids: dict[str, int] = {}
    keys: dict[str, int] = {}
    ref_index: dict[int, int] = {}  # id() of a ref object -> its index (an answer's ref is one shared tuple)
    refs: list[Any] = []
    rows = []
    replicas: list[int] = []
    for segment_id, start, piece, replica in entries:
        index = ids.setdefault(segment_id, len(ids))
        if replica:
            replicas += (index, start, piece.detractors, piece.passives, piece.promoters)
            continue
        indexes = []
        for ref in piece.refs or ():
            at = ref_index.get(id(ref))
            if at is None:
                at = ref_index[id(ref)] = len(refs)
                refs.append(ref)
            indexes.append(at)
        flat: list[int] = []
        if piece.drivers:
            for key, packed in piece.drivers.items():
                flat += (keys.setdefault(key, len(keys)), packed)
        row = [index, start, piece.detractors, piece.passives, piece.promoters, indexes, flat]
        if piece.without_attributes:
            row.append(piece.without_attributes)
        rows.append(row)
    return orjson.dumps({"run": list(run), "ids": list(ids), "keys": list(keys), "refs": refs, "v": rows,
                         "r": replicas})


def decode_slices(data: dict[str, Any]) -> tuple[tuple[int, int, int], list[SliceEntry]]:
    """The run (survey partition, last offset, part) and the entries of a decoded record, replicas last;
    raises one of DECODE_ERRORS if it is malformed."""
    source, run_end, part = (int(x) for x in data["run"])
    if "refs" in data:
        return (source, run_end, part), _decode(data)
    if "ids" not in data:
        return (source, run_end, part), [
            (str(segment_id), int(start), _slice(counts, refs, breakdown, without))
            for segment_id, start, counts, refs, breakdown, *without in data["v"]]
    ids, keys = _strings(data["ids"]), _strings(data["keys"])
    entries = []
    for index, start, counts, refs, flat, *without in data["v"]:
        values = iter(flat)
        breakdown = {keys[_index(k)]: [n, d] for k, n, d in zip(values, values, values, strict=True)}
        entries.append((ids[_index(index)], int(start), _slice(counts, refs, breakdown, without)))
    return (source, run_end, part), entries


def _decode(data: dict[str, Any]) -> list[SliceEntry]:
    ids, keys = _strings(data["ids"]), _strings(data["keys"])
    refs = [tuple(ref) for ref in data["refs"]]
    if any(len(ref) != 5 for ref in refs):
        raise ValueError("an answer ref has five fields")
    packed = Slice.packed
    entries: list[SliceEntry] = []
    for index, start, detractors, passives, promoters, ref_indexes, flat, *without in data["v"]:
        _counts(detractors, passives, promoters)
        if len(flat) % 2:
            raise ValueError("drivers come in (key, packed) pairs")
        drivers = {keys[_index(k)]: _count(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        entries.append((ids[_index(index)], _count(start), packed(
            detractors, passives, promoters, [refs[_index(i)] for i in ref_indexes],
            drivers, _count(without[0]) if without else 0)))
    flat_replicas = data["r"]
    if len(flat_replicas) % REPLICA_FIELDS:
        raise ValueError(f"replicas come in groups of {REPLICA_FIELDS}")
    for at in range(0, len(flat_replicas), REPLICA_FIELDS):
        index, start, detractors, passives, promoters = flat_replicas[at:at + REPLICA_FIELDS]
        _counts(detractors, passives, promoters)
        entries.append((ids[_index(index)], _count(start), packed(detractors, passives, promoters, None, None)))
    return entries


def _slice(counts: list[Any], refs: list[Any], breakdown: dict[str, list[Any]], without: list[Any]) -> Slice:
    """A slice from an older record's fields."""
    return Slice(NpsCounts.from_list([_count(n) for n in counts]), [tuple(ref) for ref in refs],
                 {str(key): [_count(n), _count(d)] for key, (n, d) in breakdown.items()},
                 _count(without[0]) if without else 0)


def _strings(items: list[Any]) -> list[str]:
    if not all(type(item) is str for item in items):
        raise TypeError("segment ids and driver keys must be strings")
    return items


def _index(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not an index: {value!r}")
    return value


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _counts(detractors: Any, passives: Any, promoters: Any) -> None:
    if not (type(detractors) is int and type(passives) is int and type(promoters) is int):
        raise TypeError("counts are whole numbers")
    if detractors < 0 or passives < 0 or promoters < 0:
        raise ValueError("counts are not negative")
