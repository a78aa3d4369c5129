"""The configuration schema: a parsed TOML document in, typed settings out, or a ConfigError that names
the field and the fix. Pure: reading the file and environment overrides live in ``streams/``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from processors.baseline import BaselineSettings
from processors.delivery import DEFAULT_CUSTOMER_CAP, PRIORITIES, Cap, DeliverySettings
from processors.events import DEFAULT_MAX_FUTURE_MS
from processors.nps import Loyalty, classify
from processors.profiles import ProfileSettings
from processors.retarget import CampaignRule
from processors.segments import ALL_SEGMENT, EVENT_DIMENSIONS, TIER_DIMENSION, BandDimension, SegmentationSettings
from processors.spikes import DetectionSettings
from processors.timeparse import DAY_MS, MINUTE_MS, format_duration_ms, parse_duration_ms
from processors.windows import WindowSettings, WindowSpec

DEFAULT_DEDUP_HORIZON_MS = 600_000  # an event id seen again within 10 minutes of event time counts once
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PRIORITIES = PRIORITIES


class ConfigError(ValueError):
    """An invalid configuration value: where it is, what is wrong, and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"config error in {field}: {problem}. Fix: {fix}")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str = "localhost:9092"
    topic_prefix: str = "npspulse."
    partitions: int = 6
    replication_factor: int = 1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = field(default="redis://localhost:6379/0", repr=False)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The Faust worker: table store, web server, processing guarantee."""

    store: str = "memory://"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    processing_guarantee: str = "at_least_once"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Everything the engine needs: profiles, segments, windows, detection, campaigns, event limits."""

    profiles: ProfileSettings
    segmentation: SegmentationSettings
    windows: WindowSettings
    detection: DetectionSettings
    campaigns: tuple[CampaignRule, ...]
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS


@dataclass(frozen=True, slots=True)
class Config:
    engine: EngineSettings
    kafka: KafkaSettings
    redis: RedisSettings
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)


_SECTIONS = ("events", "profiles", "segmentation", "dimensions", "windows", "detection", "campaigns", "kafka",
             "redis", "worker", "delivery")


def config_from_dict(doc: Mapping[str, Any]) -> Config:
    """Validate a parsed config document (TOML) and build the typed settings."""
    _known_keys(doc, _SECTIONS, "")
    events = _table(doc, "events")
    _known_keys(events, ("max_future", "dedup_horizon"), "events")
    windows = _windows(_table(doc, "windows"))
    profiles = _profiles(_table(doc, "profiles"))
    segmentation = _segmentation(_table(doc, "segmentation"), _table(doc, "dimensions"))
    engine = EngineSettings(
        profiles=profiles,
        segmentation=segmentation,
        windows=windows,
        detection=_detection(_table(doc, "detection"), windows),
        campaigns=_campaigns(doc["campaigns"] if "campaigns" in doc else _default_campaigns(profiles), segmentation,
                             profiles),
        max_future_ms=_duration(events, "max_future", "events", DEFAULT_MAX_FUTURE_MS),
        dedup_horizon_ms=_duration(events, "dedup_horizon", "events", DEFAULT_DEDUP_HORIZON_MS, minimum_ms=0),
    )
    return Config(engine=engine, kafka=_kafka(_table(doc, "kafka")), redis=_redis(_table(doc, "redis")),
                  worker=_worker(_table(doc, "worker")),
                  delivery=_delivery(_table(doc, "delivery"), doc.get("campaigns", [])))


# ---------------------------------------------------------------- sections


