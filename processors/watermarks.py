"""The event-time watermark of a stage that reads repartitioned data from several source partitions.

Each source partition reports its stream time (max event time it has forwarded) and whether it is idle
(caught up, nothing new for a while). The watermark is the minimum stream time over the active sources,
minus the grace period, so a source that lags (a catch-up after a restart, a slow partition) holds windows
open instead of turning its answers late. Idle sources do not hold it back; when every source is idle the
watermark follows the furthest one. It never moves backwards, and it stays unset until every expected
source has reported at least once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SourceProgress:
    stream_time: int | None = None
    idle: bool = False


class WatermarkTracker:
    def __init__(self, expected_sources: int, grace_ms: int) -> None:
        self.expected_sources = expected_sources
        self.grace_ms = grace_ms
        self.sources: dict[int, SourceProgress] = {}
        self._last: int | None = None

    def update(self, source: int, stream_time: int | None, idle: bool) -> None:
        progress = self.sources.get(source)
        if progress is None:
            progress = self.sources[source] = SourceProgress()
        if stream_time is not None and (progress.stream_time is None or stream_time > progress.stream_time):
            progress.stream_time = stream_time
        progress.idle = idle

    def watermark(self) -> int | None:
        if len(self.sources) < self.expected_sources:
            return None
        active = [p.stream_time for p in self.sources.values() if not p.idle]
        if any(t is None for t in active):
            return self._last  # an active source has not forwarded anything yet: wait for it
        if active:
            current = min(active)  # type: ignore[type-var]
        else:
            known = [p.stream_time for p in self.sources.values() if p.stream_time is not None]
            if not known:
                return self._last
            current = max(known)
        candidate = current - self.grace_ms
        if self._last is None or candidate > self._last:
            self._last = candidate
        return self._last
