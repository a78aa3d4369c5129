"""The dashboard in headless Chromium against a worker on the real broker and Redis: a simulated incident
opens an alert, the page (token from the URL fragment) shows the segment highlighted and the alert with its
evidence, sorts, fits a narrow window; the replay's HTML report renders the same views from embedded data."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_web_api import get, poll, web_port

from streams.client import produce_files
from streams.replay import replay
from streams.report import write_html_report
from streams.simulate import SimulationSettings, parse_incident, simulate_to_file

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server"]
WAIT_MS = 30_000
INCIDENT_SEGMENT = "region=EU|channel=app"
# The stream ends 45 minutes into the incident, so its alert is still open when the page loads.
INCIDENT = f"{INCIDENT_SEGMENT} @ +9h for 60m +40pp"
# Redis keys are not per deployment: each run simulates a different day, so its alert ids are its own and
# another run's alert events (some resolved) or segment states never pass for this run's.
FIRST_DAY_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DURATION_MS = (9 * 60 + 45) * 60_000
TOKEN = "dashboard-test-token"
ROW = f'#segments tr[data-segment="{INCIDENT_SEGMENT}"]'


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never `playwright install`); skipped locally when missing and
    failed under CI, like the services."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser: Any, width: int = 1400, height: int = 1000) -> tuple[Any, list[str]]:
    """A page with default timeouts and a list collecting its console errors and uncaught exceptions."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(WAIT_MS)
    page.set_default_navigation_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return page, problems


def _number(text: str) -> float:
    return float(text.split()[0].replace("\u2212", "-"))


