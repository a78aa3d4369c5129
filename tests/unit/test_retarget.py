"""Re-targeting rules (processors.retarget): answer- and alert-driven triggers."""

from __future__ import annotations

from typing import Any

import pytest

from processors.config import Config
from processors.events import SurveyResponse
from processors.nps import Loyalty
from processors.retarget import CampaignRule, Retargeter
from processors.windows import AnswerRef

DAY = 86_400_000
AT = 20_416 * DAY + 10 * 3_600_000  # 2025-11-24T10:00:00Z

REFERRAL = CampaignRule(campaign_id="referral-ask", on="answer", loyalty=frozenset({Loyalty.PROMOTER}),
                        expires_after_ms=7 * DAY)
RECOVERY = CampaignRule(campaign_id="service-recovery", on="alert", loyalty=frozenset({Loyalty.DETRACTOR}),
                        priority="high", expires_after_ms=3 * DAY)
MEMBERSHIPS = ["all", "region=EU", "tier=gold", "region=EU|tier=gold"]


def answer(score: int, event_id: str = "e-1", customer_id: str = "c-1") -> SurveyResponse:
    return SurveyResponse(event_id=event_id, customer_id=customer_id, score=score, answered_at=AT, region="EU")


ALERT_ID = "f" * 32


def alert(segment_id: str = "region=EU|tier=gold", at: int = AT) -> dict[str, Any]:
    """for_alert's alert arguments: segment, alert id, severity, time."""
    return {"segment_id": segment_id, "alert_id": ALERT_ID, "severity": "sev-1", "at": at}


def test_promoter_answer_yields_one_trigger_however_many_segments_match() -> None:
    triggers = Retargeter((REFERRAL,)).for_answer(answer(10), MEMBERSHIPS, "gold")
    assert len(triggers) == 1
    (trigger,) = triggers
    assert (trigger.campaign_id, trigger.customer_id, trigger.event_id, trigger.score) == ("referral-ask", "c-1", "e-1", 10)
    assert trigger.loyalty == "promoter"
    assert trigger.segment_id == "all"  # the first matching membership
    assert (trigger.created_at, trigger.expires_at) == (AT, AT + 7 * DAY)
    assert trigger.alert_id is None


@pytest.mark.parametrize("score", [0, 6, 7, 8])
def test_non_promoters_get_no_referral_ask(score: int) -> None:
    assert Retargeter((REFERRAL,)).for_answer(answer(score), MEMBERSHIPS, "gold") == []


def test_promoter_boundary_nine() -> None:
    assert len(Retargeter((REFERRAL,)).for_answer(answer(9), MEMBERSHIPS, "gold")) == 1


def test_several_answer_rules_give_one_trigger_each() -> None:
    other = CampaignRule(campaign_id="review-ask", on="answer", loyalty=frozenset({Loyalty.PROMOTER}))
    triggers = Retargeter((REFERRAL, other)).for_answer(answer(10), MEMBERSHIPS, "gold")
    assert sorted(t.campaign_id for t in triggers) == ["referral-ask", "review-ask"]
    assert len({t.id for t in triggers}) == 2


def test_segment_pattern_matching() -> None:
    rule = CampaignRule(campaign_id="eu", on="answer", loyalty=frozenset({Loyalty.PROMOTER}),
                        segments=("region=EU|*",))
    assert rule.matches_segment("region=EU|tier=gold")
    assert not rule.matches_segment("region=NA|tier=gold")
    assert not rule.matches_segment("region=EU")  # the pattern asks for a cross
    assert not rule.matches_segment("region=EUROPE|tier=gold")
    assert CampaignRule("any", "answer", frozenset({Loyalty.PROMOTER})).matches_segment("region=NA|tier=gold")
    retargeter = Retargeter((rule,))
    (trigger,) = retargeter.for_answer(answer(10), MEMBERSHIPS, "gold")
    assert trigger.segment_id == "region=EU|tier=gold"
    assert retargeter.for_answer(answer(10), ["all", "region=NA", "region=NA|tier=gold"], "gold") == []


def test_tiers_filter() -> None:
    rule = CampaignRule(campaign_id="vip", on="answer", loyalty=frozenset({Loyalty.PROMOTER}),
                        tiers=frozenset({"gold", "platinum"}))
    retargeter = Retargeter((rule,))
    assert len(retargeter.for_answer(answer(10), MEMBERSHIPS, "gold")) == 1
    assert retargeter.for_answer(answer(10), MEMBERSHIPS, "silver") == []
    assert retargeter.for_answer(answer(10), MEMBERSHIPS, None) == []


def test_alert_rule_yields_one_trigger_per_detractor_ref() -> None:
    refs: list[AnswerRef] = [("e-1", "c-1", 2, "gold", 0), ("e-2", "c-2", 9, "gold", 0), ("e-3", "c-3", 6, None, 0),
                             ("e-4", "c-4", 7, "gold", 0)]
    the_alert = alert()
    triggers = Retargeter((RECOVERY, REFERRAL)).for_alert(**the_alert, answers=refs)
    assert [t.event_id for t in triggers] == ["e-1", "e-3"]
    for trigger in triggers:
        assert trigger.alert_id == ALERT_ID
        assert trigger.campaign_id == "service-recovery"
        assert trigger.segment_id == the_alert["segment_id"]
        assert trigger.loyalty == "detractor"
        assert trigger.priority == "high"
        assert (trigger.created_at, trigger.expires_at) == (AT, AT + 3 * DAY)
        assert trigger.to_dict()["alert_id"] == ALERT_ID
    assert [t.customer_id for t in triggers] == ["c-1", "c-3"]


