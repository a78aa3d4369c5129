"""Re-targeting rules: which answers become campaign triggers.

A rule fires either on each matching **answer** (e.g. a referral ask for every promoter) or on a segment
**alert** (e.g. service recovery for every detractor of the alerting segment from the spike's onset until
the alert resolves). Rules match on the
answer's loyalty class, on segment-id patterns (shell-style: ``region=EU|*``, ``*``), and optionally on the
customer's value tier. Trigger ids derive from (campaign, answer), so a customer is triggered at most once
per campaign per answer however many segments match; downstream consumers drop repeated ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from processors.events import RetargetTrigger, SurveyResponse
from processors.nps import Loyalty, classify
from processors.windows import AnswerRef


@dataclass(frozen=True, slots=True)
class CampaignRule:
    campaign_id: str
    on: str  # "answer" | "alert"
    loyalty: frozenset[Loyalty]
    segments: tuple[str, ...] = ("*",)
    tiers: frozenset[str] | None = None
    channel: str = "email"
    priority: str = "normal"
    expires_after_ms: int = 7 * 86_400_000
    reason: str = ""

    def matches_segment(self, segment_id: str) -> bool:
        return any(fnmatchcase(segment_id, pattern) for pattern in self.segments)

    def matches_tier(self, tier: str | None) -> bool:
        return self.tiers is None or (tier is not None and tier in self.tiers)


class Retargeter:
    def __init__(self, rules: tuple[CampaignRule, ...]) -> None:
        self._answer_rules = [rule for rule in rules if rule.on == "answer"]
        self._alert_rules = [rule for rule in rules if rule.on == "alert"]
        # Loyalty classes whose answers the windows must remember for alert-driven campaigns.
        self.alert_loyalties: frozenset[Loyalty] = frozenset(
            loyalty for rule in self._alert_rules for loyalty in rule.loyalty)

    def for_answer(self, answer: SurveyResponse, memberships: list[str], tier: str | None) -> list[RetargetTrigger]:
        if not self._answer_rules:
            return []
        loyalty = classify(answer.score)
        out = []
        for rule in self._answer_rules:
            if loyalty not in rule.loyalty or not rule.matches_tier(tier):
                continue
            segment = next((s for s in memberships if rule.matches_segment(s)), None)
            if segment is None:
                continue
            out.append(RetargetTrigger(
                campaign_id=rule.campaign_id, customer_id=answer.customer_id, event_id=answer.event_id,
                score=answer.score, loyalty=loyalty.value, segment_id=segment,
                reason=rule.reason or f"{loyalty.value} answer", channel=rule.channel, priority=rule.priority,
                created_at=answer.answered_at, expires_at=answer.answered_at + rule.expires_after_ms,
            ))
        return out

    def for_alert(self, segment_id: str, alert_id: str, severity: str, at: int,
                  answers: list[AnswerRef]) -> list[RetargetTrigger]:
        """Triggers for the kept answers of a segment during its open alert (from its onset on)."""
        out = []
        for rule in self._alert_rules:
            if not rule.matches_segment(segment_id):
                continue
            for event_id, customer_id, score, tier in answers:
                loyalty = classify(score)
                if loyalty not in rule.loyalty or not rule.matches_tier(tier):
                    continue
                out.append(RetargetTrigger(
                    campaign_id=rule.campaign_id, customer_id=customer_id, event_id=event_id, score=score,
                    loyalty=loyalty.value, segment_id=segment_id,
                    reason=rule.reason or f"{loyalty.value} in {segment_id} during a {severity} spike",
                    channel=rule.channel, priority=rule.priority, created_at=at,
                    expires_at=at + rule.expires_after_ms, alert_id=alert_id,
                ))
        return out
