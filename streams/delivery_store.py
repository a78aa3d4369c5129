"""The delivery policy of ``processors.delivery`` in Redis, shared by every worker: consent (an opt-out set),
de-duplication by trigger id, per-campaign and cross-campaign caps over sliding windows of trigger time, and
per-campaign audiences.

One Lua script decides one trigger atomically (Redis runs a script alone), so several workers admitting
triggers for the same customers at once never exceed a cap nor admit a trigger id twice. :meth:`admit`
pipelines the script calls of a batch in one MULTI/EXEC round trip: the batch is applied whole or not at all.

Keys, under a namespace derived from the topic prefix (``npspulse`` for ``npspulse.``; ``it1234.`` gives
``it1234``), so deployments sharing a Redis never collide:

- ``{ns}:optout``: set of opted-out customer ids;
- ``{ns}:delivery:seen:{trigger id}``: the first decision (``outcome:reason``), expiring after ``dedup_window``;
- ``{ns}:delivery:cap:{campaign}:{customer}``, ``{ns}:delivery:customer:{customer}`` (every sent trigger: the
  ``low`` priority band) and ``{ns}:delivery:customer:{customer}:{band}`` for the bands ``normal``, ``high``,
  ``urgent`` (the sent triggers of that priority or higher; a trigger is checked against its own band and
  recorded in it and every lower one): sorted sets of sent
  trigger ids scored by trigger time (ms), trimmed to ``2 x period`` behind the newest (member ``~trimmed``
  scores the newest time trimmed: a trigger whose windows reach back to it is capped, as it cannot be checked)
  and expiring ``2 x period`` after the last trigger sent;
- ``{ns}:audience:{campaign}``: customer ids scored by their latest trigger time, trimmed to
  ``audience_retention`` (trigger time) and expiring ``audience_retention`` after the last trigger sent.

Expiry is Redis's wall clock: it only reclaims memory once no window can reach a key, as long as trigger time
runs roughly with the wall clock (a live stream; a faster replay is fine). Needs Redis >= 6.2 (ZADD GT,
SMISMEMBER) and one Redis node, not Redis Cluster (a script touches keys of several hash slots).

**Fails closed**: if Redis is unreachable, :meth:`admit` answers ``undelivered`` (reason
``redis unavailable``) for the whole batch, counted in ``counters``, and the outage is logged once. The
caller must not send those triggers; it may retry them later. After a failure, calls within
``retry_seconds`` answer at once without trying Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from processors.config import Config, KafkaSettings
from processors.delivery import PRIORITIES, Cap, Decision, DeliverySettings, Outcome, priority_bands
from processors.events import RetargetTrigger
from streams.outage import RETRY_SECONDS, OutageTracker

log = logging.getLogger("npspulse.delivery")

REDIS_UNAVAILABLE = "redis unavailable"
REDIS_ERROR = "redis error"
CHUNK = 500  # triggers per MULTI/EXEC: Redis runs a transaction alone, so keep each one short
# Generous: the timeout runs on the worker's event loop, which a large batch can keep busy for seconds; at
# 1 s the worker benchmark saw spurious timeouts, and a timeout holds a whole chunk back (fail closed).
SOCKET_TIMEOUT_SECONDS = 5.0
_FAILURES = (RedisError, OSError, TimeoutError)

# KEYS: 1 opt-out set, 2 seen key, 3 campaign cap zset, 4 audience zset, 5.. the customer cap zsets of the
#       trigger's priority bands, lowest first (the last one, its own band, is checked; all are recorded)
# ARGV: 1 customer id, 2 trigger id, 3 trigger time, 4 campaign max (0: none), 5 campaign period, 6 its key TTL,
#       7 customer max (0: none), 8 customer period, 9 its key TTL, 10 dedup window, 11 audience retention
#       (times in ms; TTLs come as integer strings: Lua may print a large number in exponent notation).
# All reads and checks come before the first write, so a trigger is recorded whole or not at all.
ADMIT_SCRIPT = """
local t = tonumber(ARGV[3])
local function expect(key, kind)
  local found = redis.call('TYPE', key).ok
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('WRONGTYPE npspulse delivery key ' .. key .. ' holds a ' .. found)
  end