def test_dashboard_shows_the_incident_live(deployment, reader, browser, tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    start_ms = FIRST_DAY_MS + secrets.randbelow(60) * 86_400_000
    simulate_to_file(SimulationSettings(customers=1500, duration_ms=DURATION_MS, answers_per_minute=40, seed=21,
                                        start_ms=start_ms, incidents=(parse_incident(INCIDENT),)), stream)
    assert produce_files([stream], deployment.config, progress=False).failed == 0
    worker = deployment.start_worker(NPSPULSE_API_TOKEN=TOKEN)

    def opened(events: list[dict]) -> list[dict]:
        return [e for e in events if e.get("segment_id") == INCIDENT_SEGMENT and e.get("type") == "alert.opened"]

    events = reader(deployment.names.alerts).read_until(lambda got: bool(opened(got)), timeout=240, alive=worker)
    assert opened(events), deployment.log()[-4000:]
    alert_id = opened(events)[0]["alert_id"]

    def incident_open(status: int, body: Any) -> bool:
        rows = {row["segment_id"]: row for row in body["segments"]} if status == 200 else {}
        alert = rows.get(INCIDENT_SEGMENT, {}).get("alert") or {}
        return alert.get("alert_id") == alert_id and alert.get("state") == "open"

    status, body = poll(worker, "/api/segments", incident_open, timeout=60, token=TOKEN)
    assert incident_open(status, body), (status, body, deployment.log()[-4000:])
    base = f"http://127.0.0.1:{web_port(worker)}"

    # What the page's table asks for: each row with its newest windows, oldest first, and their trend.
    status, body = get(worker, "/api/segments?history=6", token=TOKEN)
    assert status == 200
    rows = {row["segment_id"]: row for row in body["segments"]}
    for row in rows.values():
        starts = [point[0] for point in row["history"]]
        assert 1 <= len(starts) <= 6 and starts == sorted(set(starts)), row
        recent = [p for p in row["history"] if p[0] >= row["history"][-1][1] - 3_600_000]
        assert row["trend"]["responses"] == sum(p[2] for p in recent), row
    status, one = get(worker, "/api/segments/" + urllib.parse.quote(INCIDENT_SEGMENT, safe=""), token=TOKEN)
    full = sorted(window["window_start"] for window in one["history"])
    incident_starts = [point[0] for point in rows[INCIDENT_SEGMENT]["history"]]
    assert len(incident_starts) == 6 and incident_starts[0] in full
    assert full[full.index(incident_starts[0]):][:6] == incident_starts  # consecutive windows of the full history
    assert get(worker, "/api/segments?history=289", token=TOKEN)[0] == 400

    # The page itself is public and holds no data; the API behind it still wants the token.
    with urllib.request.urlopen(base + "/", timeout=10) as response:
        shell = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert response.headers["Content-Type"].startswith("text/html")
    assert INCIDENT_SEGMENT not in shell and "<table id=\"segments\">" in shell
    assert "connect-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert get(worker, "/api/segments?history=48")[0] == 401

    page, problems = _page(browser)
    page.goto(base + "/")
    page.wait_for_selector("#token-form:not([hidden])")
    assert page.locator("#segments tbody tr[data-segment]").count() == 0
    problems.clear()  # the browser reports the API's 401 answers to the tokenless page as console errors

    page.goto(base + "/#token=" + TOKEN)
    page.wait_for_selector(f"{ROW}.alerting")
    assert page.evaluate("location.hash") == ""  # the token left the URL (it stays in sessionStorage)
    badge = page.locator(f"{ROW} .badge.open").inner_text()
    assert "ALERT" in badge and re.search(r"sev-[12]", badge), badge
    assert page.locator(f"{ROW}").get_attribute("data-alert") == "open"

    card = page.locator(f'#alerts li.open[data-alert-id="{alert_id}"]')
    card.wait_for()
    evidence = card.inner_text()
    assert "OPEN" in evidence and INCIDENT_SEGMENT in evidence
    for label in ("Rise", "NPS", "Drivers", "Onset", "Opened"):
        assert label in evidence, evidence
    rise = re.search(r"Rise\s+\+(\d+\.\d) pts detractors: (\d+\.\d)% \[(\d+)%\u2013(\d+)%\] vs baseline (\d+\.\d)%", evidence)
    assert rise, evidence
    share, low, high, baseline = (float(rise.group(i)) for i in (2, 3, 4, 5))
    assert low <= share <= high and share > baseline and float(rise.group(1)) > 5

    page.locator(f"{ROW} .segment-name").click()
    page.wait_for_selector(f'#charts figure[data-chart="{INCIDENT_SEGMENT}"] rect.alert-span')
    assert page.locator(f'#charts figure[data-chart="{INCIDENT_SEGMENT}"] polygon.band').count() >= 1
    page.wait_for_selector(f"{ROW}.selected")
    page.screenshot(path=str(tmp_path / "dashboard.png"))

    page.locator('#segments th[data-sort="nps"] button').click()
    assert page.locator('#segments th[data-sort="nps"]').get_attribute("aria-sort") == "ascending"
    shown = page.eval_on_selector_all('#segments tbody tr[data-segment] td[data-label="NPS"]',
                                      "cells => cells.map(cell => cell.textContent)")
    values = [_number(text) for text in shown if not text.startswith("\u2013")]
    assert len(values) > 10 and values == sorted(values), shown

    page.set_viewport_size({"width": 380, "height": 900})
    page.wait_for_selector(f"{ROW}.alerting")
    assert page.evaluate("document.documentElement.scrollWidth") <= 380
    page.screenshot(path=str(tmp_path / "dashboard-narrow.png"), full_page=False)
    assert problems == [], problems
    assert TOKEN not in page.content()
    assert worker.poll() is None, deployment.log()

    # The replay's report: the same renderer over embedded data, opened from a file.
    result = replay([stream], deployment.config.engine, tmp_path / "replay", progress=False, keep_history=True)
    report = tmp_path / "report.html"
    write_html_report(result, report, stream.name)
    page, problems = _page(browser)
    page.goto(report.as_uri())
    page.wait_for_selector(f"{ROW}.alerting, {ROW}.alerted")
    assert page.locator(f'#alerts li[data-segment="{INCIDENT_SEGMENT}"]').count() >= 1
    assert page.locator(f'#charts figure[data-chart="{INCIDENT_SEGMENT}"] rect.alert-span').count() >= 1
    page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
    assert problems == [], problems
    if os.environ.get("NPSPULSE_DASHBOARD_SCREENSHOT"):  # to refresh docs/dashboard.png from a real run
        shutil.copyfile(tmp_path / "dashboard.png", os.environ["NPSPULSE_DASHBOARD_SCREENSHOT"])
