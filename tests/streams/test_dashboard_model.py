"""The dashboard's data: compact window points, the last-hour trend, the page's embedding and policy."""

from __future__ import annotations

import base64
import hashlib
import re

import orjson
import pytest

from processors.nps import NpsCounts
from processors.windows import WindowResult
from streams.dashboard import content_security_policy, embed_json, render_page
from streams.dashboard.model import history_points, trend, with_history
from streams.web import BadRequest, parse_history

FIVE_MIN = 300_000


def _window(start: int, detractors: int, passives: int, promoters: int) -> dict:
    return WindowResult("region=EU", "5m", start, start + FIVE_MIN, NpsCounts(detractors, passives, promoters)).to_dict()


def test_points_are_oldest_first_and_compact() -> None:
    windows = [_window(FIVE_MIN, 1, 0, 3), _window(0, 2, 2, 0), _window(2 * FIVE_MIN, 0, 0, 0)]
    points = history_points(windows)
    assert [p[0] for p in points] == [0, FIVE_MIN, 2 * FIVE_MIN]
    assert points[1][:6] == [FIVE_MIN, 2 * FIVE_MIN, 4, 1, 3, 50.0]
    assert points[1][6] < 50.0 < points[1][7]
    assert points[2][2] == 0 and points[2][5:] == [None, None, None]  # no answers: no NPS, no interval


def test_trend_pools_the_last_hour_against_the_earlier_windows() -> None:
    # 3 hours of windows: the first two hours all promoters, the last hour 1 detractor + 1 promoter each.
    windows = [_window(i * FIVE_MIN, 0, 0, 2) for i in range(24)] + [_window(i * FIVE_MIN, 1, 0, 1) for i in range(24, 36)]
    result = trend(history_points(windows))
    assert result["responses"] == 24 and result["earlier_responses"] == 48
    assert result["nps"] == 0.0 and result["earlier_nps"] == 100.0 and result["change"] == -100.0
    low, high = NpsCounts(12, 0, 12).interval()
    assert (result["nps_low"], result["nps_high"]) == (round(low, 2), round(high, 2))


def test_trend_without_earlier_windows_or_answers() -> None:
    only_recent = trend(history_points([_window(0, 1, 1, 1)]))
    assert only_recent["responses"] == 3 and only_recent["change"] is None and only_recent["earlier_nps"] is None
    empty = trend([])
    assert empty["responses"] == 0 and empty["nps"] is None and empty["change"] is None
    silent = trend(history_points([_window(0, 0, 0, 0)]))
    assert silent["nps"] is None and silent["nps_low"] is None


def test_api_row_gets_history_and_trend() -> None:
    row = with_history({"segment_id": "region=EU", "alert": None}, [_window(FIVE_MIN, 0, 0, 1), _window(0, 1, 0, 0)])
    assert [p[0] for p in row["history"]] == [0, FIVE_MIN] and row["trend"]["responses"] == 2
    assert row["alert"] is None


def test_parse_history() -> None:
    assert parse_history(None) == 0 and parse_history("") == 0 and parse_history("48") == 48
    for bad in ("-1", "x", "289", "4.5"):
        with pytest.raises(BadRequest, match="history"):
            parse_history(bad)


def test_embedded_json_cannot_close_its_script_element() -> None:
    hostile = {"segment_id": "x</script><script>alert(1)</script><!--"}
    text = embed_json(hostile)
    assert "<" not in text and orjson.loads(text) == hostile
    page = render_page({"segments": [hostile]}, title="a <b> & c")
    assert page.count("</script>") == 2 and "<title>a &lt;b&gt; &amp; c</title>" in page


def test_live_page_has_no_data_and_its_policy_allows_exactly_its_inline_code() -> None:
    page = render_page()
    assert re.search(r'<script type="application/json" id="npspulse-data">null</script>', page)
    script = re.search(r"<script>(.*?)</script>", page, re.S)
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert script and style
    policy = content_security_policy()
    for body in (script.group(1), style.group(1)):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "unsafe-inline" not in policy and "connect-src 'self'" in policy
