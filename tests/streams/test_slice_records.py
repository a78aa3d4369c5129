"""The segment-slices record format (streams.slice_records): round trip, the older formats, bad records."""

from __future__ import annotations

import orjson
import pytest

from processors.nps import NpsCounts
from processors.windows import Slice
from streams.slice_records import DECODE_ERRORS, decode_slices, encode_slices

REF = ("e1", "c1", 3, "gold", 1250)


def entries() -> list[tuple[str, int, Slice, bool]]:
    """``all`` at 60 s, owned here with one answer's ref; the same answer in ``region=EU``; a replica of ``all``."""
    return [
        ("all", 60_000, Slice(NpsCounts(2, 1, 0), [REF], {"region=EU": [2, 1], "channel=app": [3, 2]}), False),
        ("region=EU", 60_000, Slice(NpsCounts(1, 0, 0), [REF], {"channel=app": [1, 1]}, 1), False),
        ("all", 120_000, Slice(NpsCounts(0, 0, 4), [REF], {"channel=app": [4, 0]}), True),
    ]


def as_plain(decoded: list) -> list:
    return [(segment_id, start, piece.to_list()) for segment_id, start, piece in decoded]


def test_round_trip_names_each_string_and_ref_once() -> None:
    value = encode_slices([2, 41, 0], entries())
    data = orjson.loads(value)
    assert data["ids"] == ["all", "region=EU"] and data["keys"] == ["region=EU", "channel=app"]
    assert data["refs"] == [list(REF)]  # one answer in two segments: its ref once
    assert data["r"] == [0, 120_000, 0, 0, 4]  # a replica: counts only
    run, decoded = decode_slices(data)
    assert run == (2, 41, 0)
    assert as_plain(decoded) == [
        ("all", 60_000, [[2, 1, 0], [list(REF)], {"region=EU": [2, 1], "channel=app": [3, 2]}]),
        ("region=EU", 60_000, [[1, 0, 0], [list(REF)], {"channel=app": [1, 1]}, 1]),
        ("all", 120_000, [[0, 0, 4], [], {}]),
    ]
    assert decoded[0][2].refs[0] is decoded[1][2].refs[0]  # decoded once, shared by its segments' slices


def test_records_of_the_older_formats_still_decode() -> None:
    inline = {"run": [2, 41, 0], "v": [
        ["all", 60_000, [2, 1, 0], [list(REF)], {"region=EU": [2, 1], "channel=app": [3, 2]}],
        ["region=EU", 60_000, [1, 0, 0], [list(REF)], {"channel=app": [1, 1]}, 1]]}
    indexed = {"run": [2, 41, 0], "ids": ["all", "region=EU"], "keys": ["region=EU", "channel=app"], "v": [
        [0, 60_000, [2, 1, 0], [list(REF)], [0, 2, 1, 1, 3, 2]], [1, 60_000, [1, 0, 0], [list(REF)], [1, 1, 1], 1]]}
    current = orjson.loads(encode_slices([2, 41, 0], entries()[:2]))
    expected = as_plain(decode_slices(current)[1])
    assert as_plain(decode_slices(inline)[1]) == expected
    assert as_plain(decode_slices(indexed)[1]) == expected


@pytest.mark.parametrize("breaking", [
    lambda d: d["v"][0].__setitem__(0, 7),                # segment index out of range
    lambda d: d["v"][0].__setitem__(0, -1),               # negative index
    lambda d: d["v"][0][6].append(0),                     # drivers not in pairs
    lambda d: d["v"][0][6].__setitem__(1, "many"),        # a packed driver value that is not a number
    lambda d: d["v"][0][5].__setitem__(0, -1),            # a negative ref index
    lambda d: d["v"][0][5].__setitem__(0, 3),             # a ref index out of range
    lambda d: d["refs"][0].pop(),                         # a ref without its five fields
    lambda d: d["keys"].__setitem__(0, 5),                # a key that is not a string
    lambda d: d["v"][0].__setitem__(2, "2"),              # a count that is not a number
    lambda d: d["v"][0].__setitem__(3, -1),               # a negative count
    lambda d: d["r"].pop(),                               # replicas not in fives
    lambda d: d.pop("run"),
    lambda d: d["v"][0].pop(),                            # an entry without its drivers
])
def test_a_malformed_record_raises_a_decode_error(breaking) -> None:
    data = orjson.loads(encode_slices([2, 41, 0], entries()))
    breaking(data)
    with pytest.raises(DECODE_ERRORS):
        decode_slices(data)