end
local kinds = {'set', 'string', 'zset'}
for i = 1, #KEYS do
  local err = expect(KEYS[i], kinds[i] or 'zset')
  if err then return err end
end

local first = redis.call('GET', KEYS[2])
if first then return {'duplicate', first} end

-- A cap {max, period} holds in every window (s - period, s] containing t: check the windows ending at t and
-- at each later sent time within a period (where a window's count can rise). The member TRIMMED scores the
-- newest time trimmed from the history: a window reaching back to it cannot be checked, so it does not fit.
local TRIMMED = '~trimmed'
local function fits(key, max, period)
  if max <= 0 then return true end
  local trimmed = redis.call('ZSCORE', key, TRIMMED)
  if trimmed and tonumber(trimmed) > t - period then return false end
  local raw = redis.call('ZRANGEBYSCORE', key, '(' .. string.format('%.0f', t - period),
                        '(' .. string.format('%.0f', t + period), 'WITHSCORES')
  local times = {}
  for i = 1, #raw, 2 do
    if raw[i] ~= TRIMMED then times[#times + 1] = tonumber(raw[i + 1]) end
  end
  local ends = {t}
  for _, v in ipairs(times) do
    if v > t then ends[#ends + 1] = v end
  end
  for _, e in ipairs(ends) do
    local n = 0
    for _, v in ipairs(times) do
      if v > e - period and v <= e then n = n + 1 end
    end
    if n >= max then return false end
  end
  return true
end

local campaign_max, campaign_period = tonumber(ARGV[4]), tonumber(ARGV[5])
local customer_max, customer_period = tonumber(ARGV[7]), tonumber(ARGV[8])
local outcome, reason = 'sent', ''
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  outcome = 'opted_out'
elseif not fits(KEYS[3], campaign_max, campaign_period) then
  outcome, reason = 'capped', 'campaign'
elseif not fits(KEYS[#KEYS], customer_max, customer_period) then
  outcome, reason = 'capped', 'customer'
end

local function record(key, max, period, ttl)
  if max <= 0 then return end
  local cutoff = string.format('%.0f', t - 2 * period)
  local newest = redis.call('ZREVRANGEBYSCORE', key, cutoff, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #newest > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    redis.call('ZADD', key, 'GT', newest[2], TRIMMED)
  end
  redis.call('ZADD', key, ARGV[3], ARGV[2])
  redis.call('PEXPIRE', key, ttl)
end

if outcome == 'sent' then
  record(KEYS[3], campaign_max, campaign_period, ARGV[6])
  for i = 5, #KEYS do
    record(KEYS[i], customer_max, customer_period, ARGV[9])
  end
  redis.call('ZADD', KEYS[4], 'GT', ARGV[3], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', t - tonumber(ARGV[11]))
  redis.call('PEXPIRE', KEYS[4], ARGV[11])
end
redis.call('SET', KEYS[2], outcome .. ':' .. reason, 'NX', 'PX', ARGV[10])
return {outcome, reason}
"""


class DeliveryStoreError(RuntimeError):
    """Redis could not serve an opt-out or audience call (the message never carries the URL)."""


def namespace_for(kafka: KafkaSettings) -> str:
    """The key namespace of a deployment: its topic prefix without trailing separators (like the app id)."""
    return kafka.topic_prefix.strip(".-_:") or "npspulse"


class DeliveryStore:
    """The delivery policy in Redis for any number of concurrent workers (see the module docstring)."""

    def __init__(self, url: str, settings: DeliverySettings, *, namespace: str = "npspulse",
                 retry_seconds: float = RETRY_SECONDS, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> None:
        self.settings = settings
        self.namespace = namespace
        self._client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout,
                                               socket_connect_timeout=socket_timeout, decode_responses=True,
                                               health_check_interval=10)
        self._script = self._client.register_script(ADMIT_SCRIPT)
        self.outage = OutageTracker(log, "Redis unreachable (%s): triggers are held back as undelivered until it returns",
                                    "Redis reachable again after %.0f s; trigger delivery resumed", retry_seconds=retry_seconds)
        self.counters: dict[str, int] = {outcome.value: 0 for outcome in Outcome}

    @classmethod
    def from_config(cls, config: Config, **kwargs: float) -> DeliveryStore:
        """The store of a deployment: ``redis.url`` (or NPSPULSE_REDIS_URL), the [delivery] settings, and
        the namespace of ``kafka.topic_prefix`` (or NPSPULSE_KAFKA_TOPIC_PREFIX)."""
        return cls(config.redis.url, config.delivery, namespace=namespace_for(config.kafka), **kwargs)

    @property
    def available(self) -> bool:
        return self.outage.available

    @property
    def undelivered(self) -> int:
        return self.counters[Outcome.UNDELIVERED.value]

    async def close(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ keys

    @property
    def optout_key(self) -> str:
        return f"{self.namespace}:optout"

    def seen_key(self, trigger_id: str) -> str:
        return f"{self.namespace}:delivery:seen:{trigger_id}"

    def campaign_key(self, campaign_id: str, customer_id: str) -> str:
        return f"{self.namespace}:delivery:cap:{campaign_id}:{customer_id}"

    def customer_key(self, customer_id: str, band: str = PRIORITIES[0]) -> str:
        """The customer-cap history of one priority band (the lowest band, every sent trigger, keeps the
        key it had before caps were priority-aware)."""
        base = f"{self.namespace}:delivery:customer:{customer_id}"
        return base if band == PRIORITIES[0] else f"{base}:{band}"

    def audience_key(self, campaign_id: str) -> str:
        return f"{self.namespace}:audience:{campaign_id}"

    # ------------------------------------------------------------ admission

    async def admit(self, triggers: Sequence[RetargetTrigger]) -> list[Decision]:
        """One decision per trigger, in order. Only ``sent`` triggers may be delivered; ``undelivered`` ones
        (Redis unreachable or failing) were not checked and must not be sent."""
        decisions: list[Decision] = []
        for start in range(0, len(triggers), CHUNK):
            decisions.extend(await self._admit_chunk(triggers[start:start + CHUNK]))
        for decision in decisions:
            self.counters[decision.outcome.value] += 1
        return decisions

    async def _admit_chunk(self, triggers: Sequence[RetargetTrigger]) -> list[Decision]:
        ids = [trigger.id for trigger in triggers]
        if not triggers:
            return []
        if not self.outage.may_try():
            return [Decision(trigger_id, Outcome.UNDELIVERED, REDIS_UNAVAILABLE) for trigger_id in ids]
        settings = self.settings
        customer_args = _cap_args(settings.customer_cap)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for trigger, trigger_id in zip(triggers, ids, strict=True):
                    keys = [self.optout_key, self.seen_key(trigger_id),
                            self.campaign_key(trigger.campaign_id, trigger.customer_id),
                            self.audience_key(trigger.campaign_id),
                            *(self.customer_key(trigger.customer_id, band)
                              for band in priority_bands(trigger.priority))]
                    args = [trigger.customer_id, trigger_id, trigger.created_at,
                            *_cap_args(settings.campaign_caps.get(trigger.campaign_id)), *customer_args,
                            settings.dedup_window_ms, settings.audience_retention_ms]
                    await self._script(keys=keys, args=args, client=pipe)
                replies = await pipe.execute(raise_on_error=False)
        except ResponseError as error:  # the transaction was refused as a whole (e.g. EXECABORT)
            log.error("Redis refused a delivery batch of %d triggers (%s); none sent", len(ids), _first_line(error))
            return [Decision(trigger_id, Outcome.UNDELIVERED, REDIS_ERROR) for trigger_id in ids]
        except _FAILURES as error:
            self.outage.failed(error)
            return [Decision(trigger_id, Outcome.UNDELIVERED, REDIS_UNAVAILABLE) for trigger_id in ids]
        self.outage.recovered()
        errors = [reply for reply in replies if isinstance(reply, ResponseError)]
        if errors:
            log.error("Redis refused %d delivery decisions of a batch of %d (%s); those triggers not sent",
                      len(errors), len(ids), _first_line(errors[0]))
        return [_decision(trigger_id, reply) for trigger_id, reply in zip(ids, replies, strict=True)]

    # ------------------------------------------------------------ consent

    async def opt_out(self, customer_ids: Iterable[str]) -> int:
        """Add customers to the opt-out set; returns how many were not in it yet."""
        return sum(await self._chunked("sadd", customer_ids))

    async def opt_in(self, customer_ids: Iterable[str]) -> int:
        """Remove customers from the opt-out set; returns how many were in it."""
        return sum(await self._chunked("srem", customer_ids))

    async def opted_out(self, customer_ids: Iterable[str] | None = None) -> list[str]:
        """The opted-out customers (sorted); with ``customer_ids``, those of them that are opted out."""
        try:
            if customer_ids is None:
                found = [member async for member in self._client.sscan_iter(self.optout_key, count=1000)]
            else:
                wanted = list(dict.fromkeys(customer_ids))
                flags = [flag for reply in await self._chunked("smismember", wanted) for flag in reply]
                found = [customer for customer, flag in zip(wanted, flags, strict=True) if flag]
        except _FAILURES as error:
            raise _store_error(error) from None
        return sorted(set(found))

    async def _chunked(self, command: str, customer_ids: Iterable[str]) -> list:
        ids = list(customer_ids)
        if not ids:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(ids), 1000):
                    getattr(pipe, command)(self.optout_key, *ids[start:start + 1000])
                return await pipe.execute()
        except _FAILURES as error:
            raise _store_error(error) from None

    # ------------------------------------------------------------ audiences

    async def export_audience(self, campaign_id: str, since: int | None = None) -> list[tuple[str, int]]:
        """(customer id, latest trigger time in ms) of a campaign's audience, oldest first (ties by id),
        optionally only those triggered at or after ``since`` (ms)."""
        try:
            rows = await self._client.zrangebyscore(self.audience_key(campaign_id),
                                                    "-inf" if since is None else since, "+inf", withscores=True)
        except _FAILURES as error:
            raise _store_error(error) from None
        return [(customer_id, int(score)) for customer_id, score in rows]

    # ------------------------------------------------------------ outages


def _cap_args(cap: Cap | None) -> tuple[int, int, str]:
    """(max, period, key TTL) script arguments of a cap; max 0 means no cap."""
    return (cap.max, cap.period_ms, str(2 * cap.period_ms)) if cap else (0, 1, "1")


def _store_error(error: BaseException) -> DeliveryStoreError:
    if isinstance(error, ResponseError):
        return DeliveryStoreError(f"Redis refused the command ({_first_line(error)})")
    return DeliveryStoreError(f"Redis unreachable ({type(error).__name__})")


def _decision(trigger_id: str, reply: object) -> Decision:
    if isinstance(reply, ResponseError):
        return Decision(trigger_id, Outcome.UNDELIVERED, REDIS_ERROR)
    outcome, detail = reply  # type: ignore[misc]
    if outcome == Outcome.DUPLICATE.value:
        first, _, _ = detail.partition(":")
        return Decision(trigger_id, Outcome.DUPLICATE, first=Outcome(first))
    return Decision(trigger_id, Outcome(outcome), detail)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
