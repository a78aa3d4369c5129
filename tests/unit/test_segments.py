"""Segment memberships and ids (processors.segments)."""

from __future__ import annotations

import random

import pytest

from processors.config import Config
from processors.events import SurveyResponse
from processors.segments import (
    BandDimension,
    SegmentationSettings,
    Segmenter,
    escape_value,
    parse_segment_id,
    segment_id,
)

AT = 1_763_979_300_000  # 2025-11-24T10:15:00Z
AGE = BandDimension("age_band", "age", (25, 35, 50, 65))


def answer(**fields: object) -> SurveyResponse:
    return SurveyResponse(event_id="e-1", customer_id="c-1", score=8, answered_at=AT, **fields)  # type: ignore[arg-type]


def test_default_crosses(default_config: Config) -> None:
    segmenter = Segmenter(default_config.engine.segmentation)
    got = segmenter.memberships(answer(region="EU", channel="web", touchpoint="checkout"), "gold")
    assert got == ["all", "region=EU", "channel=web", "touchpoint=checkout", "tier=gold", "region=EU|tier=gold",
                   "region=EU|channel=web"]


def test_missing_region_leaves_region_segments_only(default_config: Config) -> None:
    segmenter = Segmenter(default_config.engine.segmentation)
    got = segmenter.memberships(answer(channel="app"), "silver")
    assert got == ["all", "channel=app", "tier=silver"]
    assert not any(s.startswith("region=") for s in got)


def test_missing_tier_leaves_tier_segments_out(default_config: Config) -> None:
    segmenter = Segmenter(default_config.engine.segmentation)
    assert segmenter.memberships(answer(region="NA"), None) == ["all", "region=NA"]


def test_attribute_dimension() -> None:
    segmenter = Segmenter(SegmentationSettings(segments=((), ("plan",), ("region", "plan")), bands={}))
    with_plan = answer(region="EU", attributes={"plan": "pro"})
    assert segmenter.memberships(with_plan, None) == ["all", "plan=pro", "region=EU|plan=pro"]
    assert segmenter.memberships(answer(region="EU", attributes={"other": "x"}), None) == ["all"]


def test_band_dimension_in_segments() -> None:
    segmenter = Segmenter(SegmentationSettings(segments=(("age_band",), ("age_band", "tier")),
                                               bands={"age_band": AGE}))
    assert segmenter.memberships(answer(attributes={"age": "41"}), "gold") == ["age_band=35-49",
                                                                                 "age_band=35-49|tier=gold"]
    assert segmenter.memberships(answer(attributes={"age": "unknown"}), "gold") == []
    assert segmenter.memberships(answer(), "gold") == []


def test_default_band_dimension_is_configured(default_config: Config) -> None:
    bands = default_config.engine.segmentation.bands
    assert bands["age_band"] == AGE


@pytest.mark.parametrize(("raw", "label"), [
    ("0", "<25"), ("24", "<25"), ("24.9", "<25"), ("25", "25-34"), ("34", "25-34"), ("35", "35-49"),
    ("49", "35-49"), ("50", "50-64"), ("64", "50-64"), ("65", "65+"), ("101", "65+"), (" 30 ", "25-34"),
    ("-3", "<25"),
])
def test_band_labels(raw: str, label: str) -> None:
    assert AGE.label(raw) == label


@pytest.mark.parametrize("raw", ["", "forty", "nan", "NaN", "3O"])
def test_band_label_non_numeric_is_none(raw: str) -> None:
    assert AGE.label(raw) is None


def test_segment_id_format() -> None:
    assert segment_id([("region", "EU"), ("tier", "gold")]) == "region=EU|tier=gold"
    assert segment_id([]) == "all"
    assert parse_segment_id("region=EU|tier=gold") == [("region", "EU"), ("tier", "gold")]
    assert parse_segment_id("all") == []


def test_structural_characters_are_escaped() -> None:
    assert escape_value("a|b=c%d") == "a%7Cb%3Dc%25d"
    text = segment_id([("plan", "a|b=c"), ("tier", "100%")])
    assert text == "plan=a%7Cb%3Dc|tier=100%25"
    assert parse_segment_id(text) == [("plan", "a|b=c"), ("tier", "100%")]


def test_escaped_value_cannot_impersonate_another_segment() -> None:
    sneaky = segment_id([("region", "EU|tier=gold")])
    assert sneaky != "region=EU|tier=gold"
    assert parse_segment_id(sneaky) == [("region", "EU|tier=gold")]


def test_parse_segment_id_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a segment id"):
        parse_segment_id("region")


def test_memberships_escape_values() -> None:
    segmenter = Segmenter(SegmentationSettings(segments=(("region",),), bands={}))
    (got,) = segmenter.memberships(answer(region="EU|x=1"), None)
    assert parse_segment_id(got) == [("region", "EU|x=1")]


def test_segment_id_round_trips_any_values() -> None:
    rng = random.Random(5)
    alphabet = "ab|=%%7C%3D25 é/*?[]-_.\\"
    for _ in range(500):
        pairs = [(rng.choice(["region", "tier", "plan", "age_band"]),
                  "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))) for _ in range(rng.randint(1, 4))]
        text = segment_id(pairs)
        assert parse_segment_id(text) == pairs
        assert text.count("|") == len(pairs) - 1
        assert text.count("=") == len(pairs)


def test_placement_matches_uncached_results_without_fixed_drivers_and_bounds_its_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import processors.segments as segments

    monkeypatch.setattr(segments, "PLACEMENT_CACHE_SIZE", 4)
    settings = SegmentationSettings(segments=((), ("region",), ("region", "plan"), ("age_band",)), bands={"age_band": AGE})
    segmenter = Segmenter(settings)
    rng = random.Random(5)
    for _ in range(300):
        one = answer(region=rng.choice(["EU", "NA", None]), channel=rng.choice(["app", None]),
                     attributes={"plan": rng.choice(["pro", "basic"]), "age": str(rng.randint(18, 80))})
        tier = rng.choice(["gold", None])
        values = segmenter.dimension_values(one, tier)
        drivers = segmenter.driver_values(one, tier, values)
        memberships, per_segment = segmenter.placement(one, tier)
        assert memberships == segmenter.memberships_of(values)
        for segment, segment_drivers in zip(memberships, per_segment, strict=True):
            fixed = {name for name, _ in parse_segment_id(segment)}
            assert segment_drivers == tuple(k for k in drivers if k.partition("=")[0] not in fixed)
        assert len(segmenter._placements) <= 4
