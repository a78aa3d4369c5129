/* npspulse dashboard: one renderer for the live page (polls the worker's API) and the static replay report
   (the same data embedded as JSON). Only known fields are shown; every value goes in as text, never as HTML. */
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("npspulse-data").textContent);
  var LIVE = DATA === null;
  var POLL_MS = 5000;
  var TABLE_HISTORY = 48;   // 5-minute windows per sparkline on the live page (4 hours)
  var TOKEN_KEY = "npspulse.token";
  var SVG = "http://www.w3.org/2000/svg";

  var state = {
    segments: [],            // {id, alert, points, trend}
    alerts: new Map(),       // event id -> alert event
    details: new Map(),      // segment id -> full history points (live: the selected one; report: all)
    charts: [],              // segment ids charted below the table (report: every alerted one)
    selected: null,
    sort: {key: "priority", dir: 1},
    newestAt: null,
    token: null,
    timer: null
  };

  // ------------------------------------------------------------------------------------------- helpers

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function finite(value) { return typeof value === "number" && isFinite(value); }

  function signed(value, digits) {
    if (!finite(value)) return "\u2013";
    var text = Math.abs(value).toFixed(digits || 0);
    if (Number(text) === 0) return text;
    return (value > 0 ? "+" : "\u2212") + text;
  }

  function percent(share, digits) { return finite(share) ? (100 * share).toFixed(digits === undefined ? 1 : digits) + "%" : "\u2013"; }

  function clock(ms) {
    if (!finite(ms)) return "\u2013";
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function hhmm(ms) { return new Date(ms).toISOString().slice(11, 16); }

  // ------------------------------------------------------------------------------------------- data

  function pointsFromWindows(windows) {
    return windows.slice().sort(function (a, b) { return a.window_start - b.window_start; }).map(function (w) {
      return [w.window_start, w.window_end, w.responses, w.detractors, w.promoters, w.nps, w.nps_low, w.nps_high];
    });
  }

  function segmentFromRow(row) {
    return {id: row.segment_id, alert: row.alert || null, points: row.history || [], trend: row.trend || {}};
  }

  function addAlerts(events) {
    events.forEach(function (event) {
      state.alerts.set(event.id, event);
      if (state.newestAt === null || event.at > state.newestAt) state.newestAt = event.at;
    });
  }

  /* One entry per alert (its events in time order, the newest last): open ones first, sev-1 before sev-2,
     then the most recent. */
  function alertsById() {
    var byId = new Map();
    state.alerts.forEach(function (event) {
      if (!byId.has(event.alert_id)) byId.set(event.alert_id, []);
      byId.get(event.alert_id).push(event);
    });
    var list = [];
    byId.forEach(function (events) {
      events.sort(function (a, b) { return a.at - b.at; });
      list.push({latest: events[events.length - 1], first: events[0], events: events});
    });
    list.sort(function (a, b) {
      var openA = a.latest.type !== "alert.resolved", openB = b.latest.type !== "alert.resolved";
      if (openA !== openB) return openA ? -1 : 1;
      if (openA && a.latest.severity !== b.latest.severity) return a.latest.severity < b.latest.severity ? -1 : 1;
      return b.latest.at - a.latest.at;
    });
    return list;
  }

  function isOpen(segment) { return !!(segment.alert && segment.alert.state === "open"); }

  // ------------------------------------------------------------------------------------------- sorting

  var SORTS = {
    priority: function (s) { return isOpen(s) ? (s.alert.severity === "sev-1" ? 0 : 1) : s.alert ? 2 : 3; },
    segment: function (s) { return s.id; },
    nps: function (s) { return s.trend.nps; },
    change: function (s) { return s.trend.change; },
    volume: function (s) { return s.trend.responses; }
  };
  var FIRST_DIRECTION = {segment: 1, nps: 1, change: 1, volume: -1};

  function sortedSegments() {
    var key = SORTS[state.sort.key], dir = state.sort.dir;
    return state.segments.slice().sort(function (a, b) {
      var x = key(a), y = key(b);
      var missingX = x === null || x === undefined, missingY = y === null || y === undefined;
      if (missingX !== missingY) return missingX ? 1 : -1;
      if (!missingX && x !== y) return (x < y ? -1 : 1) * dir;
      if (state.sort.key === "priority") {
        var volume = (b.trend.responses || 0) - (a.trend.responses || 0);
        if (volume) return volume;
      }
      return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    });
  }

  function bindSorting() {
    document.querySelectorAll("#segments th[data-sort] button").forEach(function (button) {
      button.addEventListener("click", function () {
        var key = button.parentNode.getAttribute("data-sort");
        state.sort = state.sort.key === key ? {key: key, dir: -state.sort.dir} : {key: key, dir: FIRST_DIRECTION[key]};
        renderTable();
      });
    });
  }

  // ------------------------------------------------------------------------------------------- charts

  /* Runs of adjacent windows that have an NPS: a window without answers, or a gap (windows never closed, e.g.
     while no worker ran), breaks the line instead of drawing across it. */
  function runs(points) {
    var out = [], current = [];
    points.forEach(function (p) {
      if (current.length && (!finite(p[5]) || p[0] !== current[current.length - 1][1])) { out.push(current); current = []; }
      if (finite(p[5])) current.push(p);
    });
    if (current.length) out.push(current);
    return out;
  }

  function domain(points) {
    var low = Infinity, high = -Infinity;
    points.forEach(function (p) {
      if (finite(p[6])) low = Math.min(low, p[6]);
      if (finite(p[7])) high = Math.max(high, p[7]);
    });
    if (!isFinite(low) || !isFinite(high)) return [-100, 100];
    low = Math.max(-100, Math.floor(low / 10) * 10);
    high = Math.min(100, Math.ceil(high / 10) * 10);
    if (high - low < 20) { low = Math.max(-100, low - 10); high = Math.min(100, high + 10); }
    return [low, high];
  }

  function drawSeries(group, points, x, y) {
    runs(points).forEach(function (run) {
      var upper = run.map(function (p) { return x((p[0] + p[1]) / 2) + "," + y(p[7]); });
      var lower = run.slice().reverse().map(function (p) { return x((p[0] + p[1]) / 2) + "," + y(p[6]); });
      if (run.length === 1) {
        var mid = x((run[0][0] + run[0][1]) / 2);
        group.appendChild(svg("line", {"class": "line", x1: mid, x2: mid, y1: y(run[0][6]), y2: y(run[0][7])}));
        return;
      }
      group.appendChild(svg("polygon", {"class": "band", points: upper.concat(lower).join(" ")}));
      group.appendChild(svg("polyline", {"class": "line", points: run.map(function (p) {
        return x((p[0] + p[1]) / 2) + "," + y(p[5]);
      }).join(" ")}));
    });
  }

  function scales(points, width, height, margin) {
    var t0 = points[0][0], t1 = points[points.length - 1][1], span = Math.max(1, t1 - t0);
    var range = domain(points);
    var x = function (t) { return (margin.left + (t - t0) / span * (width - margin.left - margin.right)).toFixed(1); };
    var y = function (v) {
      var clipped = Math.max(range[0], Math.min(range[1], v));
      return (margin.top + (range[1] - clipped) / (range[1] - range[0]) * (height - margin.top - margin.bottom)).toFixed(1);
    };
    return {x: x, y: y, range: range, t0: t0, t1: t1};
  }

  function sparkline(points) {
    var width = 120, height = 32;
    var chart = svg("svg", {"class": "spark", viewBox: "0 0 " + width + " " + height, preserveAspectRatio: "none",
                            role: "img", "aria-label": points.length ? "NPS trend, " + points.length + " windows" : "no windows yet"});
    if (!points.length) return chart;
    var s = scales(points, width, height, {left: 1, right: 1, top: 2, bottom: 2});
    if (s.range[0] < 0 && s.range[1] > 0) {
      chart.appendChild(svg("line", {"class": "zero", x1: 0, x2: width, y1: s.y(0), y2: s.y(0)}));
    }
    drawSeries(chart, points, s.x, s.y);
    return chart;
  }

  function alertsOf(segmentId) {
    return alertsById().filter(function (a) { return a.latest.segment_id === segmentId; });
  }

  function bigChart(segmentId, points) {
    var width = 720, height = 240, margin = {left: 44, right: 12, top: 12, bottom: 26};
    var figure = el("figure");
    figure.setAttribute("data-chart", segmentId);
    var chart = svg("svg", {"class": "chart", viewBox: "0 0 " + width + " " + height, role: "img",
                            "aria-label": "NPS of " + segmentId + " per window with its 95% interval and alerts"});
    figure.appendChild(chart);
    var alerts = alertsOf(segmentId);
    if (!points.length) {
      chart.appendChild(svg("text", {"class": "axis", x: width / 2, y: height / 2, "text-anchor": "middle"}, "no closed windows yet"));
    } else {
      var s = scales(points, width, height, margin);
      var top = margin.top, bottom = height - margin.bottom;
      [s.range[0], s.range[0] < 0 && s.range[1] > 0 ? 0 : null, s.range[1]].forEach(function (v) {
        if (v === null) return;
        chart.appendChild(svg("line", {"class": "zero", x1: margin.left, x2: width - margin.right, y1: s.y(v), y2: s.y(v)}));
        chart.appendChild(svg("text", {"class": "axis", x: margin.left - 4, y: Number(s.y(v)) + 4, "text-anchor": "end"}, signed(v)));
      });
      [s.t0, (s.t0 + s.t1) / 2, s.t1].forEach(function (t, i) {
        chart.appendChild(svg("text", {"class": "axis", x: s.x(t), y: height - 8, "text-anchor": ["start", "middle", "end"][i]},
                              i === 1 ? hhmm(t) : clock(t).replace(" UTC", "")));
      });
      alerts.forEach(function (a) {
        var onset = Math.max(s.t0, a.latest.onset_at), end = a.latest.resolved_at || s.t1;
        if (end < s.t0 || onset > s.t1) return;
        var span = svg("rect", {"class": "alert-span", x: s.x(onset), y: top, width: Math.max(1, s.x(Math.min(end, s.t1)) - s.x(onset)),
                                height: bottom - top});
        span.appendChild(svg("title", {}, a.latest.severity + " alert from " + clock(a.latest.onset_at)));
        chart.appendChild(span);
        if (a.latest.opened_at >= s.t0 && a.latest.opened_at <= s.t1) {
          chart.appendChild(svg("line", {"class": "alert-mark", x1: s.x(a.latest.opened_at), x2: s.x(a.latest.opened_at), y1: top, y2: bottom}));
          chart.appendChild(svg("text", {"class": "axis", x: Number(s.x(a.latest.opened_at)) + 3, y: top + 10}, "\u25B2 " + a.latest.severity));
        }
      });
      drawSeries(chart, points, s.x, s.y);
    }
    var caption = el("figcaption");
    caption.appendChild(el("strong", null, segmentId));
    caption.appendChild(document.createTextNode(" \u2014 NPS per 5-minute window, band: 95% interval" +
      (alerts.length ? "; shaded: " + alerts.length + " alert(s) from onset to resolution, \u25B2 when opened" : "; no alerts")));
    figure.appendChild(caption);
    return figure;
  }

  function renderCharts() {
    var box = document.getElementById("charts");
    box.replaceChildren();
    var ids = [];
    if (state.selected) ids.push(state.selected);
    state.charts.forEach(function (id) { if (ids.indexOf(id) < 0) ids.push(id); });
    ids.forEach(function (id) {
      var points = state.details.get(id);
      if (!points) {
        var segment = state.segments.find(function (s) { return s.id === id; });
        points = segment ? segment.points : [];
      }
      box.appendChild(bigChart(id, points));
    });
    if (!ids.length) box.appendChild(el("p", "empty", "Select a segment to chart it."));
  }

  // ------------------------------------------------------------------------------------------- table

  function badge(segment) {
    if (!segment.alert) return null;
    if (segment.alert.state === "open") return el("span", "badge open", "\u26A0 ALERT " + (segment.alert.severity || ""));
    return el("span", "badge resolved", "\u2713 resolved " + (segment.alert.severity || ""));
  }

  function cell(row, label, className) {
    var td = el("td", className);
    if (label) td.setAttribute("data-label", label);
    row.appendChild(td);
    return td;
  }

  function renderTable() {
    document.querySelectorAll("#segments th[data-sort]").forEach(function (th) {
      var key = th.getAttribute("data-sort");
      if (key === state.sort.key) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    var body = document.querySelector("#segments tbody");
    body.replaceChildren();
    sortedSegments().forEach(function (segment) {
      var row = el("tr", (isOpen(segment) ? "alerting " : segment.alert ? "alerted " : "") +
                         (segment.id === state.selected ? "selected" : ""));
      row.setAttribute("data-segment", segment.id);
      row.setAttribute("data-alert", segment.alert ? segment.alert.state : "none");
      var name = cell(row, null);
      var button = el("button", "segment-name", segment.id);
      button.type = "button";
      button.setAttribute("aria-pressed", segment.id === state.selected ? "true" : "false");
      button.addEventListener("click", function () { select(segment.id); });
      name.appendChild(button);
      var mark = badge(segment);
      if (mark) name.appendChild(mark);
      cell(row, "Trend").appendChild(sparkline(segment.points));
      var t = segment.trend;
      var nps = cell(row, "NPS", "num");
      nps.appendChild(document.createTextNode(signed(t.nps) + " "));
      nps.appendChild(el("span", "interval", finite(t.nps_low) ? "[" + signed(t.nps_low) + ", " + signed(t.nps_high) + "]" : ""));
      cell(row, "Change", "num").textContent = finite(t.change) ? signed(t.change, 1) + " pts" : "\u2013";
      cell(row, "Answers", "num").textContent = finite(t.responses) ? t.responses.toLocaleString("en") : "\u2013";
      body.appendChild(row);
    });
    if (!state.segments.length) {
      var empty = el("tr");
      var td = el("td", "empty", "No segment has a closed window yet.");
      td.colSpan = 5;
      empty.appendChild(td);
      body.appendChild(empty);
    }
  }

  function select(id) {
    state.selected = id;
    renderTable();
    if (LIVE) { loadDetail(id).then(renderCharts, showError); } else { renderCharts(); }
  }

  // ------------------------------------------------------------------------------------------- alerts

  function term(list, label, value) {
    list.appendChild(el("dt", null, label));
    list.appendChild(el("dd", null, value));
  }

  function renderAlerts() {
    var box = document.getElementById("alerts");
    box.replaceChildren();
    var alerts = alertsById();
    if (!alerts.length) { box.appendChild(el("li", "empty", "No alerts.")); return; }
    alerts.slice(0, 200).forEach(function (a) {
      var e = a.latest, open = e.type !== "alert.resolved";
      var item = el("li", open ? "open" : "resolved");
      item.setAttribute("data-alert-id", e.alert_id);
      item.setAttribute("data-segment", e.segment_id);
      var title = el("div", "title");
      title.appendChild(el("span", "badge " + (open ? "open" : "resolved"), open ? "\u26A0 OPEN" : "\u2713 RESOLVED"));
      title.appendChild(el("span", null, e.severity));
      title.appendChild(el("span", null, e.segment_id));
      item.appendChild(title);
      var list = el("dl");
      term(list, "Rise", signed(e.rise_pp, 1) + " pts detractors: " + percent(e.detractor_share) + " [" +
           percent(e.share_low, 0) + "\u2013" + percent(e.share_high, 0) + "] vs baseline " + percent(e.baseline_share));
      term(list, "NPS", signed(e.nps) + " vs baseline " + signed(e.baseline_nps) + " (" + signed(e.nps_change, 1) + " pts)");
      term(list, "Answers", e.detractors + " detractors of " + e.responses + ", " +
           (finite(e.excess_detractors) ? e.excess_detractors.toFixed(1) : "\u2013") + " more than expected");
      term(list, "Drivers", (e.drivers || []).map(function (d) {
        return d.dimension + "=" + d.value + " (+" + Math.round(d.excess) + ")";
      }).join(", ") || "\u2013");
      term(list, "Onset", clock(e.onset_at));
      term(list, "Opened", clock(e.opened_at));
      term(list, open ? "Updated" : "Resolved", open ? (a.events.length > 1 ? clock(e.at) : "\u2013") : clock(e.resolved_at));
      term(list, "Incident", String(e.incident_id).slice(0, 8) + (e.incident_id === e.alert_id ? " (leads it)" :
           e.parent_segment_id ? " (under " + e.parent_segment_id + ")" : ""));
      item.appendChild(list);
      box.appendChild(item);
    });
  }

  // ------------------------------------------------------------------------------------------- status

  function showStatus(text, error) {
    var status = document.getElementById("status");
    status.textContent = text;
    status.className = error ? "error" : "";
  }

  function showError(error) {
    if (error && error.unauthorized) return;
    showStatus("Update failed: " + (error && error.message ? error.message : String(error)) + "; retrying", true);
  }

  function summary() {
    var open = state.segments.filter(isOpen).length;
    var newest = state.segments.reduce(function (m, s) {
      return s.points.length ? Math.max(m, s.points[s.points.length - 1][1]) : m;
    }, -Infinity);
    var resolved = state.segments.filter(function (s) { return s.alert && !isOpen(s); }).length;
    return state.segments.length + " segments, " + open + " alerting" + (resolved ? ", " + resolved + " with a resolved alert" : "") +
      (isFinite(newest) ? "; data up to " + clock(newest) : "");
  }

  // ------------------------------------------------------------------------------------------- live

  function readToken() {
    var match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askForToken() {
    var form = document.getElementById("token-form");
    form.hidden = false;
    showStatus(state.token ? "The API refused the token: enter it again." : "The API needs a token.", true);
    document.getElementById("token-input").focus();
  }

  function api(path) {
    var headers = {Accept: "application/json"};
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return fetch(path, {headers: headers, cache: "no-store", credentials: "omit"}).then(function (response) {
      if (response.status === 401) {
        askForToken();
        var error = new Error("unauthorized");
        error.unauthorized = true;
        throw error;
      }
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body && body.error ? body.error : "HTTP " + response.status);
        return body;
      });
    });
  }

  function loadDetail(id) {
    return api("/api/segments/" + encodeURIComponent(id)).then(function (body) {
      state.details = new Map([[id, pointsFromWindows(body.history || [])]]);
    });
  }

  function refresh() {
    clearTimeout(state.timer);
    var since = state.newestAt === null ? "limit=500" : "since=" + state.newestAt + "&limit=1000";
    return Promise.all([api("/api/segments?history=" + TABLE_HISTORY), api("/api/alerts?" + since)]).then(function (bodies) {
      state.segments = bodies[0].segments.map(segmentFromRow);
      addAlerts(bodies[1].alerts);
      if (state.selected === null && state.segments.length) {
        var first = sortedSegments()[0];
        state.selected = isOpen(first) ? first.id : (state.segments.some(function (s) { return s.id === "all"; }) ? "all" : first.id);
      }
      return state.selected ? loadDetail(state.selected) : null;
    }).then(function () {
      renderTable();
      renderCharts();
      renderAlerts();
      showStatus("Live, every " + POLL_MS / 1000 + " s: " + summary() + "; updated " + new Date().toISOString().slice(11, 19) + " UTC");
      state.timer = setTimeout(refresh, POLL_MS);
    }, function (error) {
      showError(error);
      if (!error.unauthorized) state.timer = setTimeout(refresh, POLL_MS);
    });
  }

  function startLive() {
    document.getElementById("segments-hint").textContent = "NPS: the last hour of 5-minute windows pooled, with its 95% " +
      "interval. Change: against the 3 hours before. Answers: in the last hour. Trend: 4 hours, band = 95% interval.";
    document.getElementById("token-form").addEventListener("submit", function (event) {
      event.preventDefault();
      state.token = document.getElementById("token-input").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      document.getElementById("token-input").value = "";
      document.getElementById("token-form").hidden = true;
      refresh();
    });
    window.addEventListener("hashchange", function () {
      if (!/(?:^#|&)token=/.test(location.hash)) return;
      state.token = readToken();
      document.getElementById("token-form").hidden = true;
      refresh();
    });
    state.token = readToken();
    refresh();
  }

  // ------------------------------------------------------------------------------------------- report

  function startReport() {
    document.title = DATA.title;
    document.getElementById("title").textContent = DATA.title;
    document.getElementById("segments-hint").textContent = DATA.hint;
    state.segments = DATA.segments.map(segmentFromRow);
    state.segments.forEach(function (s) { state.details.set(s.id, s.points); });
    addAlerts(DATA.alerts);
    state.charts = DATA.charts;
    renderTable();
    renderCharts();
    renderAlerts();
    showStatus(DATA.subtitle + ": " + summary());
  }

  bindSorting();
  if (LIVE) { startLive(); } else { startReport(); }
})();
