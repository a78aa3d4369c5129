"""Duplicate events: the same ``event_id`` again (a producer retry, a re-sent file) counts once.

An id is remembered for a horizon of event time: while the newest event time seen is less than the
horizon past the event's own time. State is one entry per remembered id, pruned in arrival order.
"""

from __future__ import annotations

from collections import deque


class RecentEvents:
    """The event ids seen within ``horizon_ms`` of event time (0: remembers nothing)."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self._seen: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()
        self._newest: int | None = None

    def first(self, event_id: str, at: int) -> bool:
        """True the first time ``event_id`` is seen within the horizon (and remember it); False for a repeat."""
        if self.horizon_ms <= 0:
            return True
        if self._newest is None or at > self._newest:
            self._newest = at
        horizon = self._newest - self.horizon_ms
        order, seen = self._order, self._seen
        while order and order[0][0] < horizon:
            old_at, old_id = order.popleft()
            if seen.get(old_id) == old_at:
                del seen[old_id]
        if event_id in seen:
            return False
        if at >= horizon:
            seen[event_id] = at
            order.append((at, event_id))
        return True

    def __len__(self) -> int:
        return len(self._seen)
