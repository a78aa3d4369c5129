"""/metrics on a real worker and the real broker: a known stream with malformed events in, the counters
scraped match what was fed and what the worker published."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.client import produce_files
from streams.simulate import SimulationSettings, parse_incident, simulate_to_file

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

TOKEN = "metrics-test-token"
INCIDENT = "region=EU|channel=app @ +9h for 60m +40pp"
VALID_SURVEY = {"type": "survey", "event_id": "bad-{n}", "customer_id": "m-{n}", "score": 7,
                "answered_at": "2026-03-02T10:00:00Z"}
# (topic, line, reason label): malformed events and the bounded reason each must be counted under
MALFORMED = (
    [("surveys", b"{not json", "event")] * 4
    + [("surveys", orjson.dumps({**VALID_SURVEY, "score": 11}), "score")] * 3
    + [("surveys", orjson.dumps({**VALID_SURVEY, "ssn": "123-45-6789"}), "unknown_field")] * 2
    + [("purchases", orjson.dumps({"type": "purchase", "event_id": "bad-p", "customer_id": "m-p", "amount": "9.99",
                                   "currency": "eur", "purchased_at": "2026-03-02T10:00:00Z"}), "currency")] * 2
)


def scrape(port: int, token: str | None = TOKEN) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of a text exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def by(found: dict, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name`` summed by the given labels."""
    totals: Counter = Counter()
    for sample_labels, value in found.get(name, []):
        totals[tuple(sample_labels[label] for label in labels)] += value
    return dict(totals)


def test_metrics_count_what_was_fed_and_published(deployment, reader, tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    simulate_to_file(SimulationSettings(customers=1500, duration_ms=12 * 3_600_000, answers_per_minute=40, seed=21,
                                        incidents=(parse_incident(INCIDENT),)), stream)
    lines = [orjson.loads(line) for line in stream.read_bytes().splitlines() if line.strip()]
    fed = Counter(line["type"] for line in lines)
    names = deployment.names
    topic_of = {"surveys": names.surveys, "purchases": names.purchases}
    assert produce_files([stream], deployment.config, progress=False).failed == 0
    for kind in ("surveys", "purchases"):
        bad = tmp_path / f"bad-{kind}.jsonl"
        bad.write_bytes(b"\n".join(line for topic, line, _ in MALFORMED if topic == kind) + b"\n")
        assert produce_files([bad], deployment.config, topic=topic_of[kind], progress=False).failed == 0
    worker = deployment.start_worker(NPSPULSE_API_TOKEN=TOKEN)
    args = list(worker.args)  # type: ignore[arg-type]
    port = int(args[args.index("--web-port") + 1])
    expected_in = {(names.surveys,): fed["survey"] + sum(1 for t, _, _ in MALFORMED if t == "surveys"),
                   (names.purchases,): fed["purchase"] + sum(1 for t, _, _ in MALFORMED if t == "purchases")}

    # Every record read, and then the counters stable across two scrapes (windows close after the stream's end
    # once its partitions go idle).
    deadline, previous, found = time.monotonic() + 300, None, {}
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            status, text = scrape(port)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status, text = 0, ""
        if status == 200:
            found = samples(text)
            counters = {name: by(found, name, *labels) for name, labels in (
                ("npspulse_events_in_total", ("topic",)), ("npspulse_windows_closed_total", ("window",)),
                ("npspulse_alerts_total", ("type",)), ("npspulse_triggers_total", ("campaign",)))}
            done = counters["npspulse_events_in_total"] == expected_in and counters["npspulse_windows_closed_total"]
            if done and counters == previous:
                break
            previous = counters if done else None
        time.sleep(5)
    assert by(found, "npspulse_events_in_total", "topic") == expected_in, deployment.log()[-3000:]

    expected_invalid = Counter((topic_of[topic], reason) for topic, _, reason in MALFORMED)
    assert by(found, "npspulse_events_invalid_total", "topic", "reason") == expected_invalid
    assert by(found, "npspulse_late_answers_total") == {(): 0}

    windows = reader(names.windows).read_until(
        lambda got: len(got) >= sum(by(found, "npspulse_windows_closed_total").values()), timeout=60)
    assert by(found, "npspulse_windows_closed_total", "window") == Counter((w["window"],) for w in windows)
    alerts = reader(names.alerts).read_until(
        lambda got: len(got) >= sum(by(found, "npspulse_alerts_total").values()), timeout=60)
    assert any(a["type"] == "alert.opened" for a in alerts), deployment.log()[-3000:]
    assert by(found, "npspulse_alerts_total", "type", "severity") == Counter((a["type"], a["severity"]) for a in alerts)
    triggers = reader(names.retarget).read_until(
        lambda got: len(got) >= sum(by(found, "npspulse_triggers_total").values()), timeout=60)
    assert triggers
    assert by(found, "npspulse_triggers_total", "campaign") == Counter((t["campaign_id"],) for t in triggers)

    # per-batch processing time, consumer lag per partition (caught up), Faust's own sensor
    assert by(found, "npspulse_batch_seconds_count", "stage").keys() >= {("answers",), ("slices",)}
    lag = by(found, "npspulse_consumer_lag", "topic", "partition")
    assert {(names.surveys, str(p)) for p in range(3)} <= lag.keys()
    assert all(lag[(names.surveys, str(p))] == 0 for p in range(3))
    assert {topic for topic, _ in lag} == {names.surveys, names.purchases, names.segment_slices}  # no changelogs
    assert by(found, "faust_messages_received_total")[()] >= sum(expected_in.values())

    # bounded labels: no customer id, no segment id (the incident's), no event id
    values = {value for series in found.values() for labels, _ in series for value in labels.values()}
    assert not values & {line["customer_id"] for line in lines}
    assert not values & {line["event_id"] for line in lines}
    assert "region=EU|channel=app" not in values

    # the API's bearer-token rule
    assert scrape(port, token=None)[0] == 401
    assert scrape(port, token="wrong")[0] == 401
