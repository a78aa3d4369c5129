"""Customer profiles (processors.profiles): RFM over the horizon, tiers, currencies, bounded state."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from processors.config import Config
from processors.events import Purchase
from processors.profiles import CurrencyError, CustomerProfile, ProfileSettings

DAY = 86_400_000
NOW = 20_416 * DAY + 10 * 3_600_000  # 2025-11-24T10:00:00Z
SETTINGS = ProfileSettings()  # 90 days, EUR, silver 100 / gold 500 / platinum 2000
HORIZON = SETTINGS.horizon_days


def buy(amount: str, at: int, currency: str = "EUR") -> Purchase:
    return Purchase(event_id=f"p-{at}", customer_id="c-1", amount=Decimal(amount), currency=currency, purchased_at=at)


def profile_with(*purchases: tuple[str, int]) -> CustomerProfile:
    profile = CustomerProfile()
    for amount, at in purchases:
        profile.add_purchase(at, Decimal(amount), HORIZON)
    return profile


def test_horizon_is_ninety_days() -> None:
    assert HORIZON == 90


def test_rfm_over_the_horizon() -> None:
    profile = profile_with(("1000", NOW - 100 * DAY), ("40.50", NOW - 30 * DAY), ("9.50", NOW - 3 * DAY))
    rfm = profile.rfm(NOW, HORIZON)
    assert rfm.frequency == 2
    assert rfm.monetary == Decimal("50.00")
    assert rfm.recency_days == 3


def test_purchase_outside_horizon_is_excluded_at_query_time() -> None:
    # Added while still recent, then queried 100 days later: no longer counted.
    profile = profile_with(("250", NOW))
    assert profile.rfm(NOW + 90 * DAY, HORIZON).frequency == 1
    assert profile.rfm(NOW + 91 * DAY, HORIZON).frequency == 0
    later = profile.rfm(NOW + 100 * DAY, HORIZON)
    assert (later.frequency, later.monetary, later.recency_days) == (0, Decimal(0), None)


def test_horizon_edges() -> None:
    profile = profile_with(("10", NOW - 90 * DAY), ("20", NOW - 91 * DAY))
    rfm = profile.rfm(NOW, HORIZON)
    # The 90 complete days before today: 90 days ago is in, 91 days ago is out.
    assert (rfm.frequency, rfm.monetary, rfm.recency_days) == (1, Decimal(10), 90)


def test_same_day_purchases_count_from_the_next_day() -> None:
    # Independent of whether a purchase arrives before or after an answer of the same day.
    profile = profile_with(("600", NOW - 3_600_000))
    assert profile.rfm(NOW, HORIZON).frequency == 0
    assert profile.tier(NOW, SETTINGS) == "none"
    assert profile.tier(NOW + DAY, SETTINGS) == "gold"
    midnight = NOW - NOW % DAY
    assert profile.tier(midnight - 1, SETTINGS) == "none"
    assert profile.tier(midnight + DAY, SETTINGS) == "gold"


def test_purchases_after_the_query_day_are_not_counted() -> None:
    profile = profile_with(("10", NOW - DAY), ("999", NOW + 2 * DAY))
    rfm = profile.rfm(NOW, HORIZON)
    assert (rfm.frequency, rfm.monetary, rfm.recency_days) == (1, Decimal(10), 1)


def test_same_day_purchases_share_a_bucket() -> None:
    profile = profile_with(("10", NOW), ("15.25", NOW + 60_000), ("1", NOW - 3_600_000))
    assert len(profile.days) == 1
    rfm = profile.rfm(NOW + DAY, HORIZON)
    assert (rfm.frequency, rfm.monetary, rfm.recency_days) == (3, Decimal("26.25"), 1)
    assert profile.last_purchase_at == NOW + 60_000


@pytest.mark.parametrize(("purchases", "tier"), [
    ((), "none"),
    ((("99.99", NOW - DAY),), "bronze"),
    ((("100", NOW - DAY),), "silver"),
    ((("60", NOW - DAY), ("40", NOW - 2 * DAY)), "silver"),
    ((("499.99", NOW - DAY),), "silver"),
    ((("500", NOW - DAY),), "gold"),
    ((("2000", NOW - DAY),), "platinum"),
    ((("5000", NOW - 120 * DAY), ("5", NOW - DAY)), "bronze"),  # the big spend fell out of the horizon
    ((("5000", NOW),), "none"),  # today's spend counts from tomorrow
])
def test_tiers(purchases: tuple[tuple[str, int], ...], tier: str) -> None:
    assert profile_with(*purchases).tier(NOW, SETTINGS) == tier


def test_default_config_tiers(default_config: Config) -> None:
    settings = default_config.engine.profiles
    assert settings.tier_for(0, Decimal(0)) == "none"
    assert settings.tier_for(1, Decimal("1")) == "bronze"
    assert settings.tier_for(1, Decimal("100")) == "silver"
    assert settings.tier_for(3, Decimal("500")) == "gold"


def test_fx_conversion_is_exact() -> None:
    settings = ProfileSettings(fx_rates={"USD": Decimal("0.92"), "GBP": Decimal("1.17")})
    assert settings.to_base_currency(buy("100", NOW, "USD")) == Decimal("92.00")
    assert settings.to_base_currency(buy("19.99", NOW, "GBP")) == Decimal("23.3883")
    assert settings.to_base_currency(buy("19.99", NOW, "EUR")) == Decimal("19.99")


def test_unknown_currency_raises() -> None:
    settings = ProfileSettings(fx_rates={"USD": Decimal("0.92")})
    with pytest.raises(CurrencyError, match="JPY"):
        settings.to_base_currency(buy("1000", NOW, "JPY"))


def test_pruning_bounds_the_number_of_day_buckets() -> None:
    profile = CustomerProfile()
    for day in range(400):
        profile.add_purchase(NOW + day * DAY, Decimal("1"), HORIZON)
        assert len(profile.days) <= 2 * HORIZON + 1  # two horizons (see below), plus the newest day itself
    # Pruning keeps everything a query on the newest day or later still needs.
    for query_day, recency in ((399, 1), (400, 1), (420, 21)):
        rfm = profile.rfm(NOW + query_day * DAY, HORIZON)
        expected = min(90, 400 - (query_day - 90))
        assert (rfm.frequency, rfm.monetary, rfm.recency_days) == (expected, Decimal(expected), recency)


def test_an_answer_gets_the_same_rfm_when_later_purchases_were_applied_first() -> None:
    # The worker reads purchases and answers side by side: a purchase made after an answer may be applied before
    # it. Answer day 0 needs days -90..-1; a purchase on day 60 must not prune day -90 away.
    history = [("7", NOW - 90 * DAY), ("3", NOW - 10 * DAY)]
    in_order = profile_with(*history).rfm(NOW, HORIZON)
    for lead_days in (1, 30, HORIZON):
        ahead = profile_with(*history, ("500", NOW + lead_days * DAY))
        assert ahead.rfm(NOW, HORIZON) == in_order
    assert (in_order.frequency, in_order.monetary) == (2, Decimal("10"))


def test_out_of_order_old_purchase_is_pruned() -> None:
    profile = profile_with(("10", NOW))
    profile.add_purchase(NOW - 200 * DAY, Decimal("5"), HORIZON)
    assert list(profile.days) == [NOW // DAY]
    assert profile.last_purchase_at == NOW


def test_round_trip_keeps_decimals_exact() -> None:
    profile = profile_with(("0.1", NOW - 2 * DAY), ("0.2", NOW - 2 * DAY), ("19.99", NOW), ("1E+2", NOW - DAY))
    data = orjson.loads(orjson.dumps(profile.to_dict()))  # plain JSON data
    restored = CustomerProfile.from_dict(data)
    assert restored == profile
    assert restored.days[(NOW - 2 * DAY) // DAY] == [2, Decimal("0.3")]
    assert restored.rfm(NOW + DAY, HORIZON).monetary == Decimal("120.29")
    assert restored.last_purchase_at == NOW


def test_empty_profile_round_trip() -> None:
    restored = CustomerProfile.from_dict(orjson.loads(orjson.dumps(CustomerProfile().to_dict())))
    assert restored.days == {}
    assert restored.last_purchase_at is None
    assert restored.tier(NOW, SETTINGS) == "none"
