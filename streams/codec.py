"""The orjson codec, registered with Faust as "orjson" and used for every table and JSON topic value."""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs


class OrjsonCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


def register() -> None:
    if "orjson" not in codecs.codecs:
        codecs.register("orjson", OrjsonCodec())
