"""The worker's HTTP API, on its Faust web server: liveness, readiness, segment snapshots, the alert feed and the dashboard.

Segments and alerts are read from Redis (the snapshots every worker writes), so any worker answers for every
segment. With ``NPSPULSE_API_TOKEN`` set, every route but ``/health``, ``/ready`` and the dashboard page ``/`` (static,
no data: its script calls the API with the token) needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import faust
import orjson
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from faust.web import Request, Response, View

from processors.config import Config
from processors.nps import nps_interval
from processors.timeparse import format_rfc3339_ms, parse_rfc3339_ms
from streams.dashboard import content_security_policy, render_page
from streams.dashboard.model import with_history
from streams.redis_store import WINDOW_HISTORY_SIZE, RedisStore, StoreUnavailable
from streams.topics import TopicNames, kafka_client_config

TOKEN_ENV = "NPSPULSE_API_TOKEN"
DEFAULT_ALERT_LIMIT = 100
MAX_ALERT_LIMIT = 1000
BROKER_TIMEOUT_SECONDS = 3.0


class BadRequest(ValueError):
    """A query parameter the API cannot use; the message says which and why."""


def parse_since(text: str | None) -> int | None:
    """``since`` as epoch milliseconds: digits are epoch ms, anything else RFC 3339; None when absent.
    A ``+`` offset that arrived unencoded (a space after the query is decoded) is read as ``+``."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    if len(text) > 19 and " " in text[19:]:
        text = text[:19] + text[19:].replace(" ", "+")
    try:
        return parse_rfc3339_ms(text)
    except ValueError as error:
        raise BadRequest(f"since: {error}; give RFC 3339 (2026-03-02T14:00:00Z) or epoch milliseconds") from None


def parse_limit(text: str | None, default: int = DEFAULT_ALERT_LIMIT, maximum: int = MAX_ALERT_LIMIT) -> int:
    """``limit`` as an integer in 1..maximum; ``default`` when absent."""
    if text is None or not text.strip():
        return default
    if not text.strip().isdigit() or not 1 <= int(text) <= maximum:
        raise BadRequest(f"limit: expected an integer from 1 to {maximum}, got {text!r}")
    return int(text)