def _profiles(section: Mapping[str, Any]) -> ProfileSettings:
    where = "profiles"
    _known_keys(section, ("horizon", "currency", "fx_rates", "tiers", "base_tier", "no_purchase_tier"), where)
    defaults = ProfileSettings()
    currency = section.get("currency", defaults.currency)
    if not (isinstance(currency, str) and re.fullmatch(r"[A-Z]{3}", currency)):
        raise ConfigError(f"{where}.currency", f"{currency!r} is not a currency code", "use an ISO 4217 code, e.g. 'EUR'")
    fx_rates: dict[str, Decimal] = {}
    for code, rate in _mapping(section.get("fx_rates", {}), f"{where}.fx_rates").items():
        if not re.fullmatch(r"[A-Z]{3}", code):
            raise ConfigError(f"{where}.fx_rates.{code}", "not a currency code", "use ISO 4217 codes as keys")
        fx_rates[code] = _positive_decimal(rate, f"{where}.fx_rates.{code}")
    tiers_doc = section.get("tiers")
    if tiers_doc is None:
        tiers = defaults.tiers
    else:
        parsed = [(name, _positive_decimal(value, f"{where}.tiers.{name}"))
                  for name, value in _mapping(tiers_doc, f"{where}.tiers").items()]
        for name, _ in parsed:
            _check_name(name, f"{where}.tiers.{name}")
        tiers = tuple(sorted(parsed, key=lambda item: item[1]))
        if len({value for _, value in tiers}) != len(tiers):
            raise ConfigError(f"{where}.tiers", "two tiers have the same minimum", "give each tier its own minimum")
    names = {}
    for key in ("base_tier", "no_purchase_tier"):
        names[key] = section.get(key, getattr(defaults, key))
        _check_name(names[key], f"{where}.{key}")
    return ProfileSettings(
        horizon_ms=_duration(section, "horizon", where, defaults.horizon_ms, minimum_ms=86_400_000),
        currency=currency, fx_rates=fx_rates, tiers=tiers, **names,
    )


def _segmentation(section: Mapping[str, Any], dimensions: Mapping[str, Any]) -> SegmentationSettings:
    where = "segmentation"
    _known_keys(section, ("segments",), where)
    bands: dict[str, BandDimension] = {}
    for name, spec in dimensions.items():
        path = f"dimensions.{name}"
        _check_name(name, path)
        if name in EVENT_DIMENSIONS or name == TIER_DIMENSION:
            raise ConfigError(path, f"'{name}' is built in", "choose another name for the derived dimension")
        spec = _mapping(spec, path)
        _known_keys(spec, ("attribute", "edges"), path)
        attribute = spec.get("attribute")
        if not isinstance(attribute, str) or not attribute:
            raise ConfigError(f"{path}.attribute", "missing", "name the numeric attribute to band, e.g. 'age'")
        edges = spec.get("edges")
        if (not isinstance(edges, list) or not edges or not all(type(e) is int for e in edges)
                or edges != sorted(set(edges))):
            raise ConfigError(f"{path}.edges", f"{edges!r} is not a strictly increasing list of integers",
                              "e.g. edges = [25, 35, 50, 65]")
        bands[name] = BandDimension(name, attribute, tuple(edges))
    raw = section.get("segments", ["all", "region", "channel", "touchpoint", "tier", "region x tier", "region x channel"])
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}.segments", "must be a non-empty list",
                          'e.g. segments = ["all", "region", "region x tier"]')
    crosses: list[tuple[str, ...]] = []
    for index, text in enumerate(raw):
        path = f"{where}.segments[{index}]"
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(path, f"{text!r} is not a segment definition", 'use "all", "region" or "region x tier"')
        cross = () if text.strip() == "all" else tuple(part.strip() for part in text.split(" x "))
        for name in cross:
            _check_name(name, path)
        if len(set(cross)) != len(cross):
            raise ConfigError(path, f"{text!r} repeats a dimension", "name each dimension once per cross")
        if cross in crosses:
            raise ConfigError(path, f"{text!r} is listed twice", "remove the duplicate")
        crosses.append(cross)
    return SegmentationSettings(segments=tuple(crosses), bands=bands)


