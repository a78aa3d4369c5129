"""Degrade, do not fail, while a dependency (Redis) is unreachable: after a failure, calls are skipped for a
short back-off, the outage is logged once when it starts and once when it ends, never per call."""

from __future__ import annotations

import logging
import time

RETRY_SECONDS = 2.0


class OutageTracker:
    """Tracks one client's outage. ``down`` is logged with the error's type, ``up`` with the outage's length."""

    def __init__(self, log: logging.Logger, down: str, up: str, *, retry_seconds: float = RETRY_SECONDS) -> None:
        self._log, self._down_message, self._up_message = log, down, up
        self.retry_seconds = retry_seconds
        self.errors = 0
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        return self._down_since is None

    def may_try(self, now: float | None = None) -> bool:
        """Up, or down for longer than the back-off since the last failure."""
        return self._down_since is None or (time.monotonic() if now is None else now) >= self._retry_at

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        self._retry_at = now + self.retry_seconds
        if self._down_since is None:
            self._down_since = now
            self._log.warning(self._down_message, type(error).__name__)

    def recovered(self) -> None:
        if self._down_since is not None:
            self._log.warning(self._up_message, time.monotonic() - self._down_since)
            self._down_since = None
