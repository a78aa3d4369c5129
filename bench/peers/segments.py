"""The bench workload's segment memberships, computed from one survey dict the way npspulse does (the same
ids: ``all``, ``region=EU``, ``region=EU|channel=app``), read from bench/npspulse-bench.toml. Peers only."""

from __future__ import annotations

import bisect
import itertools
import tomllib
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "npspulse-bench.toml"
_settings = tomllib.loads(CONFIG.read_text())
CROSSES = [tuple(part.strip() for part in family.split(" x ")) if family != "all" else ()
           for family in _settings["segmentation"]["segments"]]
_BAND = _settings["dimensions"]["age_band"]
_EDGES = _BAND["edges"]
_LABELS = [f"<{_EDGES[0]}", *(f"{low}-{high - 1}" for low, high in itertools.pairwise(_EDGES)),
           f"{_EDGES[-1]}+"]


def memberships(answer: dict) -> list[str]:
    attributes = answer["attributes"]
    values = {"region": answer["region"], "channel": answer["channel"], "touchpoint": answer["touchpoint"],
              "membership": attributes["membership"],
              "age_band": _LABELS[bisect.bisect_right(_EDGES, float(attributes[_BAND["attribute"]]))]}
    return ["|".join(f"{name}={values[name]}" for name in cross) or "all" for cross in CROSSES]
