"""The segment-slices record format (streams.slice_records): round trip, the older inline format, bad records."""

from __future__ import annotations

import orjson
import pytest

from processors.nps import NpsCounts
from streams.slice_records import DECODE_ERRORS, decode_slices, encode_slices

ENTRIES = [
    ["all", 60_000, [2, 1, 0], [["e1", "c1", 3, "gold", 1250]], {"region=EU": [2, 1], "channel=app": [3, 2]}],
    ["region=EU", 60_000, [1, 0, 0], [], {"channel=app": [1, 1]}, 1],
    ["all", 120_000, [0, 0, 4], [], {}],
]


def test_round_trip_names_each_string_once() -> None:
    value = encode_slices([2, 41, 0], ENTRIES)
    data = orjson.loads(value)
    assert data["ids"] == ["all", "region=EU"] and data["keys"] == ["region=EU", "channel=app"]
    run, entries = decode_slices(data)
    assert run == (2, 41, 0)
    assert entries == [
        ("all", 60_000, NpsCounts(2, 1, 0), [("e1", "c1", 3, "gold", 1250)], {"region=EU": [2, 1], "channel=app": [3, 2]},
         0),
        ("region=EU", 60_000, NpsCounts(1, 0, 0), [], {"channel=app": [1, 1]}, 1),
        ("all", 120_000, NpsCounts(0, 0, 4), [], {}, 0),
    ]


def test_records_of_the_older_inline_format_still_decode() -> None:
    old = {"run": [2, 41, 0], "v": [[*ENTRIES[0]], [*ENTRIES[1]]]}
    new = orjson.loads(encode_slices([2, 41, 0], ENTRIES[:2]))
    assert decode_slices(old) == decode_slices(new)


@pytest.mark.parametrize("breaking", [
    lambda d: d["v"][0].__setitem__(0, 7),                # segment index out of range
    lambda d: d["v"][0].__setitem__(0, -1),               # negative index
    lambda d: d["v"][0][4].append(0),                     # breakdown not in triples
    lambda d: d["keys"].__setitem__(0, 5),                # a key that is not a string
    lambda d: d["v"][0][4].__setitem__(1, "many"),        # a count that is not a number
    lambda d: d.pop("run"),
    lambda d: d["v"][0].__setitem__(2, [1, 2]),           # counts need three numbers
])
def test_a_malformed_record_raises_a_decode_error(breaking) -> None:
    data = orjson.loads(encode_slices([2, 41, 0], ENTRIES))
    breaking(data)
    with pytest.raises(DECODE_ERRORS):
        decode_slices(data)
