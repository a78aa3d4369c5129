"""A dependency-free progress bar on stderr, redrawn at most a few times a second."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, *, enabled: bool, unit: str = "B") -> None:
        self.total, self.label, self.enabled, self.unit = max(total, 1), label, enabled, unit
        self.done = 0
        self._started = self._drawn = time.monotonic()

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn >= 0.25:
                self._drawn = now
                self._draw(now)

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self, now: float) -> None:
        share = min(1.0, self.done / self.total)
        filled = int(share * 30)
        elapsed = now - self._started
        eta = elapsed * (1 - share) / share if share > 0 else 0.0
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {share:6.1%}  "
                         f"{elapsed:5.1f}s elapsed, ~{eta:4.0f}s left ")
        sys.stderr.flush()
