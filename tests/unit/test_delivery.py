"""Delivery policy in memory (processors.delivery) and its configuration: the shared table of cases (which the
Redis store must pass too), sliding-window edge cases, bounded memory, and config errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from delivery_cases import (
    CASES,
    DAY,
    HOUR,
    RANDOM_SETTINGS,
    T0,
    Case,
    admit,
    describe,
    random_steps,
    run_memory,
    trigger,
)

from processors.config import ConfigError, config_from_dict
from processors.delivery import (
    DEFAULT_CUSTOMER_CAP,
    HOUSEKEEPING_EVERY,
    PRIORITIES,
    Cap,
    DeliveryPolicy,
    DeliverySettings,
    Outcome,
    priority_bands,
    priority_rank,
    window_fits,
)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_shared_cases(case: Case) -> None:
    decisions, audiences = run_memory(case.settings, case.steps, list(case.audiences))
    assert decisions == [step.expect for step in case.steps if step.op == "admit"]
    assert audiences == case.audiences


def test_time_is_the_trigger_time_never_the_clock() -> None:
    """``now_ms`` only bounds memory: far ahead of the triggers it changes no decision."""
    case = CASES[4]
    expected, _ = run_memory(case.settings, case.steps, list(case.audiences))
    policy = DeliveryPolicy(case.settings)
    got = [describe(policy.admit(trigger(step), now_ms=T0 + 100 * DAY)) for step in case.steps]
    assert got == expected


@pytest.mark.parametrize("priorities", [False, True], ids=["one-priority", "mixed-priorities"])
@pytest.mark.parametrize("lateness", [None, 12 * HOUR, 3 * DAY], ids=["shuffled", "late-12h", "late-3d"])
def test_random_sequences_respect_every_cap(lateness: int | None, priorities: bool) -> None:
    """Whatever the arrival order, no window of a cap's period ever holds more sent triggers than its maximum:
    per campaign, and across campaigns per priority level (a higher-priority trigger is never blocked by lower
    ones, so all levels together may exceed it)."""
    for seed in range(5):
        policy = DeliveryPolicy(RANDOM_SETTINGS)
        sent: list[tuple[str, str, int, str]] = []
        for step in random_steps(seed, 1500, max_lateness=lateness, priorities=priorities):
            if step.op == "opt_out":
                policy.opt_out([step.customer])
            elif step.op == "opt_in":
                policy.opt_in([step.customer])
            elif policy.admit(trigger(step)).sent:
                sent.append((step.campaign, step.customer, T0 + step.at, step.priority))
        assert sent
        for campaign, customer, _, priority in sent:
            caps = [(RANDOM_SETTINGS.customer_cap, [at for _, c, at, p in sent if c == customer and p == priority])]
            if campaign in RANDOM_SETTINGS.campaign_caps:
                caps.append((RANDOM_SETTINGS.campaign_caps[campaign],
                             [at for k, c, at, _ in sent if c == customer and k == campaign]))
            for cap, times in caps:
                assert cap is not None
                for end in times:
                    assert sum(end - cap.period_ms < at <= end for at in times) <= cap.max
        cap = RANDOM_SETTINGS.customer_cap
        assert cap is not None
        everything = [at for _, c, at, _ in sent if c == "c0"]
        busiest = max(sum(end - cap.period_ms < at <= end for at in everything) for end in everything)
        if priorities:  # higher priorities got through where the lower ones had reached the cap
            assert cap.max < busiest <= cap.max * len(PRIORITIES)
        else:
            assert busiest == cap.max


def test_priority_helpers() -> None:
    assert [priority_rank(p) for p in PRIORITIES] == [0, 1, 2, 3]
    assert priority_rank("unheard-of") == priority_rank("normal")
    assert priority_bands("low") == ("low",)
    assert priority_bands("high") == ("low", "normal", "high")


def test_window_fits_checks_every_window_containing_the_time() -> None:
    cap = Cap(2, 10)
    assert window_fits([], 5, cap)
    assert window_fits([1], 5, cap)
    assert not window_fits([1, 3], 5, cap)  # (-5, 5] would hold three
    assert window_fits([-5, 3], 5, cap)  # -5 is outside every window containing 5
    assert not window_fits([7, 14], 5, cap)  # (4, 14] would hold three
    assert window_fits([7, 15], 5, cap)  # (5, 15] does not contain 5; (-3, 7] holds two with it
    assert window_fits([15, 16], 5, cap)  # both after every window containing 5


def test_memory_is_bounded_by_the_windows() -> None:
    policy = DeliveryPolicy(DeliverySettings(customer_cap=Cap(1, HOUR), campaign_caps={"a": Cap(1, HOUR)},
                                             dedup_window_ms=DAY))
    for index in range(3 * HOUSEKEEPING_EVERY):
        # one trigger a minute for a new customer each time: state older than the windows must go
        step = admit(f"c{index}", f"e{index}", index * 60_000, "")
        assert policy.admit(trigger(step)).sent
    sizes = policy.state_sizes()
    assert sizes["trigger_ids"] == 24 * 60  # decided within the last day (event time)
    keys_per_customer = 1 + len(priority_bands("high"))  # the campaign's and one per priority band
    assert sizes["cap_keys"] <= keys_per_customer * (2 * 60 + HOUSEKEEPING_EVERY)
    assert policy.counters["sent"] == 3 * HOUSEKEEPING_EVERY


def test_opt_out_and_in_report_changes() -> None:
    policy = DeliveryPolicy(DeliverySettings())
    assert policy.opt_out(["c1", "c2", "c1"]) == 2
    assert policy.opt_out(["c2", "c3"]) == 1
    assert policy.opt_in(["c2", "c9"]) == 1
    assert policy.opted_out() == ["c1", "c3"]


def test_audience_since_filter() -> None:
    policy = DeliveryPolicy(DeliverySettings(customer_cap=None))
    for index, at in enumerate((0, HOUR, 2 * HOUR)):
        policy.admit(trigger(admit(f"c{index}", f"e{index}", at, "")))
    assert policy.audience("a", since_ms=T0 + HOUR) == [("c1", T0 + HOUR), ("c2", T0 + 2 * HOUR)]
    assert policy.audience("unknown") == []


def test_duplicate_keeps_the_first_outcome() -> None:
    policy = DeliveryPolicy(DeliverySettings())
    step = admit("c1", "e1", 0, "")
    first, again = policy.admit(trigger(step)), policy.admit(trigger(step))
    assert (first.outcome, again.outcome, again.first, again.sent) == (Outcome.SENT, Outcome.DUPLICATE, Outcome.SENT,
                                                                        False)


# ---------------------------------------------------------------- configuration


def test_default_delivery_settings(default_doc: dict[str, Any]) -> None:
    delivery = config_from_dict(default_doc).delivery
    assert delivery.customer_cap == DEFAULT_CUSTOMER_CAP == Cap(3, DAY)
    assert delivery.campaign_caps == {}
    assert (delivery.dedup_window_ms, delivery.audience_retention_ms) == (7 * DAY, 30 * DAY)
    assert config_from_dict({}).delivery == delivery


def test_campaign_caps_and_delivery_section(default_doc: dict[str, Any]) -> None:
    default_doc["campaigns"][0]["cap"] = {"max": 1, "period": "7d"}
    default_doc["delivery"] = {"max_per_customer": 0, "dedup_window": "2d", "audience_retention": "90d"}
    delivery = config_from_dict(default_doc).delivery
    assert delivery.campaign_caps == {"service-recovery": Cap(1, 7 * DAY)}
    assert delivery.customer_cap is None
    assert (delivery.dedup_window_ms, delivery.audience_retention_ms) == (2 * DAY, 90 * DAY)
    default_doc["delivery"] = {"max_per_customer": 5, "period": "12h"}
    assert config_from_dict(default_doc).delivery.customer_cap == Cap(5, 12 * HOUR)


BAD = [
    ("cap max zero", ("campaigns", 0, "cap"), {"max": 0, "period": "7d"}, "campaigns[0].cap.max"),
    ("cap max a string", ("campaigns", 1, "cap"), {"max": "1", "period": "7d"}, "campaigns[1].cap.max"),
    ("cap without a period", ("campaigns", 0, "cap"), {"max": 1}, "campaigns[0].cap.period"),
    ("cap period not a duration", ("campaigns", 0, "cap"), {"max": 1, "period": "weekly"}, "campaigns[0].cap.period"),
    ("cap unknown key", ("campaigns", 0, "cap"), {"max": 1, "period": "7d", "per": "customer"},
     "campaigns[0].cap.per"),
    ("cap not a table", ("campaigns", 0, "cap"), 3, "campaigns[0].cap"),
    ("negative customer max", ("delivery", "max_per_customer"), -1, "delivery.max_per_customer"),
    ("customer max a float", ("delivery", "max_per_customer"), 2.5, "delivery.max_per_customer"),
    ("period zero", ("delivery", "period"), "0s", "delivery.period"),
    ("dedup window not a duration", ("delivery", "dedup_window"), "a week", "delivery.dedup_window"),
    ("audience retention not a duration", ("delivery", "audience_retention"), 30, "delivery.audience_retention"),
    ("unknown delivery key", ("delivery", "max_per_campaign"), 1, "delivery.max_per_campaign"),
]


@pytest.mark.parametrize(("path", "value", "field"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_delivery_config_names_the_field_and_the_fix(default_doc: dict[str, Any], path: tuple, value: Any,
                                                         field: str) -> None:
    node: Any = default_doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as raised:
        config_from_dict(default_doc)
    assert raised.value.field == field
    assert raised.value.fix