def parse_history(text: str | None) -> int:
    """``history``: how many recent windows each segment row carries (0, the default: none)."""
    if text is None or not text.strip():
        return 0
    if not text.strip().isdigit() or int(text) > WINDOW_HISTORY_SIZE:
        raise BadRequest(f"history: expected an integer from 0 to {WINDOW_HISTORY_SIZE}, got {text!r}")
    return int(text)


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries the bearer token (constant-time comparison)."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _int(fields: Mapping[str, str], name: str) -> int | None:
    value = fields.get(name)
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _rounded(value: float, digits: int = 3) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def _iso(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339_ms(ms)


def segment_row(segment_id: str, fields: Mapping[str, str], window: str) -> dict[str, Any]:
    """One segment's API row from its snapshot hash: the last closed ``window`` (NPS with its adjusted-Wald
    95% interval, counts, detractor share) and its alert state (None if it never alerted)."""
    start, end = _int(fields, f"{window}.window_start"), _int(fields, f"{window}.window_end")
    responses = _int(fields, f"{window}.responses") or 0
    detractors = _int(fields, f"{window}.detractors") or 0
    passives = _int(fields, f"{window}.passives") or 0
    promoters = _int(fields, f"{window}.promoters") or 0
    last: dict[str, Any] | None = None
    if start is not None and end is not None:
        low, high = nps_interval(promoters, detractors, responses)
        last = {"window": window, "start": start, "start_iso": _iso(start), "end": end, "end_iso": _iso(end),
                "responses": responses, "detractors": detractors, "passives": passives, "promoters": promoters,
                "nps": _rounded(100.0 * (promoters - detractors) / responses) if responses else None,
                "nps_low": _rounded(low) if responses else None, "nps_high": _rounded(high) if responses else None,
                "detractor_share": _rounded(detractors / responses, 6) if responses else None}
    alert: dict[str, Any] | None = None
    if fields.get("alert.state"):
        at = _int(fields, "alert.at")
        alert = {"state": fields["alert.state"], "alert_id": fields.get("alert.id"),
                 "incident_id": fields.get("alert.incident"), "severity": fields.get("alert.severity"),
                 "at": at, "at_iso": _iso(at)}
    return {"segment_id": segment_id, "last_window": last, "alert": alert}


class CrashLog:
    """Recent crashes per agent. Faust's supervisor restarts a crashed agent at once, so an agent that fails on
    every batch looks alive between crashes: ``limit`` crashes within ``window`` seconds count as a crash loop."""

    def __init__(self, window: float = 300.0, limit: int = 3) -> None:
        self.window, self.limit = window, limit
        self._crashes: dict[str, deque[float]] = {}

    def watch(self, app: faust.App) -> None:
        """Record the crashes of the app's agents that have no error callback of their own."""
        for name, agent in app.agents.items():
            if getattr(agent, "_on_error", ...) is None:
                async def on_error(agent: Any, exc: BaseException, name: str = name) -> None:
                    self.record(name)
                agent._on_error = on_error  # type: ignore[attr-defined]

    def record(self, name: str, now: float | None = None) -> None:
        times = self._crashes.setdefault(name, deque(maxlen=self.limit))
        times.append(time.monotonic() if now is None else now)

    def looping(self, now: float | None = None) -> list[str]:
        """The agents that crashed ``limit`` times within the last ``window`` seconds."""
        now = time.monotonic() if now is None else now
        return sorted(name for name, times in self._crashes.items()
                      if len(times) == self.limit and now - times[0] <= self.window)


def liveness_problems(app: faust.App, crashes: CrashLog | None = None) -> list[str]:
    """Why the worker is not alive: a crashed app, an agent crashed (or with every actor crashed), or an agent
    in a crash loop."""
    problems = ["app crashed"] if app.crashed else []
    for name, agent in app.agents.items():
        actors = list(getattr(agent, "_actors", ()))
        if agent.crashed or (actors and all(actor.crashed for actor in actors)):
            problems.append(f"agent {name} crashed")
    if crashes is not None:
        problems.extend(f"agent {name} crash loop ({crashes.limit} crashes in {crashes.window:.0f} s)"
                        for name in crashes.looping())
    return problems


async def readiness_problems(app: faust.App, broker: BrokerProbe) -> list[str]:
    """Why the worker is not ready: no partitions assigned (or none of a topic an agent reads, which happens
    when the group formed before the broker's metadata listed it), a rebalance or table recovery under way,
    or the broker not answering a metadata request (or not listing the surveys topic)."""
    problems = []
    try:
        assigned = app.consumer.assignment()
    except Exception as error:  # the consumer is not started yet
        problems.append(f"consumer not started ({type(error).__name__})")
        assigned = set()
    else:
        if not assigned:
            problems.append("no partitions assigned")
        else:
            unassigned = sorted(agent_topics(app) - {tp.topic for tp in assigned})
            if unassigned:
                problems.append(f"no partitions assigned of {', '.join(unassigned)}")
    if app.rebalancing:
        problems.append("rebalancing")
    if app.in_recovery or (assigned and not app.tables.recovery.completed.is_set()):
        problems.append("tables recovering")
    problem = await broker.problem()
    if problem:
        problems.append(problem)
    return problems


def agent_topics(app: faust.App) -> set[str]:
    """The topics the app's agents read. Every topic has the same partition count and Faust assigns them
    co-partitioned, so a worker with any partition has some of each."""
    return {topic for agent in app.agents.values() for topic in getattr(agent.channel, "topics", ())}


class BrokerProbe:
    """Whether the broker answers a metadata request listing the surveys topic, through a client of its own
    (librdkafka, the worker's security settings) so the probe never touches the worker's producer or consumer.
    One request at a time; an answer is reused for ``ttl`` seconds."""

    def __init__(self, config: Config, ttl: float = 2.0) -> None:
        self._topic = TopicNames.from_settings(config.kafka).surveys
        self._admin = AdminClient({**kafka_client_config(config.kafka), "client.id": "npspulse-ready-probe"})
        self._ttl = ttl
        self._checked_at = -math.inf
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        """None if the broker answered (within BROKER_TIMEOUT_SECONDS), else why not."""
        async with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self._ttl:
                self._problem = await asyncio.get_running_loop().run_in_executor(None, self._ask)
                self._checked_at = time.monotonic()
            return self._problem

    def _ask(self) -> str | None:
        try:
            # every topic's metadata: asking for one by name may make the broker auto-create it
            metadata = self._admin.list_topics(timeout=BROKER_TIMEOUT_SECONDS)
        except KafkaException as error:
            return f"broker unreachable ({error.args[0].name() if error.args else 'KafkaException'})"
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            return f"topic {self._topic} not available"
        return None


def register_api(app: faust.App, config: Config, store: RedisStore | None) -> None:
    """Add the API's views to the app's web server; the token is read from the environment once, here."""
    token = os.environ.get(TOKEN_ENV) or None
    window = next(spec.name for spec in config.engine.windows.specs if spec.tumbling)
    broker = BrokerProbe(config)
    crashes = CrashLog()
    crashes.watch(app)
    page = render_page()

    class ApiView(View):
        """JSON through orjson; the bearer token checked before any handler when one is configured."""

        public = False

        async def dispatch(self, request: Any) -> Any:
            if token and not self.public and not authorized(request.headers.get("Authorization"), token):
                return self.reply({"error": "unauthorized: send 'Authorization: Bearer <token>'"}, 401,
                                  headers={"WWW-Authenticate": 'Bearer realm="npspulse"'})
            try:
                return await super().dispatch(request)
            except BadRequest as error:
                return self.reply({"error": str(error)}, 400)
            except StoreUnavailable as error:
                return self.reply({"error": f"redis unavailable ({error})"}, 503)

        def reply(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
            return self.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)

        def redis(self) -> RedisStore:
            if store is None:
                raise StoreUnavailable("not configured")
            return store

    @app.page("/health", base=ApiView, name="npspulse-health")
    class Health(ApiView):
        public = True

        async def get(self, request: Request) -> Response:
            problems = liveness_problems(self.app, crashes)
            if problems:
                return self.reply({"status": "failing", "problems": problems}, 503)
            return self.reply({"status": "ok"})

    @app.page("/ready", base=ApiView, name="npspulse-ready")
    class Ready(ApiView):
        public = True  # probes (Kubernetes httpGet, compose healthchecks) cannot send a secret header

        async def get(self, request: Request) -> Response:
            problems = liveness_problems(self.app, crashes) + await readiness_problems(self.app, broker)
            if problems:
                return self.reply({"status": "not ready", "reasons": problems}, 503)
            return self.reply({"status": "ready"})

    @app.page("/", base=ApiView, name="npspulse-dashboard")
    class Dashboard(ApiView):
        public = True  # the page holds no data: its script asks the API, with the token, for everything

        async def get(self, request: Request) -> Response:
            return self.html(page, headers={
                "Content-Security-Policy": content_security_policy(), "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    @app.page("/api/segments", base=ApiView, name="npspulse-segments")
    class Segments(ApiView):
        async def get(self, request: Request) -> Response:
            """Every segment's row; with ``?history=N`` also its N most recent windows and their trend."""
            history = parse_history(request.query.get("history"))
            redis = self.redis()
            snapshots = await redis.snapshots(await redis.segment_ids())
            rows = [segment_row(segment_id, fields, window) for segment_id, fields in snapshots.items()]
            if history:
                windows = await redis.window_histories([row["segment_id"] for row in rows], history)
                rows = [with_history(row, windows[row["segment_id"]]) for row in rows]
            return self.reply({"segments": rows, "count": len(rows)})

    @app.page("/api/segments/{segment_id}", base=ApiView, name="npspulse-segment")
    class Segment(ApiView):
        async def get(self, request: Request, segment_id: str) -> Response:
            redis = self.redis()
            fields = (await redis.snapshots([segment_id])).get(segment_id)
            if not fields:
                return self.reply({"error": f"unknown segment {segment_id!r}"}, 404)
            row = segment_row(segment_id, fields, window)
            row["history"] = await redis.window_history(segment_id)
            return self.reply(row)

    @app.page("/api/alerts", base=ApiView, name="npspulse-alerts")
    class Alerts(ApiView):
        async def get(self, request: Request) -> Response:
            since = parse_since(request.query.get("since"))
            limit = parse_limit(request.query.get("limit"))
            alerts = await self.redis().recent_alerts(since, limit)
            return self.reply({"alerts": alerts, "count": len(alerts)})