def _windows(section: Mapping[str, Any]) -> WindowSettings:
    where = "windows"
    _known_keys(section, ("slice", "grace", "tumbling", "hopping"), where)
    slice_ms = _duration(section, "slice", where, 60_000)
    grace_ms = _duration(section, "grace", where, 120_000, minimum_ms=0)
    specs: list[WindowSpec] = []
    tumbling = section.get("tumbling", ["5m"])
    if not isinstance(tumbling, list):
        raise ConfigError(f"{where}.tumbling", "must be a list of durations", 'e.g. tumbling = ["5m", "1h"]')
    for index, text in enumerate(tumbling):
        size = _parse_duration(text, f"{where}.tumbling[{index}]")
        specs.append(WindowSpec(format_duration_ms(size), size, size))
    hopping = section.get("hopping", [{"size": "1h", "step": "5m"}])
    if not isinstance(hopping, list):
        raise ConfigError(f"{where}.hopping", "must be a list of {size, step} tables",
                          'e.g. hopping = [{ size = "1h", step = "5m" }]')
    for index, item in enumerate(hopping):
        path = f"{where}.hopping[{index}]"
        item = _mapping(item, path)
        _known_keys(item, ("size", "step"), path)
        size = _parse_duration(item.get("size"), f"{path}.size")
        step = _parse_duration(item.get("step"), f"{path}.step")
        if step >= size or size % step:
            raise ConfigError(path, f"size {item.get('size')} is not a whole multiple (> 1) of step {item.get('step')}",
                              "pick e.g. size = '1h', step = '5m' (or list it under tumbling)")
        specs.append(WindowSpec(f"{format_duration_ms(size)}/{format_duration_ms(step)}", size, step))
    if not any(spec.tumbling for spec in specs):
        raise ConfigError(f"{where}.tumbling", "no tumbling window configured (totals and detection need one)",
                          'add tumbling = ["5m"]')
    for spec in specs:
        if spec.step_ms % slice_ms:
            raise ConfigError(f"{where}.slice", f"window {spec.name} is not made of whole {format_duration_ms(slice_ms)} slices",
                              "make every window size and step a multiple of the slice (default 1m)")
    if len({spec.name for spec in specs}) != len(specs):
        raise ConfigError(where, "a window is listed twice", "remove the duplicate")
    return WindowSettings(specs=tuple(specs), slice_ms=slice_ms, grace_ms=grace_ms)


def _detection(section: Mapping[str, Any], windows: WindowSettings) -> DetectionSettings:
    where = "detection"
    _known_keys(section, ("segments", "false_alerts_per_day", "shifts_pp", "baseline_horizon", "min_history",
                          "shrinkage", "baseline_delay", "sev1_rise_pp", "resolve_margin_pp", "resolve_window", "min_open",
                          "drivers"),
                where)
    defaults = DetectionSettings()
    if windows.slice_ms != MINUTE_MS:
        raise ConfigError("windows.slice", "the detector is fed one-minute slices", 'use slice = "1m"')
    budget = _number(section, "false_alerts_per_day", where, defaults.false_alerts_per_day, "e.g. 1 (per day, all segments)")
    shifts = section.get("shifts_pp", [round(100 * x) for x in defaults.shifts])
    if (not isinstance(shifts, list) or not shifts or len(shifts) > 3
            or not all(isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < 90 for x in shifts)
            or sorted(set(shifts)) != shifts):
        raise ConfigError(f"{where}.shifts_pp", f"{shifts!r} is not 1-3 increasing shifts in pp",
                          "e.g. shifts_pp = [10, 25] (the largest one fires sev-1 alerts)")
    horizon = _duration(section, "baseline_horizon", where, round(defaults.baseline.horizon_days * DAY_MS),
                        minimum_ms=2 * DAY_MS)
    baseline = BaselineSettings(horizon_days=horizon / DAY_MS,
                                min_history=_number(section, "min_history", where, defaults.baseline.min_history,
                                                    "e.g. 1000 (answers)", minimum=0.0),
                                shrinkage=_number(section, "shrinkage", where, defaults.baseline.shrinkage,
                                                  "e.g. 300 (pseudo-answers at the parent's share)", minimum=0.0))
    return DetectionSettings(
        segments=_int(section, "segments", where, defaults.segments, minimum=1),
        false_alerts_per_day=budget,
        shifts=tuple(x / 100 for x in shifts),
        baseline=baseline,
        sev1_rise=_number(section, "sev1_rise_pp", where, 100 * defaults.sev1_rise, "e.g. 20") / 100,
        resolve_margin=_number(section, "resolve_margin_pp", where, 100 * defaults.resolve_margin, "e.g. 5") / 100,
        resolve_window_ms=_duration(section, "resolve_window", where, defaults.resolve_window_ms, minimum_ms=MINUTE_MS),
        min_open_ms=_duration(section, "min_open", where, defaults.min_open_ms, minimum_ms=0),
        baseline_delay_ms=_duration(section, "baseline_delay", where, defaults.baseline_delay_ms, minimum_ms=0),
        max_drivers=_int(section, "drivers", where, defaults.max_drivers, minimum=0),
    )


