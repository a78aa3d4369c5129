"""Configuration schema (processors.config): the shipped default, and bad values named with a fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from processors.config import ConfigError, config_from_dict
from processors.nps import Loyalty
from processors.segments import BandDimension
from processors.spikes import DetectionSettings
from processors.windows import WindowSpec

MIN = 60_000


def test_shipped_default_loads(default_doc: dict[str, Any]) -> None:
    config = config_from_dict(default_doc)
    engine = config.engine
    assert engine.windows.specs == (WindowSpec("5m", 5 * MIN, 5 * MIN), WindowSpec("1h/5m", 60 * MIN, 5 * MIN))
    assert (engine.windows.slice_ms, engine.windows.grace_ms) == (MIN, 2 * MIN)
    assert engine.detection == DetectionSettings()  # the shipped file says what the code defaults to
    assert engine.detection.shifts == (0.10, 0.25)
    assert engine.detection.baseline.horizon_days == 28.0
    assert engine.detection.min_open_ms == 30 * MIN
    assert engine.profiles.horizon_days == 90
    assert engine.profiles.tiers == (("silver", Decimal(100)), ("gold", Decimal(500)), ("platinum", Decimal(2000)))
    assert engine.segmentation.segments[:6] == ((), ("region",), ("channel",), ("touchpoint",), ("tier",),
                                                ("region", "tier"))
    assert engine.segmentation.bands == {"age_band": BandDimension("age_band", "age", (25, 35, 50, 65))}
    assert [(rule.campaign_id, rule.in_spike, rule.priority) for rule in engine.campaigns] == [
        ("service-recovery", True, "high"), ("detractor-follow-up", False, "normal"),
        ("referral-ask", False, "low"), ("passive-nudge", False, "normal")]
    assert engine.campaigns[0].loyalty == frozenset({Loyalty.DETRACTOR})
    assert engine.campaigns[0].expires_after_ms == 3 * 24 * 60 * MIN
    assert engine.campaigns[1].priority_by_tier == (("gold", "high"), ("platinum", "high"))
    assert engine.campaigns[3].tiers == {"gold", "platinum"}
    assert engine.campaigns[3].loyalty == frozenset({Loyalty.PASSIVE})
    assert engine.campaigns == config_from_dict({}).engine.campaigns  # the file spells out the built-in ones
    assert engine.max_future_ms == 24 * 60 * MIN
    assert config.kafka.sasl_password is None


def test_empty_document_gives_the_built_in_defaults() -> None:
    config = config_from_dict({})
    assert [spec.name for spec in config.engine.windows.specs] == ["5m", "1h/5m"]
    assert [rule.campaign_id for rule in config.engine.campaigns] == ["service-recovery", "detractor-follow-up",
                                                                      "referral-ask", "passive-nudge"]


def test_no_campaigns() -> None:
    assert config_from_dict({"campaigns": []}).engine.campaigns == ()


def test_built_in_campaigns_follow_the_configured_tiers() -> None:
    """High value is the two highest tiers of [profiles], so the built-in campaigns fit custom tiers."""
    config = config_from_dict({"profiles": {"tiers": {"regular": 50, "vip": 1000, "top": 5000, "mid": 200}}})
    follow_up, nudge = config.engine.campaigns[1], config.engine.campaigns[3]
    assert follow_up.priority_by_tier == (("top", "high"), ("vip", "high"))
    assert nudge.tiers == {"vip", "top"}


def test_in_spike_and_its_older_spelling(default_doc: dict[str, Any]) -> None:
    rules = default_doc["campaigns"]
    rules[0].pop("in_spike")
    rules[0]["on"] = "alert"
    rules[2]["on"] = "answer"
    rules[3]["in_spike"] = False
    rules[1].update(in_spike=True, on="alert", scores=[0, 3])
    campaigns = config_from_dict(default_doc).engine.campaigns
    assert [rule.on for rule in campaigns] == ["alert", "alert", "answer", "answer"]
    assert campaigns[1].scores == (0, 3)


def test_scores_without_loyalty(default_doc: dict[str, Any]) -> None:
    default_doc["campaigns"] = [{"id": "angry", "scores": [0, 2], "in_spike": True,
                                 "segments": ["region=EU", "region=EU|tier=*", "*=gold|*", "all"]}]
    (rule,) = config_from_dict(default_doc).engine.campaigns
    assert (rule.scores, rule.loyalty, rule.in_spike) == ((0, 2), frozenset(Loyalty), True)
    assert sorted(rule.matching_scores()) == [0, 1, 2]


def test_zero_grace_is_allowed(default_doc: dict[str, Any]) -> None:
    default_doc["windows"]["grace"] = "0s"
    assert config_from_dict(default_doc).engine.windows.grace_ms == 0


def test_profile_tiers_are_sorted_by_minimum(default_doc: dict[str, Any]) -> None:
    default_doc["profiles"]["tiers"] = {"gold": 500, "silver": "100.50"}
    del default_doc["campaigns"]  # the shipped file's campaigns name the platinum tier
    assert config_from_dict(default_doc).engine.profiles.tiers == (("silver", Decimal("100.50")),
                                                                    ("gold", Decimal(500)))


def setter(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[path[-1]] = value
    return apply


def duplicate_campaign(doc: dict[str, Any]) -> None:
    doc["campaigns"][1]["id"] = doc["campaigns"][0]["id"]


def no_tumbling(doc: dict[str, Any]) -> None:
    doc["windows"]["tumbling"] = []


BAD_CONFIGS = [
    ("grace not a duration", setter("windows", "grace", value="2x"), "windows.grace"),
    ("old detection setting", setter("detection", "window", value="5m"), "detection.window"),
    ("slices not one minute", setter("windows", "slice", value="5m"), "windows.slice"),
    ("duplicate campaign id", duplicate_campaign, "campaigns[1].id"),
    ("unknown setting", setter("windows", "sise", value="5m"), "windows.sise"),
    ("unknown section", setter("metrics", value={}), "metrics"),
    ("hopping size not a multiple of step", setter("windows", "hopping", value=[{"size": "1h", "step": "7m"}]),
     "windows.hopping[0]"),
    ("hopping step equals size", setter("windows", "hopping", value=[{"size": "5m", "step": "5m"}]),
     "windows.hopping[0]"),
    ("window not whole slices", setter("windows", "slice", value="7m"), "windows.slice"),
    ("no tumbling window", no_tumbling, "windows.tumbling"),
    ("sasl password in the file", setter("kafka", "sasl_password", value="hunter2"), "kafka.sasl_password"),
    ("unknown loyalty class", setter("campaigns", 0, "loyalty", value=["fan"]), "campaigns[0].loyalty"),
    ("empty loyalty", setter("campaigns", 0, "loyalty", value=[]), "campaigns[0].loyalty"),
    ("bad trigger source", setter("campaigns", 0, "on", value="click"), "campaigns[0].on"),
    ("on contradicts in_spike", setter("campaigns", 0, "on", value="answer"), "campaigns[0].on"),
    ("in_spike not a boolean", setter("campaigns", 0, "in_spike", value="yes"), "campaigns[0].in_spike"),
    ("campaign field misspelt", setter("campaigns", 1, "score", value=[0, 3]), "campaigns[1].score"),
    ("neither loyalty nor scores", lambda doc: doc["campaigns"][1].pop("loyalty"), "campaigns[1].loyalty"),
    ("score range reversed", setter("campaigns", 1, "scores", value=[5, 3]), "campaigns[1].scores"),
    ("score range beyond 10", setter("campaigns", 1, "scores", value=[0, 11]), "campaigns[1].scores"),
    ("score range a string", setter("campaigns", 1, "scores", value="0-3"), "campaigns[1].scores"),
    ("score range of one number", setter("campaigns", 1, "scores", value=[3]), "campaigns[1].scores"),
    ("score range outside the loyalty", setter("campaigns", 1, "scores", value=[9, 10]), "campaigns[1].scores"),
    ("pattern names an unknown dimension", setter("campaigns", 0, "segments", value=["regoin=EU|*"]),
     "campaigns[0].segments[0]"),
    ("segment id not configured", setter("campaigns", 0, "segments", value=["tier=gold|region=EU"]),
     "campaigns[0].segments[0]"),
    ("segment id without a value", setter("campaigns", 0, "segments", value=["region"]), "campaigns[0].segments[0]"),
    ("pattern with an open bracket", setter("campaigns", 0, "segments", value=["region=[EU|*"]),
     "campaigns[0].segments[0]"),
    ("unknown tier", setter("campaigns", 3, "tiers", value=["golden"]), "campaigns[3].tiers"),
    ("empty tiers", setter("campaigns", 3, "tiers", value=[]), "campaigns[3].tiers"),
    ("priority_by_tier names an unknown tier", setter("campaigns", 1, "priority_by_tier", value={"vip": "high"}),
     "campaigns[1].priority_by_tier"),
    ("priority_by_tier bad priority", setter("campaigns", 1, "priority_by_tier", value={"gold": "asap"}),
     "campaigns[1].priority_by_tier.gold"),
    ("priority_by_tier not a table", setter("campaigns", 1, "priority_by_tier", value=["gold"]),
     "campaigns[1].priority_by_tier"),
    ("bad priority", setter("campaigns", 1, "priority", value="asap"), "campaigns[1].priority"),
    ("bad campaign expiry", setter("campaigns", 1, "expires_after", value="a week"), "campaigns[1].expires_after"),
    ("no segments", setter("segmentation", "segments", value=[]), "segmentation.segments"),
    ("segment repeats a dimension", setter("segmentation", "segments", value=["all", "region x region"]),
     "segmentation.segments[1]"),
    ("segment listed twice", setter("segmentation", "segments", value=["region", "region"]),
     "segmentation.segments[1]"),
    ("budget zero", setter("detection", "false_alerts_per_day", value=0), "detection.false_alerts_per_day"),
    ("budget a boolean", setter("detection", "false_alerts_per_day", value=True), "detection.false_alerts_per_day"),
    ("shifts not increasing", setter("detection", "shifts_pp", value=[25, 10]), "detection.shifts_pp"),
    ("shifts empty", setter("detection", "shifts_pp", value=[]), "detection.shifts_pp"),
    ("segments zero", setter("detection", "segments", value=0), "detection.segments"),
    ("horizon too short", setter("detection", "baseline_horizon", value="1d"), "detection.baseline_horizon"),
    ("shrinkage negative", setter("detection", "shrinkage", value=-1), "detection.shrinkage"),
    ("sev1 rise a string", setter("detection", "sev1_rise_pp", value="20pp"), "detection.sev1_rise_pp"),
    ("profile currency lower-case", setter("profiles", "currency", value="eur"), "profiles.currency"),
    ("negative fx rate", setter("profiles", "fx_rates", value={"USD": -0.9}), "profiles.fx_rates.USD"),
    ("fx rate key not a currency", setter("profiles", "fx_rates", value={"usd": 0.9}), "profiles.fx_rates.usd"),
    ("two tiers with one minimum", setter("profiles", "tiers", value={"silver": 100, "gold": 100}),
     "profiles.tiers"),
    ("horizon shorter than a day", setter("profiles", "horizon", value="12h"), "profiles.horizon"),
    ("band named like a built-in", setter("dimensions", "tier", value={"attribute": "x", "edges": [1]}),
     "dimensions.tier"),
    ("band edges not increasing", setter("dimensions", "age_band", "edges", value=[35, 25]),
     "dimensions.age_band.edges"),
    ("bad security protocol", setter("kafka", "security_protocol", value="TLS"), "kafka.security_protocol"),
    ("unsupported sasl mechanism", setter("kafka", "sasl_mechanism", value="GSSAPI"), "kafka.sasl_mechanism"),
    ("sasl without a mechanism", setter("kafka", "security_protocol", value="SASL_SSL"), "kafka.sasl_mechanism"),
    ("ssl key without a certificate", setter("kafka", "ssl_keyfile", value="/etc/npspulse/client.key"),
     "kafka.ssl_keyfile"),
    ("redis url not redis", setter("redis", "url", value="http://localhost:6379"), "redis.url"),
    ("max_future not a duration", setter("events", "max_future", value="soon"), "events.max_future"),
]


@pytest.mark.parametrize(("change", "field"), [pytest.param(case[1], case[2], id=case[0]) for case in BAD_CONFIGS])
def test_bad_config_names_the_field_and_the_fix(default_doc: dict[str, Any], change: Callable[[dict[str, Any]], None],
                                                field: str) -> None:
    doc = copy.deepcopy(default_doc)
    change(doc)
    with pytest.raises(ConfigError) as caught:
        config_from_dict(doc)
    error = caught.value
    assert error.field == field
    assert error.fix
    assert str(error).startswith(f"config error in {field}: ")
    assert "Fix:" in str(error)


def test_sasl_password_is_refused_with_the_env_var_fix_and_not_echoed(default_doc: dict[str, Any]) -> None:
    default_doc["kafka"]["sasl_password"] = "hunter2"
    with pytest.raises(ConfigError) as caught:
        config_from_dict(default_doc)
    assert "NPSPULSE_KAFKA_SASL_PASSWORD" in caught.value.fix
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_settings_are_accepted(default_doc: dict[str, Any], mechanism: str) -> None:
    default_doc["kafka"].update(security_protocol="SASL_SSL", sasl_mechanism=mechanism, sasl_username="npspulse",
                                ssl_cafile="/etc/npspulse/ca.pem")
    kafka = config_from_dict(default_doc).kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username) == ("SASL_SSL", mechanism, "npspulse")
    assert (kafka.ssl_cafile, kafka.sasl_password) == ("/etc/npspulse/ca.pem", None)


def test_unknown_setting_lists_the_known_ones(default_doc: dict[str, Any]) -> None:
    default_doc["windows"]["sise"] = "5m"
    with pytest.raises(ConfigError) as caught:
        config_from_dict(default_doc)
    assert caught.value.problem == "unknown setting"
    assert "grace" in caught.value.fix
