"""A dependency-free progress bar on stderr, redrawn at most a few times a second."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path


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


def read_jsonl(files: list[Path], label: str, progress: bool | None) -> Iterator[tuple[Path, int, bytes]]:
    """Non-blank lines of JSONL files as (file, line number, bytes without the newline), with a progress
    bar on stderr (by default only on a terminal)."""
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(sum(path.stat().st_size for path in files), label, enabled=show)
    try:
        for path in files:
            with path.open("rb") as handle:
                for number, line in enumerate(handle, start=1):
                    bar.advance(len(line))
                    line = line.rstrip(b"\r\n")
                    if line.strip():
                        yield path, number, line
    finally:
        bar.finish()
