"""A bounded memo: remembered results of a pure function, emptied at once when it reaches its size.

Clearing beats least-recently-used eviction here: the keys (value combinations, segment ids, customers) recur
in bursts, a refill costs one call per key, and a plain dict lookup stays the whole cost of a hit.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMemo(dict[K, V], Generic[K, V]):
    """A dict of at most ``limit`` entries; ``put`` empties it first when a new key would exceed that."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError(f"a memo needs room for at least one entry, got limit={limit}")
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Remember ``value`` for ``key`` and return it."""
        if len(self) >= self.limit and key not in self:
            self.clear()
        self[key] = value
        return value
