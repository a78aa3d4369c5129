from processors.dedup import RecentEvents

MINUTE = 60_000


def test_a_repeat_within_the_horizon_is_not_first() -> None:
    recent = RecentEvents(10 * MINUTE)
    assert recent.first("a", 0)
    assert recent.first("b", 5 * MINUTE)
    assert not recent.first("a", 0)
    assert not recent.first("a", 9 * MINUTE)  # a different time does not make it a different event


def test_an_id_is_forgotten_once_event_time_moves_a_horizon_past_it() -> None:
    recent = RecentEvents(10 * MINUTE)
    assert recent.first("a", 0)
    assert recent.first("b", 11 * MINUTE)  # newest - horizon = 1 min > 0: "a" is pruned
    assert len(recent) == 1
    assert recent.first("a", 0)  # older than the horizon: not remembered again either
    assert len(recent) == 1


def test_out_of_order_ids_are_pruned_in_arrival_order() -> None:
    recent = RecentEvents(10 * MINUTE)
    assert recent.first("late", 3 * MINUTE)
    assert recent.first("early", 1 * MINUTE)
    assert recent.first("x", 12 * MINUTE)  # horizon at 2 min: "late" (3) stays, and "early" behind it
    assert not recent.first("late", 3 * MINUTE)
    assert not recent.first("early", 1 * MINUTE)
    assert recent.first("y", 14 * MINUTE)  # horizon at 4 min: both leave
    assert len(recent) == 2


def test_zero_horizon_remembers_nothing() -> None:
    recent = RecentEvents(0)
    assert recent.first("a", 0) and recent.first("a", 0)
    assert len(recent) == 0
