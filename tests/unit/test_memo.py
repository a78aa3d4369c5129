"""The bounded memo behind the placement, campaign-match, partition and profile caches."""

import pytest

from processors.memo import BoundedMemo


def test_put_returns_the_value_and_remembers_it() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(3)
    assert memo.put("a", 1) == 1
    assert memo.get("a") == 1


def test_a_new_key_beyond_the_limit_empties_the_memo_first() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    memo.put("c", 3)
    assert dict(memo) == {"c": 3}


def test_replacing_a_known_key_when_full_keeps_the_others() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    memo.put("a", 10)
    assert dict(memo) == {"a": 10, "b": 2}


def test_falsy_values_are_remembered() -> None:
    memo: BoundedMemo[str, bool] = BoundedMemo(2)
    memo.put("x", False)
    assert memo.get("x") is False


def test_a_memo_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        BoundedMemo(0)