def _number(section: Mapping[str, Any], key: str, where: str, default: float, example: str, *,
            minimum: float | None = None) -> float:
    """A number > 0 (or >= ``minimum``)."""
    value = section.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < minimum if minimum is not None else value <= 0):
        bound = f">= {minimum:g}" if minimum is not None else "> 0"
        raise ConfigError(f"{where}.{key}", f"{value!r} is not a number {bound}", example)
    return float(value)


# The shipped campaigns (README "Campaigns", and processors/npspulse.toml, which spells them out): close the
# loop with every detractor (high priority for high-value customers), service recovery for the detractors of a
# segment in a spike, a referral ask for promoters (low priority: it never holds back the others under the
# per-customer cap), and a nudge for high-value passives. High value: the two highest tiers of [profiles]
# (gold and platinum by default).
def _default_campaigns(profiles: ProfileSettings) -> list[dict[str, Any]]:
    high_value = [name for name, _ in profiles.tiers[-2:]] or [profiles.base_tier]
    return [
        {"id": "service-recovery", "in_spike": True, "loyalty": ["detractor"], "segments": ["*"],
         "channel": "email", "priority": "high", "expires_after": "3d",
         "reason": "detractor during a segment spike: service recovery"},
        {"id": "detractor-follow-up", "loyalty": ["detractor"], "segments": ["*"], "channel": "email",
         "priority": "normal", "priority_by_tier": dict.fromkeys(high_value, "high"), "expires_after": "3d",
         "reason": "detractor: close the loop"},
        {"id": "referral-ask", "loyalty": ["promoter"], "segments": ["*"],
         "channel": "email", "priority": "low", "expires_after": "7d", "reason": "promoter: ask for a referral"},
        {"id": "passive-nudge", "loyalty": ["passive"], "tiers": high_value, "segments": ["*"],
         "channel": "email", "priority": "normal", "expires_after": "7d",
         "reason": "high-value passive: nudge towards promoter"},
    ]


_CAMPAIGN_KEYS = ("id", "in_spike", "on", "loyalty", "scores", "segments", "tiers", "channel", "priority",
                  "priority_by_tier", "expires_after", "reason", "cap")


