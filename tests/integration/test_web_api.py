"""The worker's HTTP API on the real broker and Redis: health, readiness, segments, alerts and the token."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.nps import NpsCounts
from processors.timeparse import format_rfc3339_ms
from processors.windows import WindowResult
from streams.client import produce_files
from streams.redis_store import WINDOW_HISTORY_SIZE, RedisStore, StoreUnavailable
from streams.simulate import SimulationSettings, parse_incident, simulate_to_file

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

INCIDENT_SEGMENT = "region=EU|channel=app"
INCIDENT = f"{INCIDENT_SEGMENT} @ +9h for 60m +40pp"


def web_port(process: subprocess.Popen) -> int:
    """The --web-port the Deployment fixture gave this worker."""
    args = list(process.args)  # type: ignore[arg-type]
    return int(args[args.index("--web-port") + 1])


def get(process: subprocess.Popen, path: str, token: str | None = None) -> tuple[int, Any]:
    """GET a path of the worker's web server: (status, decoded JSON body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{web_port(process)}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def poll(process: subprocess.Popen, path: str, until: Any, timeout: float, token: str | None = None) -> tuple[int, Any]:
    """GET ``path`` until ``until(status, body)`` holds (connection errors while the worker starts are retried)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline and process.poll() is None:
        try:
            last = get(process, path, token)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            last = (0, None)
        if until(*last):
            return last
        time.sleep(0.5)
    return last


def test_api_serves_health_readiness_segments_and_alerts(deployment, reader, tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    simulate_to_file(SimulationSettings(customers=1500, duration_ms=12 * 3_600_000, answers_per_minute=40, seed=21,
                                        incidents=(parse_incident(INCIDENT),)), stream)
    assert produce_files([stream], deployment.config, progress=False).failed == 0
    worker = deployment.start_worker()

    assert poll(worker, "/health", lambda status, _: status == 200, timeout=60) == (200, {"status": "ok"})
    status, body = poll(worker, "/ready", lambda status, _: status == 200, timeout=90)
    assert status == 200 and body == {"status": "ready"}, (status, body, deployment.log())

    alerts = reader(deployment.names.alerts).read_until(
        lambda got: any(a["segment_id"] == INCIDENT_SEGMENT and a["type"] == "alert.opened" for a in got),
        timeout=180, alive=worker)
    found = [a for a in alerts if a["segment_id"] == INCIDENT_SEGMENT and a["type"] == "alert.opened"]
    assert found, (get(worker, "/health"), deployment.log()[-4000:])
    opened = found[0]

    # Redis is written right after the alerts topic: poll until the snapshot shows the alert.
    def incident_row(status: int, body: Any) -> bool:
        rows = {row["segment_id"]: row for row in body["segments"]} if status == 200 else {}
        alert = rows.get(INCIDENT_SEGMENT, {}).get("alert")
        return bool(alert) and alert["alert_id"] == opened["alert_id"]

    status, body = poll(worker, "/api/segments", incident_row, timeout=30)
    assert incident_row(status, body), (status, body)
    rows = {row["segment_id"]: row for row in body["segments"]}
    assert body["count"] == len(body["segments"])
    assert {"all", "region=EU", INCIDENT_SEGMENT} <= rows.keys()
    row = rows[INCIDENT_SEGMENT]
    assert row["alert"]["state"] in ("open", "resolved")
    assert row["alert"]["severity"] in ("sev-1", "sev-2") and row["alert"]["at"] >= opened["at"]
    last = row["last_window"]
    assert last["window"] == "5m" and last["end"] - last["start"] == 300_000 and last["responses"] > 0
    assert last["nps_low"] <= last["nps"] <= last["nps_high"]
    assert 0 <= last["detractor_share"] <= 1

    status, one = get(worker, "/api/segments/" + urllib.parse.quote(INCIDENT_SEGMENT, safe=""))
    assert status == 200 and one["segment_id"] == INCIDENT_SEGMENT and one["alert"]["alert_id"] == opened["alert_id"]
    starts = [window["window_start"] for window in one["history"]]
    assert starts and starts == sorted(starts, reverse=True) and len(set(starts)) == len(starts)
    assert get(worker, "/api/segments/" + urllib.parse.quote("region=Atlantis", safe=""))[0] == 404

    status, feed = get(worker, "/api/alerts?limit=1000")
    assert status == 200 and opened["id"] in {a["id"] for a in feed["alerts"]}
    # the segment's alert state is that of one of its alert's events (written together)
    states = {(a["alert_id"], a["incident_id"], a["severity"], a["at"]) for a in feed["alerts"]}
    assert (opened["alert_id"], row["alert"]["incident_id"], row["alert"]["severity"], row["alert"]["at"]) in states
    times = [a["at"] for a in feed["alerts"]]
    assert times == sorted(times, reverse=True)
    for since in (str(opened["at"]), urllib.parse.quote(format_rfc3339_ms(opened["at"]))):
        status, recent = get(worker, f"/api/alerts?since={since}&limit=1000")
        assert status == 200 and opened["id"] in {a["id"] for a in recent["alerts"]}
        assert all(a["at"] >= opened["at"] for a in recent["alerts"])
    status, newest = get(worker, "/api/alerts?limit=1")
    assert status == 200 and newest["count"] == 1 and newest["alerts"][0]["at"] == times[0]
    status, error = get(worker, "/api/alerts?since=yesterday")
    assert status == 400 and "since" in error["error"]
    assert worker.poll() is None, deployment.log()


def test_api_token_guards_every_route_but_the_probes(deployment) -> None:
    token = "s3cret-api-token"
    worker = deployment.start_worker(NPSPULSE_API_TOKEN=token)
    assert poll(worker, "/health", lambda status, _: status == 200, timeout=60) == (200, {"status": "ok"})
    for path in ("/api/segments", "/api/segments/all", "/api/alerts"):
        assert get(worker, path)[0] == 401, path
        assert get(worker, path, token="wrong")[0] == 401, path
    status, body = get(worker, "/api/alerts?limit=5", token=token)
    assert status == 200 and body["count"] == len(body["alerts"]) <= 5
    assert get(worker, "/api/segments", token=token)[0] == 200
    status, body = poll(worker, "/ready", lambda status, _: status == 200, timeout=90)  # a probe: no token
    assert (status, body) == (200, {"status": "ready"}), (status, body)
    assert token not in deployment.log()


@pytest.mark.redis
def test_store_reads_for_the_api(redis_url: str) -> None:
    """Window history (a re-emitted window replaces itself; capped), snapshots, the alert feed's ``since``,
    and StoreUnavailable when Redis is not there."""
    segment = f"test={uuid.uuid4().hex}"
    windows = [WindowResult(segment, "5m", start, start + 300_000, NpsCounts(1, 2, 3))
               for start in range(0, (WINDOW_HISTORY_SIZE + 5) * 300_000, 300_000)]

    async def scenario() -> None:
        store = RedisStore(redis_url)
        try:
            await store.save_snapshots(windows[:3], {})
            await store.save_snapshots([WindowResult(segment, "5m", 0, 300_000, NpsCounts(4, 0, 0))], {})
            history = await store.window_history(segment)
            assert [w["window_start"] for w in history] == [600_000, 300_000, 0]
            assert history[-1]["detractors"] == 4  # the re-emitted window replaced the first
            await store.save_snapshots(windows[3:], {})
            history = await store.window_history(segment)
            assert len(history) == WINDOW_HISTORY_SIZE and history[0]["window_start"] == windows[-1].start
            assert segment in await store.segment_ids()
            snapshot = (await store.snapshots([segment, segment + "-unknown"]))
            assert list(snapshot) == [segment] and snapshot[segment]["5m.window_start"] == str(windows[-1].start)
            alert_id = uuid.uuid4().hex
            events = [{"id": f"{alert_id}-{at}", "type": "alert.opened", "alert_id": alert_id, "incident_id": alert_id,
                       "segment_id": segment, "severity": "sev-2", "at": at} for at in (10**15, 10**15 + 60_000)]
            await store.save_alerts(events)
            assert [a["id"] for a in await store.recent_alerts(10**15 + 1, 10)] == [events[1]["id"]]
            assert [a["id"] for a in await store.recent_alerts(10**15, 10)] == [events[1]["id"], events[0]["id"]]
            assert len(await store.recent_alerts(None, 1)) == 1
            await store._client.zrem(store.alert_feed_key, *(orjson.dumps(e) for e in events))
            await store._client.delete(store.segment_key(segment), store.window_history_key(segment))
            await store._client.srem(store.segment_index_key, segment)
        finally:
            await store.close()
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        down = RedisStore(f"redis://127.0.0.1:{port}/0")
        try:
            for call in (down.segment_ids(), down.snapshots(["all"]), down.window_history("all"),
                         down.recent_alerts(None, 5)):
                with pytest.raises(StoreUnavailable):
                    await call
        finally:
            await down.close()

    asyncio.run(scenario())