def test_alert_rule_ids_are_deterministic() -> None:
    refs: list[AnswerRef] = [("e-1", "c-1", 2, "gold", 0), ("e-3", "c-3", 0, "gold", 0)]
    retargeter = Retargeter((RECOVERY,))
    first = [t.id for t in retargeter.for_alert(**alert(), answers=refs)]
    again = [t.id for t in Retargeter((RECOVERY,)).for_alert(**alert(), answers=list(refs))]
    assert first == again
    assert len(set(first)) == 2
    # The same answer seen through another alerting segment keeps its id: one trigger per campaign and answer.
    other = [t.id for t in retargeter.for_alert(**alert("all"), answers=refs)]
    assert other == first


def test_alert_rule_respects_segment_pattern_and_tiers() -> None:
    rule = CampaignRule(campaign_id="eu-gold", on="alert", loyalty=frozenset({Loyalty.DETRACTOR}),
                        segments=("region=EU|*",), tiers=frozenset({"gold"}))
    refs: list[AnswerRef] = [("e-1", "c-1", 2, "gold", 0), ("e-2", "c-2", 2, "silver", 0)]
    retargeter = Retargeter((rule,))
    assert [t.event_id for t in retargeter.for_alert(**alert("region=EU|tier=gold"), answers=refs)] == ["e-1"]
    assert retargeter.for_alert(**alert("region=NA|tier=gold"), answers=refs) == []


def test_alert_scores() -> None:
    """The scores the windows must keep for in-spike rules: those some in-spike rule can match."""
    assert Retargeter((RECOVERY, REFERRAL)).alert_scores == frozenset(range(7))
    assert Retargeter((REFERRAL,)).alert_scores == frozenset()
    low = CampaignRule("low", "alert", scores=(0, 3))
    assert Retargeter((low,)).alert_scores == frozenset(range(4))


def test_score_range_and_loyalty_both_match() -> None:
    low = CampaignRule("very-unhappy", "answer", scores=(0, 3))
    assert [s for s in range(11) if low.matches_score(s)] == [0, 1, 2, 3]
    both = CampaignRule("passive-high", "answer", loyalty=frozenset({Loyalty.PASSIVE}), scores=(8, 10))
    assert [s for s in range(11) if both.matches_score(s)] == [8]
    retargeter = Retargeter((low,))
    assert [t.score for t in retargeter.for_answer(answer(3), MEMBERSHIPS, "gold")] == [3]
    assert retargeter.for_answer(answer(4), MEMBERSHIPS, "gold") == []


def test_in_spike_rules_never_fire_at_ingest() -> None:
    """An in-spike rule (on "alert") only acts on an alert's kept answers, whatever the score range."""
    rule = CampaignRule("spike-very-unhappy", "alert", scores=(0, 3), segments=("region=EU|*",))
    assert rule.in_spike
    retargeter = Retargeter((rule,))
    assert retargeter.for_answer(answer(1), MEMBERSHIPS, "gold") == []
    refs: list[AnswerRef] = [("e-1", "c-1", 1, "gold", 0), ("e-2", "c-2", 5, "gold", 0), ("e-3", "c-3", 3, None, 0)]
    assert [t.event_id for t in retargeter.for_alert(**alert(), answers=refs)] == ["e-1", "e-3"]
    assert retargeter.for_alert(**alert("region=NA|tier=gold"), answers=refs) == []


def test_priority_by_tier() -> None:
    rule = CampaignRule("follow-up", "answer", loyalty=frozenset({Loyalty.DETRACTOR}), priority="normal",
                        priority_by_tier=(("gold", "high"), ("platinum", "urgent")))
    retargeter = Retargeter((rule,))
    priorities = {tier: [t.priority for t in retargeter.for_answer(answer(2), MEMBERSHIPS, tier)]
                  for tier in ("gold", "platinum", "silver", None)}
    assert priorities == {"gold": ["high"], "platinum": ["urgent"], "silver": ["normal"], None: ["normal"]}
    in_spike = CampaignRule("recovery", "alert", loyalty=frozenset({Loyalty.DETRACTOR}), priority="high",
                            priority_by_tier=(("gold", "urgent"),))
    refs: list[AnswerRef] = [("e-1", "c-1", 1, "gold", 0), ("e-2", "c-2", 1, "silver", 0)]
    assert [t.priority for t in Retargeter((in_spike,)).for_alert(**alert(), answers=refs)] == ["urgent", "high"]


def test_default_campaigns(default_config: Config) -> None:
    retargeter = Retargeter(default_config.engine.campaigns)

    def fired(score: int, tier: str) -> list[tuple[str, str]]:
        return [(t.campaign_id, t.priority) for t in retargeter.for_answer(answer(score), MEMBERSHIPS, tier)]

    assert fired(10, "gold") == [("referral-ask", "low")]
    assert fired(3, "gold") == [("detractor-follow-up", "high")]  # close the loop, high value first
    assert fired(6, "platinum") == [("detractor-follow-up", "high")]
    assert fired(0, "bronze") == [("detractor-follow-up", "normal")]
    assert fired(0, "none") == [("detractor-follow-up", "normal")]
    assert fired(7, "platinum") == [("passive-nudge", "normal")]  # high-value passives only
    assert fired(8, "silver") == []
    triggers = retargeter.for_alert(**alert(), answers=[("e-9", "c-9", 1, "gold", 0), ("e-8", "c-8", 9, "gold", 0)])
    assert [(t.campaign_id, t.event_id, t.priority) for t in triggers] == [("service-recovery", "e-9", "high")]
