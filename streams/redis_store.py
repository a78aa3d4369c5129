"""Redis: customer attributes (a hash per customer), the latest per-segment NPS snapshot (a hash per
segment, updated on window close), each segment's alert state and a feed of recent alert events.

One connection pool; one pipelined round trip per batch, never per event; a short-lived local cache for
attributes. If Redis is unreachable the store degrades instead of failing: lookups return nothing (the
caller marks its output ``enrichment: "partial"``), writes are skipped, and the outage is logged once,
not per event. Calls are retried after a short back-off, so full service resumes when Redis returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from processors.windows import WindowResult

log = logging.getLogger("npspulse.redis")

ATTRIBUTES_KEY = "npspulse:customer:{}"
SEGMENT_KEY = "npspulse:segment:{}"
SEGMENT_INDEX_KEY = "npspulse:segments"
ALERT_FEED_KEY = "npspulse:alerts"
ALERT_FEED_SIZE = 10_000
CACHE_SECONDS = 60.0
RETRY_SECONDS = 2.0
_FAILURES = (RedisError, OSError, TimeoutError)


class RedisStore:
    def __init__(self, url: str, *, cache_seconds: float = CACHE_SECONDS, retry_seconds: float = RETRY_SECONDS) -> None:
        self._client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                               decode_responses=True, health_check_interval=10)
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._cache_seconds = cache_seconds
        self._retry_seconds = retry_seconds
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.errors = 0

    @property
    def available(self) -> bool:
        return self._down_since is None

    async def close(self) -> None:
        await self._client.aclose()

    async def attributes(self, customer_ids: Iterable[str]) -> dict[str, dict[str, str]] | None:
        """Attributes of each customer (cached); None when Redis is unreachable (enrichment is partial)."""
        now = time.monotonic()
        found: dict[str, dict[str, str]] = {}
        missing = []
        for customer_id in dict.fromkeys(customer_ids):
            cached = self._cache.get(customer_id)
            if cached is not None and cached[0] > now:
                found[customer_id] = cached[1]
            else:
                missing.append(customer_id)
        if not missing:
            return found
        if not self._may_try(now):
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            for customer_id in missing:
                pipe.hgetall(ATTRIBUTES_KEY.format(customer_id))
            replies = await pipe.execute()
        except _FAILURES as error:
            self._failed(error)
            return None
        self._recovered()
        expires = now + self._cache_seconds
        if len(self._cache) > 200_000:
            self._cache.clear()
        for customer_id, values in zip(missing, replies, strict=True):
            self._cache[customer_id] = (expires, values)
            found[customer_id] = values
        return found

    async def save_snapshots(self, windows: Iterable[WindowResult], spike_states: Mapping[str, dict]) -> None:
        """Latest closed window per segment and window kind, plus the detector's baseline, as hashes."""
        windows = list(windows)
        if not windows or not self._may_try(time.monotonic()):
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for result in windows:
                summary = result.counts.summary()
                fields = {f"{result.window}.{name}": "" if value is None else str(value)
                          for name, value in summary.items()}
                fields[f"{result.window}.window_start"] = str(result.start)
                fields[f"{result.window}.window_end"] = str(result.end)
                baseline = spike_states.get(result.segment_id)
                if baseline:
                    fields.update({f"baseline.{k}": str(v) for k, v in baseline.items()})
                pipe.hset(SEGMENT_KEY.format(result.segment_id), mapping=fields)
                pipe.sadd(SEGMENT_INDEX_KEY, result.segment_id)
            await pipe.execute()
        except _FAILURES as error:
            self._failed(error)
            return
        self._recovered()

    async def save_alerts(self, records: Iterable[dict]) -> None:
        """Alert events (schema 2 dicts): each segment's alert state in its hash, and a feed of recent events
        (a sorted set by event time, the newest ALERT_FEED_SIZE kept) for the API and dashboard."""
        records = list(records)
        if not records or not self._may_try(time.monotonic()):
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for record in records:
                state = "resolved" if record["type"] == "alert.resolved" else "open"
                pipe.hset(SEGMENT_KEY.format(record["segment_id"]), mapping={
                    "alert.state": state, "alert.id": record["alert_id"], "alert.severity": record["severity"],
                    "alert.incident": record["incident_id"], "alert.at": str(record["at"])})
                pipe.zadd(ALERT_FEED_KEY, {orjson.dumps(record): record["at"]})
            pipe.zremrangebyrank(ALERT_FEED_KEY, 0, -ALERT_FEED_SIZE - 1)
            await pipe.execute()
        except _FAILURES as error:
            self._failed(error)
            return
        self._recovered()

    def _may_try(self, now: float) -> bool:
        return self._down_since is None or now >= self._retry_at

    def _failed(self, error: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        self._retry_at = now + self._retry_seconds
        if self._down_since is None:
            self._down_since = now
            log.warning("Redis unreachable (%s); continuing with partial enrichment until it returns",
                        type(error).__name__)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("Redis reachable again after %.0f s; full enrichment resumed",
                        time.monotonic() - self._down_since)
            self._down_since = None