def _campaigns(raw: Any, segmentation: SegmentationSettings, profiles: ProfileSettings) -> tuple[CampaignRule, ...]:
    if not isinstance(raw, list):
        raise ConfigError("campaigns", "must be an array of tables", "write each rule as [[campaigns]]")
    tier_names = [name for name, _ in profiles.tiers] + [profiles.base_tier, profiles.no_purchase_tier]
    rules: list[CampaignRule] = []
    for index, item in enumerate(raw):
        path = f"campaigns[{index}]"
        item = _mapping(item, path)
        _known_keys(item, _CAMPAIGN_KEYS, path)
        campaign_id = item.get("id")
        if not isinstance(campaign_id, str) or not _CAMPAIGN_ID.match(campaign_id):
            raise ConfigError(f"{path}.id", f"{campaign_id!r} is not a campaign id",
                              "use letters, digits, '-', '_' or '.', e.g. id = 'service-recovery'")
        if any(rule.campaign_id == campaign_id for rule in rules):
            raise ConfigError(f"{path}.id", f"duplicate campaign id {campaign_id!r}", "give each campaign its own id")
        loyalty, scores = _campaign_scores(item, path)
        segments = item.get("segments", ["*"])
        if not isinstance(segments, list) or not segments or not all(isinstance(s, str) and s for s in segments):
            raise ConfigError(f"{path}.segments", f"{segments!r} is not a list of segment patterns",
                              "e.g. segments = ['region=EU|*'] or ['*']")
        for number, pattern in enumerate(segments):
            _check_segment_pattern(pattern, segmentation, f"{path}.segments[{number}]")
        tiers = item.get("tiers")
        if tiers is not None:
            if not isinstance(tiers, list) or not tiers or not all(isinstance(t, str) for t in tiers):
                raise ConfigError(f"{path}.tiers", f"{tiers!r} is not a list of tier names", "e.g. tiers = ['gold']")
            for tier in tiers:
                _check_tier(tier, tier_names, f"{path}.tiers")
        priority = item.get("priority", "normal")
        if priority not in _PRIORITIES:
            raise ConfigError(f"{path}.priority", f"{priority!r} is not a priority", f"use one of {list(_PRIORITIES)}")
        by_tier = _mapping(item.get("priority_by_tier", {}), f"{path}.priority_by_tier")
        for tier, tier_priority in by_tier.items():
            _check_tier(tier, tier_names, f"{path}.priority_by_tier")
            if tier_priority not in _PRIORITIES:
                raise ConfigError(f"{path}.priority_by_tier.{tier}", f"{tier_priority!r} is not a priority",
                                  f"use one of {list(_PRIORITIES)}")
        channel = item.get("channel", "email")
        if not isinstance(channel, str) or not channel:
            raise ConfigError(f"{path}.channel", f"{channel!r} is not a channel", "e.g. channel = 'email'")
        reason = item.get("reason", "")
        if not isinstance(reason, str):
            raise ConfigError(f"{path}.reason", "must be a string", "e.g. reason = 'close the loop'")
        rules.append(CampaignRule(
            campaign_id=campaign_id, on="alert" if _in_spike(item, path) else "answer", loyalty=loyalty,
            segments=tuple(segments), tiers=None if tiers is None else frozenset(tiers), channel=channel,
            priority=priority, expires_after_ms=_duration(item, "expires_after", path, 7 * 86_400_000),
            reason=reason, scores=scores, priority_by_tier=tuple(sorted(by_tier.items())),
        ))
    return tuple(rules)


def _in_spike(item: Mapping[str, Any], path: str) -> bool:
    """``in_spike = true``; ``on = "alert"`` is its older spelling (``on = "answer"``: in_spike = false)."""
    in_spike = item.get("in_spike")
    if in_spike is not None and not isinstance(in_spike, bool):
        raise ConfigError(f"{path}.in_spike", f"{in_spike!r} is not true or false",
                          "in_spike = true: only answers of a segment in an active spike")
    on = item.get("on")
    if on is None:
        return bool(in_spike)
    if on not in ("answer", "alert"):
        raise ConfigError(f"{path}.on", f"{on!r} is not a trigger source",
                          "use in_spike = true (or the older on = 'alert'), or leave it out for every answer")
    if in_spike is not None and in_spike != (on == "alert"):
        raise ConfigError(f"{path}.on", f"on = {on!r} contradicts in_spike = {str(in_spike).lower()}",
                          "remove on (in_spike replaces it)")
    return on == "alert"


