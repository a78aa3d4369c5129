"""The effective settings (config file, defaults and environment overrides) rendered back as TOML, with
secrets masked: what `npspulse check-config` prints.

The output loads again with ``load_config`` and gives the same settings, except that masked secrets stay
masked: the SASL password is shown only as a comment (the file format refuses it), and a password inside
a URL is replaced by ``********``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from processors.config import Config
from processors.nps import Loyalty
from processors.timeparse import format_duration_ms
from streams.settings import ENV_OVERRIDES

MASK = "********"
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def is_secret_key(key: str) -> bool:
    """Whether a setting's name says it holds a secret (password, secret, token)."""
    return bool(_SECRET_KEY.search(key))


def mask_url(text: str) -> str:
    """``redis://user:pw@host/0`` -> ``redis://user:********@host/0``; also masks query parameters named like
    secrets. Anything that is not a URL with credentials comes back unchanged."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return MASK  # unparseable: show nothing rather than risk a credential
    netloc, query = parts.netloc, parts.query
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_key(key) for key, _ in pairs):
            query = urlencode([(key, MASK if is_secret_key(key) else value) for key, value in pairs], safe="*",
                              quote_via=quote)
    if (netloc, query) == (parts.netloc, parts.query):
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def render_effective(config: Config, environ: Mapping[str, str], source: str) -> str:
    """The settings as a TOML document; values set by environment variables carry a ``# from VAR`` comment."""
    from_env = {target: name for name, target in ENV_OVERRIDES.items() if environ.get(name)}
    lines = [f"# Effective npspulse settings: {source}, defaults and environment overrides. Secrets are masked.", ""]
    lines += _section("events", {"max_future": _duration(config.engine.max_future_ms),
                                 "dedup_horizon": _duration(config.engine.dedup_horizon_ms)})
    lines += _section("profiles", _profiles(config))
    segmentation = config.engine.segmentation
    lines += _section("segmentation", {"segments": [" x ".join(cross) if cross else "all"
                                                    for cross in segmentation.segments]})
    for name, band in segmentation.bands.items():
        lines += _section(f"dimensions.{_key(name)}", {"attribute": band.attribute, "edges": list(band.edges)})
    lines += _section("windows", _windows(config))
    lines += _section("detection", _detection(config))
    for rule in config.engine.campaigns:
        body = {"id": rule.campaign_id, "in_spike": rule.in_spike,
                "loyalty": [m.value for m in Loyalty if m in rule.loyalty], "scores": list(rule.scores),
                "segments": list(rule.segments)}
        if rule.tiers is not None:
            body["tiers"] = sorted(rule.tiers)
        body.update(channel=rule.channel, priority=rule.priority)
        if rule.priority_by_tier:
            body["priority_by_tier"] = dict(rule.priority_by_tier)
        body.update(expires_after=_duration(rule.expires_after_ms), reason=rule.reason)
        cap = config.delivery.campaign_caps.get(rule.campaign_id)
        if cap is not None:
            body["cap"] = {"max": cap.max, "period": _duration(cap.period_ms)}
        lines += _section("campaigns", body, array=True)
    delivery = config.delivery
    lines += _section("delivery", {
        "max_per_customer": delivery.customer_cap.max if delivery.customer_cap else 0,
        **({"period": _duration(delivery.customer_cap.period_ms)} if delivery.customer_cap else {}),
        "dedup_window": _duration(delivery.dedup_window_ms),
        "audience_retention": _duration(delivery.audience_retention_ms)})
    kafka = {key: value for key, value in _generic(config.kafka).items() if value is not None}
    lines += _section("kafka", kafka, from_env={key: name for (sec, key), name in from_env.items() if sec == "kafka"})
    lines += _section("redis", {"url": config.redis.url}, from_env={"url": from_env.get(("redis", "url"))})
    lines += _section("worker", _generic(config.worker))
    return "\n".join(lines)


def _detection(config: Config) -> dict[str, Any]:
    detection = config.engine.detection
    baseline = detection.baseline
    return {"segments": detection.segments, "false_alerts_per_day": detection.false_alerts_per_day,
            "shifts_pp": [round(100 * shift, 6) for shift in detection.shifts],
            "baseline_horizon": _duration(round(baseline.horizon_days * 86_400_000)),
            "min_history": baseline.min_history, "shrinkage": baseline.shrinkage,
            "baseline_delay": _duration(detection.baseline_delay_ms),
            "sev1_rise_pp": round(100 * detection.sev1_rise, 6), "resolve_margin_pp": round(100 * detection.resolve_margin, 6),
            "resolve_window": _duration(detection.resolve_window_ms), "min_open": _duration(detection.min_open_ms),
            "drivers": detection.max_drivers}


def _profiles(config: Config) -> dict[str, Any]:
    profiles = config.engine.profiles
    return {"horizon": _duration(profiles.horizon_ms), "currency": profiles.currency,
            "fx_rates": {code: _decimal(rate) for code, rate in profiles.fx_rates.items()},
            "tiers": {name: _decimal(minimum) for name, minimum in profiles.tiers},
            "base_tier": profiles.base_tier, "no_purchase_tier": profiles.no_purchase_tier}


def _windows(config: Config) -> dict[str, Any]:
    windows = config.engine.windows
    return {"slice": _duration(windows.slice_ms), "grace": _duration(windows.grace_ms),
            "tumbling": [_duration(spec.size_ms) for spec in windows.specs if spec.size_ms == spec.step_ms],
            "hopping": [{"size": _duration(spec.size_ms), "step": _duration(spec.step_ms)}
                        for spec in windows.specs if spec.size_ms != spec.step_ms]}


def _generic(settings: Any) -> dict[str, Any]:
    """A flat settings dataclass as config keys: ``cooldown_ms = 1800000`` -> ``cooldown = "30m"``."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if item.name.endswith("_ms") and isinstance(value, int):
            out[item.name.removesuffix("_ms")] = _duration(value)
        else:
            out[item.name] = value
    return out


def _section(name: str, body: Mapping[str, Any], *, array: bool = False,
             from_env: Mapping[str, str | None] | None = None) -> list[str]:
    lines = [f"[[{name}]]" if array else f"[{name}]"]
    for key, value in body.items():
        origin = (from_env or {}).get(key)
        comment = f"  # from {origin}" if origin else ""
        if is_secret_key(key):
            # Secrets never appear, and never as a setting: the file format only takes them from the environment.
            if value:
                lines.append(f"# {_key(key)} = {_string(MASK)}{comment or '  # set'}")
            continue
        lines.append(f"{_key(key)} = {_value(value)}{comment}")
    lines.append("")
    return lines


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(mask_url(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = list(_items(value))
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _items(table: Mapping[str, Any]) -> Iterator[str]:
    for key, value in table.items():
        yield f"{_key(key)} = {_string(MASK) if is_secret_key(key) else _value(value)}"


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _duration(ms: int) -> str:
    return "0s" if ms == 0 else format_duration_ms(ms)


def _decimal(number: Decimal) -> int | str:
    """Whole numbers as TOML integers; others as exact decimal strings (the config accepts both)."""
    return int(number) if number == number.to_integral_value() else str(number)
