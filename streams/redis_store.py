"""Redis: customer attributes (a hash per customer), the latest per-segment NPS snapshot (a hash per
segment, updated on window close) with a short history of closed windows, each segment's alert state and a
feed of recent alert events. The HTTP API (streams/web.py) reads them back.

One connection pool; one pipelined round trip per batch, never per event; a short-lived local cache for
attributes. If Redis is unreachable the store degrades instead of failing: lookups return nothing (the
caller marks its output ``enrichment: "partial"``), writes are skipped, and the outage is logged once,
not per event. Calls are retried after a short back-off, so full service resumes when Redis returns.

Snapshots, window history and the alert feed live under the deployment's namespace (its topic prefix, as in
streams/delivery_store.py: ``npspulse`` for ``npspulse.``), so deployments sharing a Redis never collide:
``{ns}:segment:{segment}``, ``{ns}:segments``, ``{ns}:windows:{segment}``, ``{ns}:alerts``. Customer
attributes (``npspulse:customer:{id}``) are customer facts, shared by every deployment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from processors.config import Config
from processors.windows import WindowResult
from streams import metrics
from streams.delivery_store import namespace_for
from streams.outage import RETRY_SECONDS, OutageTracker
from streams.redis_connect import client_options

log = logging.getLogger("npspulse.redis")

ATTRIBUTES_KEY = "npspulse:customer:{}"  # customer master data, shared by every deployment (load-customers)
ALERT_FEED_SIZE = 10_000
WINDOW_HISTORY_SIZE = 288  # a day of 5-minute windows
CACHE_SECONDS = 60.0
_FAILURES = (RedisError, OSError, TimeoutError)


class StoreUnavailable(Exception):
    """A read for the API failed because Redis is unreachable."""


class RedisStore:
    def __init__(self, url: str, *, namespace: str = "npspulse", cache_seconds: float = CACHE_SECONDS,
                 retry_seconds: float = RETRY_SECONDS, options: Mapping[str, Any] | None = None) -> None:
        """``options``: connection options (password, TLS) from ``redis_connect.client_options``."""
        self.namespace = namespace
        self._client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                               decode_responses=True, health_check_interval=10, **(options or {}))
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._cache_seconds = cache_seconds
        self.outage = OutageTracker(log, "Redis unreachable (%s); continuing with partial enrichment until it returns",
                                    "Redis reachable again after %.0f s; full enrichment resumed", retry_seconds=retry_seconds)

    @classmethod
    def from_config(cls, config: Config, **kwargs: float) -> RedisStore:
        """The store of a deployment: the [redis] connection and the namespace of ``kafka.topic_prefix``."""
        return cls(config.redis.url, namespace=namespace_for(config.kafka), options=client_options(config.redis),
                   **kwargs)

    @property
    def available(self) -> bool:
        return self.outage.available

    # ------------------------------------------------------------ keys

    def segment_key(self, segment_id: str) -> str:
        return f"{self.namespace}:segment:{segment_id}"

    @property
    def segment_index_key(self) -> str:
        return f"{self.namespace}:segments"

    def window_history_key(self, segment_id: str) -> str:
        return f"{self.namespace}:windows:{segment_id}"

    @property
    def alert_feed_key(self) -> str:
        return f"{self.namespace}:alerts"

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
        if not self.outage.may_try(now):
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            for customer_id in missing:
                pipe.hgetall(ATTRIBUTES_KEY.format(customer_id))
            replies = await pipe.execute()
        except _FAILURES as error:
            metrics.redis_error("redis_store", error)
            self.outage.failed(error)
            return None
        self.outage.recovered()
        expires = now + self._cache_seconds
        if len(self._cache) > 200_000:
            self._cache.clear()
        for customer_id, values in zip(missing, replies, strict=True):
            self._cache[customer_id] = (expires, values)
            found[customer_id] = values
        return found

    async def save_snapshots(self, windows: Iterable[WindowResult], spike_states: Mapping[str, dict]) -> None:
        """Latest closed window per segment and window kind, plus the detector's baseline, as hashes; and
        each segment's recent windows (a sorted set by window start, the newest WINDOW_HISTORY_SIZE kept;
        a window re-emitted after a restart replaces itself). ``windows``: in closing order; a segment's windows
        of one kind are written with one command each for the hash, the history and its trim."""
        by_segment: dict[str, list[WindowResult]] = {}
        for result in windows:
            by_segment.setdefault(result.segment_id, []).append(result)
        if not by_segment or not self.outage.may_try():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for segment_id, results in by_segment.items():
                fields: dict[str, str] = {}
                for result in results:  # the newest window of each kind wins the hash fields
                    fields.update({f"{result.window}.{name}": "" if value is None else str(value)
                                   for name, value in result.counts.summary().items()})
                    fields[f"{result.window}.window_start"] = str(result.start)
                    fields[f"{result.window}.window_end"] = str(result.end)
                baseline = spike_states.get(segment_id)
                if baseline:
                    fields.update({f"baseline.{k}": str(v) for k, v in baseline.items()})
                pipe.hset(self.segment_key(segment_id), mapping=fields)
                history = self.window_history_key(segment_id)
                starts = [result.start for result in results]
                # every window this segment closed since the last write: a stored one in that span is an earlier
                # emission of one of them
                pipe.zremrangebyscore(history, min(starts), max(starts))
                pipe.zadd(history, {orjson.dumps(result.to_dict()): result.start for result in results})
                pipe.zremrangebyrank(history, 0, -WINDOW_HISTORY_SIZE - 1)
            pipe.sadd(self.segment_index_key, *by_segment)
            await pipe.execute()
        except _FAILURES as error:
            metrics.redis_error("redis_store", error)
            self.outage.failed(error)
            return
        self.outage.recovered()

    async def save_alerts(self, records: Iterable[dict]) -> None:
        """Alert events (schema 2 dicts): each segment's alert state in its hash, and a feed of recent events
        (a sorted set by event time, the newest ALERT_FEED_SIZE kept) for the API and dashboard."""
        records = list(records)
        if not records or not self.outage.may_try():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for record in records:
                state = "resolved" if record["type"] == "alert.resolved" else "open"
                pipe.hset(self.segment_key(record["segment_id"]), mapping={
                    "alert.state": state, "alert.id": record["alert_id"], "alert.severity": record["severity"],
                    "alert.incident": record["incident_id"], "alert.at": str(record["at"])})
                pipe.zadd(self.alert_feed_key, {orjson.dumps(record): record["at"]})
            pipe.zremrangebyrank(self.alert_feed_key, 0, -ALERT_FEED_SIZE - 1)
            await pipe.execute()
        except _FAILURES as error:
            metrics.redis_error("redis_store", error)
            self.outage.failed(error)
            return
        self.outage.recovered()

    async def segment_ids(self) -> list[str]:
        """Every segment with a snapshot, sorted. Raises StoreUnavailable."""
        try:
            return sorted(await self._client.smembers(self.segment_index_key))
        except _FAILURES as error:
            metrics.redis_error("redis_store", error)
            raise StoreUnavailable(type(error).__name__) from error

    async def _each(self, command: str, keys: list[str], *args: Any) -> list[Any]:
        """The replies of one read ``command`` on every key, in one pipelined round trip. Raises StoreUnavailable."""
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                getattr(pipe, command)(key, *args)
            return await pipe.execute()
        except _FAILURES as error:
            metrics.redis_error("redis_store", error)
            raise StoreUnavailable(type(error).__name__) from error

    async def snapshots(self, segment_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """The snapshot hash of each segment that has one (one round trip). Raises StoreUnavailable."""
        segment_ids = list(segment_ids)
        replies = await self._each("hgetall", [self.segment_key(segment_id) for segment_id in segment_ids])
        return {segment_id: fields for segment_id, fields in zip(segment_ids, replies, strict=True) if fields}

    async def window_history(self, segment_id: str, limit: int = WINDOW_HISTORY_SIZE) -> list[dict]:
        """A segment's recent closed windows (as on the windows topic), newest first. Raises StoreUnavailable."""
        try:
            members = await self._client.zrevrange(self.window_history_key(segment_id), 0, limit - 1)
        except _FAILURES as error:
            metrics.redis_error("redis_store", error)
            raise StoreUnavailable(type(error).__name__) from error
        return [orjson.loads(member) for member in members]

    async def window_histories(self, segment_ids: Iterable[str], limit: int) -> dict[str, list[dict]]:
        """The ``limit`` most recent closed windows of each segment, newest first (one round trip).
        Raises StoreUnavailable."""
        segment_ids = list(segment_ids)
        replies = await self._each("zrevrange", [self.window_history_key(segment_id) for segment_id in segment_ids],
                                   0, limit - 1)
        return {segment_id: [orjson.loads(member) for member in members]
                for segment_id, members in zip(segment_ids, replies, strict=True)}

    async def recent_alerts(self, since_ms: int | None, limit: int) -> list[dict]:
        """Alert events from the feed at or after ``since_ms`` (all if None), newest first, at most ``limit``.
        Raises StoreUnavailable."""
        try:
            members = await self._client.zrevrangebyscore(
                self.alert_feed_key, "+inf", "-inf" if since_ms is None else since_ms, start=0, num=limit)
        except _FAILURES as error:
            metrics.redis_error("redis_store", error)
            raise StoreUnavailable(type(error).__name__) from error
        return [orjson.loads(member) for member in members]