def _campaign_scores(item: Mapping[str, Any], path: str) -> tuple[frozenset[Loyalty], tuple[int, int]]:
    """The loyalty classes and the inclusive score range of a rule: at least one of them, both non-empty and
    with scores in common."""
    valid = [member.value for member in Loyalty]
    if "loyalty" not in item and "scores" not in item:
        raise ConfigError(f"{path}.loyalty", "missing (a rule needs loyalty or scores)",
                          "e.g. loyalty = ['detractor'] or scores = [0, 3]")
    loyalty_raw = item.get("loyalty", valid)
    if not isinstance(loyalty_raw, list) or not loyalty_raw or any(x not in valid for x in loyalty_raw):
        raise ConfigError(f"{path}.loyalty", f"{loyalty_raw!r} is not a list of loyalty classes",
                          f"use a non-empty subset of {valid}")
    scores = item.get("scores", [0, 10])
    if (not isinstance(scores, list) or len(scores) != 2 or any(type(x) is not int for x in scores)
            or not 0 <= scores[0] <= scores[1] <= 10):
        raise ConfigError(f"{path}.scores", f"{scores!r} is not a score range",
                          "give the lowest and highest score matched, 0 <= low <= high <= 10, e.g. scores = [0, 3]")
    loyalty = frozenset(Loyalty(x) for x in loyalty_raw)
    if not any(classify(score) in loyalty for score in range(scores[0], scores[1] + 1)):
        raise ConfigError(f"{path}.scores", f"{scores!r} has no score of loyalty {sorted(loyalty_raw)}",
                          "widen the range or change loyalty (detractors 0-6, passives 7-8, promoters 9-10)")
    return loyalty, (scores[0], scores[1])


def _check_segment_pattern(pattern: str, segmentation: SegmentationSettings, path: str) -> None:
    """A pattern must be able to match a configured segment: each ``name=`` names a dimension of a configured
    segment, and a pattern without wildcards is the id of one (dimensions in the configured order)."""
    if pattern != pattern.strip() or pattern.count("[") != pattern.count("]"):
        raise ConfigError(path, f"{pattern!r} is not a segment pattern",
                          "write segment ids with shell wildcards, e.g. 'region=EU|*' or '*'")
    crosses = segmentation.segments
    if pattern == ALL_SEGMENT:
        if () not in crosses:
            raise ConfigError(path, "the segment 'all' is not configured", "add 'all' to [segmentation] segments")
        return
    dimensions = {name for cross in crosses for name in cross}
    wild = any(char in pattern for char in "*?[")
    names: list[str] = []
    for part in pattern.split("|"):
        name, sep, _ = part.partition("=")
        if not sep and not wild:
            raise ConfigError(path, f"{pattern!r} is not a segment id",
                              "write name=value pairs joined by '|', e.g. 'region=EU|tier=gold', or use wildcards")
        if sep and not any(char in name for char in "*?[") and name not in dimensions:
            raise ConfigError(path, f"{pattern!r} names {name!r}, which no configured segment has",
                              f"use one of {sorted(dimensions)} or add a segment with it to [segmentation]")
        names.append(name)
    if not wild and tuple(names) not in crosses:
        raise ConfigError(path, f"{pattern!r} is not a configured segment",
                          f"configure the segment '{' x '.join(names)}' or use a pattern such as '{names[0]}=*|*'")


def _check_tier(tier: Any, tier_names: list[str], path: str) -> None:
    if tier not in tier_names:
        raise ConfigError(path, f"{tier!r} is not a value tier", f"use one of {tier_names} (see [profiles] tiers)")


