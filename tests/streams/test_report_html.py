"""`npspulse replay --report`: one self-contained HTML file with the dashboard's renderer and the replay's data."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from streams.cli import main
from streams.simulate import COMMENTS

INCIDENT_SEGMENT = "region=EU|channel=app"
INCIDENT = f"{INCIDENT_SEGMENT} @ +10h for 60m +30pp"


class _Resources(HTMLParser):
    """Every URL-bearing attribute and the embedded data."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self._in_data = False
        self.data = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "poster", "data") and value is not None:
                self.urls.append((tag, name, value))
        self._in_data = tag == "script" and ("id", "npspulse-data") in attrs

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data += data


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(report file, replay output dir, the input stream's text)."""
    base = tmp_path_factory.mktemp("report")
    stream = base / "stream.jsonl"
    assert main(["simulate", "--customers", "3000", "--duration", "12h", "--rate", "40", "--seed", "11",
                 "--incident", INCIDENT, "--out", str(stream)]) == 0
    report, out_dir = base / "nested" / "report.html", base / "out"
    assert main(["replay", str(stream), "--out-dir", str(out_dir), "--no-progress", "--report", str(report)]) == 0
    return report, out_dir, stream.read_text()


def test_report_is_self_contained_and_shows_the_incident(replayed: tuple[Path, Path, str]) -> None:
    report, out_dir, stream = replayed
    html = report.read_text(encoding="utf-8")
    parsed = _Resources()
    parsed.feed(html)
    # nothing fetched: no external script, stylesheet, image or link; scripts and styles are inline
    assert all(not re.match(r"\s*(https?:)?//", value, re.I) for _, _, value in parsed.urls), parsed.urls
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "@import" not in html and "url(" not in html
    assert "style" in parsed.tags and parsed.tags.count("script") == 2  # inline CSS; the data and the renderer
    assert [url for url in parsed.urls if url[0] == "link"] == [("link", "href", "data:,")]  # no favicon fetch

    data = json.loads(parsed.data)
    alerts = [orjson.loads(line) for line in (out_dir / "alerts.jsonl").read_bytes().splitlines()]
    assert data["alerts"] == alerts
    opened = [a for a in alerts if a["segment_id"] == INCIDENT_SEGMENT and a["type"] == "alert.opened"]
    assert opened and opened[0]["alert_id"] in html
    rows = {row["segment_id"]: row for row in data["segments"]}
    last = [a for a in alerts if a["segment_id"] == INCIDENT_SEGMENT][-1]
    assert rows[INCIDENT_SEGMENT]["alert"]["alert_id"] == last["alert_id"]
    assert rows[INCIDENT_SEGMENT]["alert"]["state"] == ("resolved" if last["type"] == "alert.resolved" else "open")
    assert INCIDENT_SEGMENT in data["charts"] and data["charts"][0] == "all"
    assert all(rows[segment]["alert"] is None for segment in rows if segment not in {a["segment_id"] for a in alerts})

    # the charts' points are the replay's 5-minute windows, each once, in time order
    windows = [orjson.loads(line) for line in (out_dir / "windows.jsonl").read_bytes().splitlines()]
    expected = sorted((w["window_start"], w["responses"], w["detractors"], w["promoters"])
                      for w in windows if w["segment_id"] == INCIDENT_SEGMENT and w["window"] == "5m")
    assert [(p[0], p[2], p[3], p[4]) for p in rows[INCIDENT_SEGMENT]["history"]] == expected
    assert set(rows) == {w["segment_id"] for w in windows}

    # customers' free-text comments are not in the report
    comments = {c for c in COMMENTS if c}
    assert any(c in stream for c in comments)  # the input has them
    assert not any(c in html for c in comments)


def test_report_needs_the_window_history(tmp_path: Path) -> None:
    from streams.replay import ReplayResult
    from streams.report import report_data

    with pytest.raises(ValueError, match="keep_history"):
        report_data(ReplayResult(), "x.jsonl")
