"""Segment rules: which segments an answer belongs to, with stable, readable ids like ``region=EU|tier=gold``.

A segment definition is a cross of dimensions (``("region", "tier")``); the empty cross is ``all``. A
dimension's value comes from the answer (``region``, ``channel``, ``touchpoint``), from the customer profile
(``tier``, the value tier from purchases), from a numeric band over an attribute (``age_band``), or from any
key of the answer's ``attributes``. An answer missing a dimension's value is not in that segment.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from processors.events import SurveyResponse
from processors.memo import BoundedMemo

ALL_SEGMENT = "all"
PLACEMENT_CACHE_SIZE = 65_536
EVENT_DIMENSIONS = ("region", "channel", "touchpoint")
TIER_DIMENSION = "tier"
_ESCAPES = str.maketrans({"%": "%25", "|": "%7C", "=": "%3D"})


@dataclass(frozen=True, slots=True)
class BandDimension:
    """A derived dimension bucketing a numeric attribute: edges [25, 35] -> '<25', '25-34', '35+'."""

    name: str
    attribute: str
    edges: tuple[int, ...]

    def label(self, raw: str) -> str | None:
        try:
            value = float(raw)
        except ValueError:
            return None
        if value != value:  # NaN
            return None
        index = bisect.bisect_right(self.edges, value)
        if index == 0:
            return f"<{self.edges[0]}"
        if index == len(self.edges):
            return f"{self.edges[-1]}+"
        return f"{self.edges[index - 1]}-{self.edges[index] - 1}"


@dataclass(frozen=True, slots=True)
class SegmentationSettings:
    segments: tuple[tuple[str, ...], ...]
    bands: Mapping[str, BandDimension]


def escape_value(value: str) -> str:
    """Escape the characters that structure a segment id, so any value round-trips."""
    return value.translate(_ESCAPES)


def segment_id(pairs: Sequence[tuple[str, str]]) -> str:
    """``[("region", "EU"), ("tier", "gold")]`` -> ``region=EU|tier=gold``; no pairs -> ``all``."""
    if not pairs:
        return ALL_SEGMENT
    return "|".join(f"{name}={escape_value(value)}" for name, value in pairs)


def parse_segment_id(text: str) -> list[tuple[str, str]]:
    """Inverse of :func:`segment_id`."""
    if text == ALL_SEGMENT:
        return []
    pairs = []
    for part in text.split("|"):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{text!r} is not a segment id (expected name=value|name=value)")
        pairs.append((name, unquote(value)))
    return pairs


class Segmenter:
    """Computes an answer's segment memberships from the configured crosses."""

    def __init__(self, settings: SegmentationSettings) -> None:
        self._crosses = settings.segments
        self._bands = dict(settings.bands)
        self.dimensions: tuple[str, ...] = tuple(dict.fromkeys(name for cross in self._crosses for name in cross))
        # (dimension values, event dimensions, tier) -> (memberships, drivers of each): few distinct combinations
        self._placements: BoundedMemo[tuple[Any, ...], tuple[list[str], list[tuple[str, ...]]]] = \
            BoundedMemo(PLACEMENT_CACHE_SIZE)

    def dimension_values(self, answer: SurveyResponse, tier: str | None) -> dict[str, str]:
        """The value of every used dimension for this answer (missing ones left out)."""
        values: dict[str, str] = {}
        attributes = answer.attributes
        for name in self.dimensions:
            value: str | None
            if name in EVENT_DIMENSIONS:
                value = getattr(answer, name)
            elif name == TIER_DIMENSION:
                value = tier
            elif name in self._bands:
                band = self._bands[name]
                raw = attributes.get(band.attribute)
                value = band.label(raw) if raw is not None else None
            else:
                value = attributes.get(name)
            if value is not None:
                values[name] = value
        return values

    def memberships(self, answer: SurveyResponse, tier: str | None) -> list[str]:
        """Every segment id this answer belongs to, in config order."""
        return self.memberships_of(self.dimension_values(answer, tier))

    def placement(self, answer: SurveyResponse, tier: str | None) -> tuple[list[str], list[tuple[str, ...]]]:
        """The answer's memberships and, per membership, its driver values without the dimensions that segment
        fixes (never a driver of it: every answer has the same value). Computed once per distinct combination of
        values and shared, so do not mutate; the cache is cleared when it reaches PLACEMENT_CACHE_SIZE entries."""
        values = self.dimension_values(answer, tier)
        key = (tuple(values.items()), answer.region, answer.channel, answer.touchpoint, tier)
        placement = self._placements.get(key)
        if placement is None:
            drivers = self.driver_values(answer, tier, values)
            memberships, per_segment = [], []
            for cross in self._crosses:
                if all(name in values for name in cross):
                    memberships.append(segment_id([(name, values[name]) for name in cross]))
                    per_segment.append(tuple(key for key in drivers if key.partition("=")[0] not in cross)
                                       if cross else drivers)
            placement = self._placements.put(key, (memberships, per_segment))
        return placement

    def driver_values(self, answer: SurveyResponse, tier: str | None, values: Mapping[str, str]) -> tuple[str, ...]:
        """``"dimension=value"`` for the answer's touchpoint, channel, region, tier and configured dimensions:
        what an alert's drivers are chosen from."""
        out = {name: value for name in EVENT_DIMENSIONS if (value := getattr(answer, name)) is not None}
        if tier is not None:
            out[TIER_DIMENSION] = tier
        out.update(values)
        return tuple(f"{name}={escape_value(value)}" for name, value in sorted(out.items()))

    def memberships_of(self, values: Mapping[str, str]) -> list[str]:
        """Every segment id of an answer with these dimension values, in config order."""
        out = []
        for cross in self._crosses:
            pairs = []
            for name in cross:
                value = values.get(name)
                if value is None:
                    break
                pairs.append((name, value))
            else:
                out.append(segment_id(pairs))
        return out


class Hierarchy:
    """Which segment a segment's baseline shrinks toward: a cross's first dimension (``region=EU`` for
    ``region=EU|tier=gold``) when that family is configured, else ``all`` when configured; ``all`` has none."""

    def __init__(self, settings: SegmentationSettings) -> None:
        families = set(settings.segments)
        self._all = () in families
        self._singles = {cross[0] for cross in families if len(cross) == 1}
        # families whose segments are some other segment's parent
        self._parent_singles = {cross[0] for cross in families if len(cross) > 1 and cross[0] in self._singles}
        self._all_is_parent = self._all and any(cross for cross in families)

    def parent_of(self, segment: str) -> str | None:
        pairs = parse_segment_id(segment)
        if not pairs:
            return None
        if len(pairs) > 1 and pairs[0][0] in self._singles:
            return segment_id(pairs[:1])
        return ALL_SEGMENT if self._all else None

    def is_parent(self, segment: str) -> bool:
        """True for a segment that some configured segment shrinks toward."""
        pairs = parse_segment_id(segment)
        if not pairs:
            return self._all_is_parent
        return len(pairs) == 1 and pairs[0][0] in self._parent_singles

    @staticmethod
    def depth(segment: str) -> int:
        return 0 if segment == ALL_SEGMENT else segment.count("|") + 1