def _delivery(section: Mapping[str, Any], campaigns: list[Any]) -> DeliverySettings:
    """The [delivery] section, plus each campaign's optional ``cap`` (the campaigns are validated already)."""
    where = "delivery"
    _known_keys(section, ("max_per_customer", "period", "dedup_window", "audience_retention"), where)
    defaults = DeliverySettings()
    max_per_customer = section.get("max_per_customer", DEFAULT_CUSTOMER_CAP.max)
    if type(max_per_customer) is not int or max_per_customer < 0:
        raise ConfigError(f"{where}.max_per_customer", f"{max_per_customer!r} is not an integer >= 0",
                          f"e.g. max_per_customer = {DEFAULT_CUSTOMER_CAP.max} (0: no cross-campaign cap)")
    period_ms = _duration(section, "period", where, DEFAULT_CUSTOMER_CAP.period_ms)
    caps: dict[str, Cap] = {}
    for index, item in enumerate(campaigns):
        if "cap" in item:
            caps[item["id"]] = _cap(item["cap"], f"campaigns[{index}].cap")
    return DeliverySettings(
        customer_cap=Cap(max_per_customer, period_ms) if max_per_customer else None,
        campaign_caps=caps,
        dedup_window_ms=_duration(section, "dedup_window", where, defaults.dedup_window_ms),
        audience_retention_ms=_duration(section, "audience_retention", where, defaults.audience_retention_ms),
    )


def _cap(raw: Any, path: str) -> Cap:
    example = 'e.g. cap = { max = 1, period = "7d" }'
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"{raw!r} is not a cap", f"write it as a table, {example}")
    _known_keys(raw, ("max", "period"), path)
    maximum = raw.get("max")
    if type(maximum) is not int or maximum < 1:
        raise ConfigError(f"{path}.max", f"{maximum!r} is not an integer >= 1",
                          f"give the most triggers per customer per period, {example} (or remove the cap)")
    if "period" not in raw:
        raise ConfigError(f"{path}.period", "missing", f"give the period the maximum applies to, {example}")
    return Cap(maximum, _parse_duration(raw["period"], f"{path}.period"))


