"""Customer profiles from purchases: recency, frequency and monetary value (RFM) over an event-time
horizon of complete UTC days before the answer's day, and a value tier from configurable thresholds.

State per customer is bounded: purchases are folded into per-UTC-day buckets, and buckets more than two
horizons older than the newest are dropped, so a profile holds at most ``2 * horizon_days + 1`` small entries.
Two, not one: the streaming worker may apply a customer's later purchases before an earlier answer of theirs
(the topics are read side by side), and that answer still needs its own horizon (up to a horizon of lead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from processors.events import Purchase
from processors.timeparse import DAY_MS


class CurrencyError(ValueError):
    """A purchase in a currency with no configured exchange rate."""


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    horizon_ms: int = 90 * DAY_MS
    currency: str = "EUR"
    # Value of one unit of each currency in ``currency``; the base currency is implied at 1.
    fx_rates: Mapping[str, Decimal] = field(default_factory=dict)
    # Ascending (tier, minimum monetary value in the horizon); below the first minimum -> base_tier.
    tiers: tuple[tuple[str, Decimal], ...] = (("silver", Decimal(100)), ("gold", Decimal(500)),
                                              ("platinum", Decimal(2000)))
    base_tier: str = "bronze"
    no_purchase_tier: str = "none"

    @property
    def horizon_days(self) -> int:
        return max(1, self.horizon_ms // DAY_MS)

    def to_base_currency(self, purchase: Purchase) -> Decimal:
        if purchase.currency == self.currency:
            return purchase.amount
        rate = self.fx_rates.get(purchase.currency)
        if rate is None:
            raise CurrencyError(f"no exchange rate for {purchase.currency} (add it to [profiles.fx_rates])")
        return purchase.amount * rate

    def tier_for(self, frequency: int, monetary: Decimal) -> str:
        if frequency == 0:
            return self.no_purchase_tier
        tier = self.base_tier
        for name, minimum in self.tiers:
            if monetary >= minimum:
                tier = name
        return tier


@dataclass(frozen=True, slots=True)
class Rfm:
    recency_days: int | None  # whole days since the last purchase; None without purchases in the horizon
    frequency: int
    monetary: Decimal


@dataclass(slots=True)
class CustomerProfile:
    """Per-day purchase buckets: {utc_day: [count, amount in base currency]}."""

    days: dict[int, list] = field(default_factory=dict)
    last_purchase_at: int | None = None

    def add_purchase(self, at_ms: int, amount: Decimal, horizon_days: int) -> None:
        day = at_ms // DAY_MS
        bucket = self.days.get(day)
        if bucket is None:
            self.days[day] = [1, amount]
        else:
            bucket[0] += 1
            bucket[1] += amount
        if self.last_purchase_at is None or at_ms > self.last_purchase_at:
            self.last_purchase_at = at_ms
        self._prune(max(self.days) - 2 * horizon_days - 1)

    def rfm(self, at_ms: int, horizon_days: int) -> Rfm:
        """RFM as of the start of ``at_ms``'s UTC day: purchases on the ``horizon_days`` complete days before it.

        Same-day purchases count from the next day on. This keeps a tier independent of the order in which
        a day's purchases and answers arrive (they travel on different topics): the streaming worker only
        has to have applied the purchases of earlier days, which it waits for.
        """
        today = at_ms // DAY_MS
        first = today - horizon_days
        frequency, monetary, latest = 0, Decimal(0), None
        for day, (count, amount) in self.days.items():
            if first <= day < today:
                frequency += count
                monetary += amount
                latest = day if latest is None or day > latest else latest
        return Rfm(None if latest is None else today - latest, frequency, monetary)

    def tier(self, at_ms: int, settings: ProfileSettings) -> str:
        rfm = self.rfm(at_ms, settings.horizon_days)
        return settings.tier_for(rfm.frequency, rfm.monetary)

    def _prune(self, oldest_kept_exclusive: int) -> None:
        stale = [day for day in self.days if day <= oldest_kept_exclusive]
        for day in stale:
            del self.days[day]

    def to_dict(self) -> dict[str, Any]:
        return {"days": [[day, count, str(amount)] for day, (count, amount) in sorted(self.days.items())],
                "last_purchase_at": self.last_purchase_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerProfile:
        days = {int(day): [int(count), Decimal(amount)] for day, count, amount in data.get("days", [])}
        return cls(days=days, last_purchase_at=data.get("last_purchase_at"))
