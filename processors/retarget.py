"""Re-targeting rules: which answers become campaign triggers.

A rule matches an answer on its score (a loyalty class and/or an inclusive score range), on the customer's
value tier, and on the customer's segments (shell-style patterns over segment ids: ``region=EU|*``, ``*``).
A rule with ``in_spike`` only matches answers of a segment in an active spike alert: from the spike's onset
until the alert resolves. Those rules are evaluated when event-time slices close (on the detector's alert),
never at ingest, so whether an answer was "in a spike" does not depend on arrival order. The other rules are
evaluated at ingest, one trigger per matching answer, spike or not.

A rule's priority may depend on the customer's value tier (``priority_by_tier``). Trigger ids derive from
(campaign, answer), so a customer is triggered at most once per campaign per answer however many segments
match; downstream consumers drop repeated ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from processors.events import RetargetTrigger, SurveyResponse
from processors.memo import BoundedMemo
from processors.nps import Loyalty, classify
from processors.segments import PLACEMENT_CACHE_SIZE
from processors.timeparse import DAY_MS
from processors.windows import AnswerRef

ALL_LOYALTIES = frozenset(Loyalty)
ALL_SCORES = (0, 10)


@dataclass(frozen=True, slots=True)
class CampaignRule:
    campaign_id: str
    on: str  # "answer": evaluated at ingest | "alert": in_spike, evaluated on the segment's alert
    loyalty: frozenset[Loyalty] = ALL_LOYALTIES
    segments: tuple[str, ...] = ("*",)
    tiers: frozenset[str] | None = None
    channel: str = "email"
    priority: str = "normal"
    expires_after_ms: int = 7 * DAY_MS
    reason: str = ""
    scores: tuple[int, int] = ALL_SCORES  # inclusive score range
    priority_by_tier: tuple[tuple[str, str], ...] = ()  # (tier, priority) overriding ``priority``

    @property
    def in_spike(self) -> bool:
        return self.on == "alert"

    def matches_segment(self, segment_id: str) -> bool:
        return any(fnmatchcase(segment_id, pattern) for pattern in self.segments)

    def matches_tier(self, tier: str | None) -> bool:
        return self.tiers is None or (tier is not None and tier in self.tiers)

    def matches_score(self, score: int) -> bool:
        return self.scores[0] <= score <= self.scores[1] and classify(score) in self.loyalty

    def priority_for(self, tier: str | None) -> str:
        """The trigger priority for a customer of this tier."""
        return next((priority for name, priority in self.priority_by_tier if name == tier), self.priority)

    def matching_scores(self) -> frozenset[int]:
        return frozenset(score for score in range(11) if self.matches_score(score))


class Retargeter:
    def __init__(self, rules: Iterable[CampaignRule]) -> None:
        rules = tuple(rules)
        self._answer_rules = [rule for rule in rules if not rule.in_spike]
        # (answer rule index, segment id) -> matches
        self._segment_matches: BoundedMemo[tuple[int, str], bool] = BoundedMemo(PLACEMENT_CACHE_SIZE)
        self._alert_rules = [rule for rule in rules if rule.in_spike]
        # Scores whose answers the windows must remember for in-spike campaigns.
        self.alert_scores: frozenset[int] = frozenset(
            score for rule in self._alert_rules for score in rule.matching_scores())

    def for_answer(self, answer: SurveyResponse, memberships: list[str], tier: str | None) -> list[RetargetTrigger]:
        if not self._answer_rules:
            return []
        loyalty = classify(answer.score)
        out = []
        for index, rule in enumerate(self._answer_rules):
            if not rule.matches_score(answer.score) or not rule.matches_tier(tier):
                continue
            segment = next((s for s in memberships if self._matches(index, rule, s)), None)
            if segment is None:
                continue
            out.append(RetargetTrigger(
                campaign_id=rule.campaign_id, customer_id=answer.customer_id, event_id=answer.event_id,
                score=answer.score, loyalty=loyalty.value, segment_id=segment,
                reason=rule.reason or f"{loyalty.value} answer", channel=rule.channel,
                priority=rule.priority_for(tier), created_at=answer.answered_at,
                expires_at=answer.answered_at + rule.expires_after_ms,
            ))
        return out

    def _matches(self, index: int, rule: CampaignRule, segment_id: str) -> bool:
        """``rule.matches_segment``, remembered (cleared at PLACEMENT_CACHE_SIZE entries)."""
        key = (index, segment_id)
        matched = self._segment_matches.get(key)
        if matched is None:
            matched = self._segment_matches.put(key, rule.matches_segment(segment_id))
        return matched

    def for_alert(self, segment_id: str, alert_id: str, severity: str, at: int,
                  answers: list[AnswerRef]) -> list[RetargetTrigger]:
        """Triggers of the in-spike rules for the kept answers of a segment during its open alert (from its
        onset on)."""
        out = []
        for rule in self._alert_rules:
            if not rule.matches_segment(segment_id):
                continue
            for ref in answers:
                event_id, customer_id, score, tier = ref[0], ref[1], ref[2], ref[3]
                if not rule.matches_score(score) or not rule.matches_tier(tier):
                    continue
                loyalty = classify(score)
                out.append(RetargetTrigger(
                    campaign_id=rule.campaign_id, customer_id=customer_id, event_id=event_id, score=score,
                    loyalty=loyalty.value, segment_id=segment_id,
                    reason=rule.reason or f"{loyalty.value} in {segment_id} during a {severity} spike",
                    channel=rule.channel, priority=rule.priority_for(tier), created_at=at,
                    expires_at=at + rule.expires_after_ms, alert_id=alert_id,
                ))
        return out