def _kafka(section: Mapping[str, Any]) -> KafkaSettings:
    where = "kafka"
    _known_keys(section, ("bootstrap_servers", "topic_prefix", "partitions", "replication_factor",
                          "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "ssl_cafile",
                          "ssl_certfile", "ssl_keyfile"), where)
    defaults = KafkaSettings()
    protocol = section.get("security_protocol", defaults.security_protocol)
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"{where}.security_protocol", f"{protocol!r} is not supported",
                          "use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    mechanism = section.get("sasl_mechanism")
    if mechanism is not None and mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError(f"{where}.sasl_mechanism", f"{mechanism!r} is not supported",
                          "use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    if mechanism is None and protocol.startswith("SASL"):
        # No default: librdkafka would pick GSSAPI and aiokafka PLAIN.
        raise ConfigError(f"{where}.sasl_mechanism", f"missing (security_protocol is {protocol})",
                          "set sasl_mechanism = 'SCRAM-SHA-512' (or PLAIN, SCRAM-SHA-256)")
    if section.get("ssl_keyfile") is not None and section.get("ssl_certfile") is None:
        raise ConfigError(f"{where}.ssl_keyfile", "set without ssl_certfile",
                          "set ssl_certfile to the client certificate (PEM) the key belongs to")
    if "sasl_password" in section:
        raise ConfigError(f"{where}.sasl_password", "secrets do not belong in the config file",
                          "set NPSPULSE_KAFKA_SASL_PASSWORD in the environment instead")
    return KafkaSettings(
        bootstrap_servers=_string(section, "bootstrap_servers", where, defaults.bootstrap_servers),
        topic_prefix=_string(section, "topic_prefix", where, defaults.topic_prefix, allow_empty=True),
        partitions=_int(section, "partitions", where, defaults.partitions, minimum=1),
        replication_factor=_int(section, "replication_factor", where, defaults.replication_factor, minimum=1),
        security_protocol=protocol, sasl_mechanism=mechanism,
        sasl_username=section.get("sasl_username"),
        **{key: _string(section, key, where, "") if key in section else None
           for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")},
    )


def _worker(section: Mapping[str, Any]) -> WorkerSettings:
    where = "worker"
    _known_keys(section, ("store", "web_host", "web_port", "processing_guarantee"), where)
    defaults = WorkerSettings()
    store = _string(section, "store", where, defaults.store)
    if not store.startswith(("memory://", "rocksdb://", "aerospike://")):
        raise ConfigError(f"{where}.store", f"{store!r} is not a Faust table store", "use 'memory://' or 'rocksdb://'")
    guarantee = section.get("processing_guarantee", defaults.processing_guarantee)
    if guarantee not in ("at_least_once", "exactly_once"):
        raise ConfigError(f"{where}.processing_guarantee", f"{guarantee!r} is not a guarantee",
                          "use 'at_least_once' (default) or 'exactly_once'")
    port = _int(section, "web_port", where, defaults.web_port, minimum=1)
    if port > 65535:
        raise ConfigError(f"{where}.web_port", f"{port} is not a port", "use 1-65535")
    return WorkerSettings(store=store, web_host=_string(section, "web_host", where, defaults.web_host), web_port=port,
                          processing_guarantee=guarantee)


def _redis(section: Mapping[str, Any]) -> RedisSettings:
    _known_keys(section, ("url",), "redis")
    url = _string(section, "url", "redis", RedisSettings().url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url", "not a Redis URL", "use redis://host:port/db (or rediss:// for TLS)")
    return RedisSettings(url=url)


# ---------------------------------------------------------------- helpers


def _table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return _mapping(doc.get(name, {}), name)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a table, got {type(value).__name__}", f"write it as [{path}] or {{ ... }}")
    return value


def _known_keys(section: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in section:
        if key not in known:
            path = f"{where}.{key}" if where else key
            raise ConfigError(path, "unknown setting", f"remove it or use one of {list(known)}")


def _check_name(name: Any, path: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(path, f"{name!r} is not a valid name", "use letters, digits and '_' (start with a letter)")


def _parse_duration(value: Any, path: str) -> int:
    try:
        ms = parse_duration_ms(value)
    except ValueError as exc:
        raise ConfigError(path, str(exc), "write a duration like '90s', '5m', '1h' or '90d'") from None
    if ms <= 0:
        raise ConfigError(path, "must be longer than zero", "write a positive duration like '5m'")
    return ms


def _duration(section: Mapping[str, Any], key: str, where: str, default: int, *, minimum_ms: int = 1) -> int:
    if key not in section:
        return default
    path = f"{where}.{key}"
    value = section[key]
    if minimum_ms == 0 and isinstance(value, str) and value.strip() in ("0", "0s", "0m"):
        return 0
    ms = _parse_duration(value, path)
    if ms < minimum_ms:
        raise ConfigError(path, f"{value!r} is shorter than {format_duration_ms(minimum_ms)}",
                          f"use at least {format_duration_ms(minimum_ms)}")
    return ms


def _int(section: Mapping[str, Any], key: str, where: str, default: int, *, minimum: int) -> int:
    value = section.get(key, default)
    if type(value) is not int or value < minimum:
        raise ConfigError(f"{where}.{key}", f"{value!r} is not an integer >= {minimum}", f"e.g. {key} = {default}")
    return value


def _string(section: Mapping[str, Any], key: str, where: str, default: str, *, allow_empty: bool = False) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ConfigError(f"{where}.{key}", "must be a non-empty string", f"e.g. {key} = {default!r}")
    return value


def _positive_decimal(value: Any, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(path, f"{value!r} is not a number", "write a positive number, e.g. 100")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ConfigError(path, f"{value!r} is not a number", "write a positive number, e.g. 100") from None
    if not number.is_finite() or number <= 0:
        raise ConfigError(path, f"{value!r} is not positive", "write a positive number, e.g. 100")
    return number
