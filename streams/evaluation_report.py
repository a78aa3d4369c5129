"""Markdown report of an evaluation run (streams.evaluation): tables, targets, method, plain-language summary."""

from __future__ import annotations

import math
from typing import Any

from streams.window_tests import RULES

DETECTORS = ("npspulse", *RULES)
LABELS = {"npspulse": "npspulse", "fixed": "fixed share", "test-5m": "5-min test", "test-1h": "1-h hopping test"}
TARGET_DELAYS = {(10.0, 0.20): 100.0, (50.0, 0.10): 400.0, (50.0, 0.30): 60.0, (2.0, 0.10): 250.0}
# facts file: mean answers to alarm at ARL0 = 10^4 windows: (5-min test, 1-h hopping test, dual CUSUM)
REFERENCE_DELAYS = {(2.0, 0.10): (7834, 850, 211), (10.0, 0.10): (6121, 391, 273), (10.0, 0.20): (820, 97, 87),
                    (50.0, 0.10): (2780, 413, 337), (50.0, 0.20): (203, 216, 107), (50.0, 0.30): (77, 153, 53)}
FA_BAND = (0.5, 1.5)
SPEEDUP_VS_5M = 1.8
ONSET_TOLERANCE = 10.0


def _f(x: float, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return f"{x:,.{digits}f}"


def _g(x: float) -> str:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "-" if math.isnan(x) else "none"
    return f"{x:.3g}"


def _pp(x: float) -> str:
    return f"{100 * x:g} pp"


def _spikes(results: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((s for g in results["groups"] for s in g["spikes"]), key=lambda s: (s["rate"], s["shift"], s["fleet"]))


def _nulls(results: dict[str, Any]) -> list[dict[str, Any]]:
    order = {"independent": 0, "daily-cycle": 1, "overdispersed": 2}
    return sorted((n for g in results["groups"] for n in g["nulls"].values()),
                  key=lambda n: (order[n["kind"]], n["rate"], n["fleet"]))


def _delay(d: dict[str, Any], key: str = "mean") -> str:
    value = math.inf if d[key] is None else d[key]  # JSON has no infinity
    text = _f(value)
    if d["censored"] and math.isfinite(value):
        text = ("~" if d["estimate"] == "exposure" else ">=") + text
    return text


def null_table(results: dict[str, Any]) -> str:
    rows = ["| null | r | N | npspulse FA /1000 win | budget | ratio (95% CI) | alarms | h raised: segments (median kappa) "
            "| alert open, median (p90) min "
            "| never resolved | fixed 15 pp uncalibrated FA /1000 win | calibrated c | calibrated -log10 alpha 5 min "
            "| calibrated -log10 alpha 1 h |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in _nulls(results):
        k = n["alarms"]
        lo, hi = _ratio_ci(n)
        cal = n["calibration"]
        rows.append(
            f"| {n['kind']} | {n['rate']:g} | {n['fleet']} | {_g(n['fa_per_1000'])} | {_g(n['budget_per_1000'])} "
            f"| {n['ratio']:.2f} ({lo:.2f}-{hi:.2f}) | {k} | {_raised(n)} | {_f(n['alert_minutes_median'])} "
            f"({_f(n['alert_minutes_p90'])}) | {n['unresolved']} | {_g(n['fixed_uncalibrated_per_1000'])} "
            f"| {_cal(cal['fixed']['threshold'], pp=True)} | {_cal(cal['test-5m']['threshold'])} "
            f"| {_cal(cal['test-1h']['threshold'])} |")
    return "\n".join(rows)


def _raised(n: dict[str, Any]) -> str:
    """Share of segments whose thresholds the overdispersion estimate raised, and their median kappa."""
    share = n.get("dispersed_share", 0.0)
    kappa = n.get("kappa_median")
    if not share or kappa is None or not math.isfinite(kappa):
        return f"{100 * share:.0f}%"
    return f"{100 * share:.0f}% ({kappa:,.0f})"


def _cal(value: float | None, pp: bool = False) -> str:
    if value is None or math.isinf(value):  # JSON has no infinity
        return "none"
    return f"{100 * value:.1f} pp" if pp else f"{value:.2f}"


def _poisson_ci(k: int) -> tuple[float, float]:
    """Approximate 95% interval of a Poisson count (Wilson-Hilferty / Byar)."""
    if k == 0:
        return 0.0, 3.69
    lo = k * (1 - 1 / (9 * k) - 1.96 / (3 * math.sqrt(k))) ** 3
    k1 = k + 1
    hi = k1 * (1 - 1 / (9 * k1) + 1.96 / (3 * math.sqrt(k1))) ** 3
    return lo, hi


def delay_table(results: dict[str, Any], key: str, unit: str) -> str:
    head = " | ".join(f"{LABELS[d]} mean (p90)" for d in DETECTORS)
    rows = [f"| r | shift | N | {head} | 5-min test / npspulse |" if unit == "answers" else f"| r | shift | N | {head} |",
            "|---|---|---|" + "---|" * len(DETECTORS) + ("---|" if unit == "answers" else "")]
    for s in _spikes(results):
        cells = []
        for name in DETECTORS:
            d = s["detectors"][name]
            cells.append(f"{_delay(d, key)} ({_delay(d, 'p90' if key == 'mean' else 'p90_minutes')})")
        line = f"| {s['rate']:g} | +{_pp(s['shift'])} | {s['fleet']} | " + " | ".join(cells) + " |"
        if unit == "answers":
            line += f" {_speedup(s):.1f}x |"
        rows.append(line)
    return "\n".join(rows)


def _speedup(s: dict[str, Any]) -> float:
    return s["detectors"]["test-5m"]["mean"] / s["detectors"]["npspulse"]["mean"]


def onset_table(results: dict[str, Any]) -> str:
    rows = ["| r | shift | N | excluded (alert open at onset) | onset error median (IQR), answers | sev-1 share |",
            "|---|---|---|---|---|---|"]
    for s in _spikes(results):
        o = s["onset_error"]
        rows.append(f"| {s['rate']:g} | +{_pp(s['shift'])} | {s['fleet']} | {s['excluded']} of {s['instances']} "
                    f"| {_f(o['median'])} ({_f(o['q25'])} to {_f(o['q75'])}) | {_f(s['sev1_share'], 2)} |")
    return "\n".join(rows)


def batching_table(results: dict[str, Any]) -> str:
    rows = ["| r | shift | per-answer CUSUM | per-slice CUSUM | cost of batching (answers, +- SE) |", "|---|---|---|---|---|"]
    for b in results["batching"]:
        rows.append(f"| {b['rate']:g} | +{_pp(b['shift'])} | {b['per_answer']:.1f} | {b['per_slice']:.1f} "
                    f"| {b['cost']:.2f} +- {b['cost_se']:.2f} |")
    return "\n".join(rows)


def reference_table(results: dict[str, Any]) -> str:
    rows = ["| r | shift | facts: 5-min test | facts: 1-h test | facts: dual CUSUM | target (mean, answers) |"
            " measured npspulse N=10 / 100 / 1000 |", "|---|---|---|---|---|---|---|"]
    spikes = {(s["rate"], s["shift"], s["fleet"]): s for s in _spikes(results)}
    for (r, shift), (t5, t60, cus) in REFERENCE_DELAYS.items():
        if r not in results["config"]["rates"] or not any(abs(shift - s) < 1e-9 for s in results["config"]["shifts"]):
            continue
        measured = " / ".join(_delay(spikes[(r, shift, n)]["detectors"]["npspulse"]) if (r, shift, n) in spikes else "-"
                              for n in (10, 100, 1000))
        target = TARGET_DELAYS.get((r, shift))
        rows.append(f"| {r:g} | +{_pp(shift)} | {t5} | {t60} | {cus} | {_f(target) if target else '-'} | {measured} |")
    return "\n".join(rows)


def target_checks(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, verdict, evidence) for each target of the issue."""
    out: list[tuple[str, str, str]] = []
    nulls = _nulls(results)
    bad = [n for n in nulls if not FA_BAND[0] <= n["ratio"] <= FA_BAND[1]]
    sure = [n for n in bad if not _ci_overlaps_band(n)]
    evidence = "; ".join(f"{n['kind']} r={n['rate']:g} N={n['fleet']}: {n['ratio']:.2f}x ({n['alarms']} alarms"
                         + (", CI overlaps the band)" if _ci_overlaps_band(n) else ")") for n in bad)
    verdict = "missed" if sure else ("inconclusive" if bad else "met")
    out.append(("false alarms within 0.5x-1.5x budget on every null", verdict,
                evidence or f"all {len(nulls)} within {FA_BAND[0]}-{FA_BAND[1]}x"))
    spikes = {(s["rate"], s["shift"], s["fleet"]): s for s in _spikes(results)}
    for (r, shift), target in TARGET_DELAYS.items():
        got = [(n, spikes[(r, shift, n)]["detectors"]["npspulse"]["mean"]) for n in (10, 100, 1000) if (r, shift, n) in spikes]
        if not got:
            continue
        met = [f"N={n}" for n, m in got if m <= target]
        verdict = "met" if len(met) == len(got) else ("met for " + ", ".join(met) if met else "missed")
        out.append((f"mean delay r={r:g} +{_pp(shift)} <= {target:.0f} answers", verdict,
                    ", ".join(f"N={n}: {m:.0f}" for n, m in got)))
    slower = []
    for s in spikes.values():
        mine = s["detectors"]["npspulse"]
        for rule in RULES:
            other = s["detectors"][rule]
            noise = 2.0 * math.hypot(_nan0(mine["se"]), _nan0(other["se"]))
            if mine["mean"] > other["mean"] + noise:
                slower.append(f"r={s['rate']:g} +{_pp(s['shift'])} N={s['fleet']} vs {LABELS[rule]}: "
                              f"{mine['mean']:.0f} vs {other['mean']:.0f}")
    out.append(("never slower than any baseline at equal FA rate", "met" if not slower else "missed",
                "; ".join(slower) or f"all {len(spikes)} spike scenarios"))
    weak = [(k, _speedup(s)) for k, s in spikes.items() if k[1] <= 0.20 + 1e-9]
    low = [f"r={k[0]:g} +{_pp(k[1])} N={k[2]}: {v:.1f}x" for k, v in weak if v < SPEEDUP_VS_5M]
    if weak:
        out.append((f">= {SPEEDUP_VS_5M}x faster than the 5-min test on +10/+20 pp", "met" if not low else "missed",
                    "; ".join(low) or f"lowest {min(v for _, v in weak):.1f}x"))
    strong = [(k, s["onset_error"]["median"]) for k, s in spikes.items() if abs(k[1] - 0.30) < 1e-9]
    far = [f"r={k[0]:g} N={k[2]}: {v:+.0f}" for k, v in strong if not abs(v) <= ONSET_TOLERANCE]
    if strong:
        out.append((f"onset error median within {ONSET_TOLERANCE:.0f} answers at +30 pp", "met" if not far else "missed",
                    "; ".join(far) or "medians " + ", ".join(f"{v:+.0f}" for _, v in strong)))
    return out


def _ci_overlaps_band(n: dict[str, Any]) -> bool:
    lo, hi = _ratio_ci(n)
    return lo <= FA_BAND[1] and hi >= FA_BAND[0]


def _ratio_ci(n: dict[str, Any]) -> tuple[float, float]:
    lo, hi = _poisson_ci(n["alarms"])
    expected = n["windows"] * n["budget_per_1000"] / 1000.0  # alarms at exactly the budget
    return lo / expected, hi / expected


def _nan0(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else x


def findings(results: dict[str, Any]) -> str:
    """Plain statements of what the numbers show, and why."""
    nulls = _nulls(results)
    lines = []
    for kind in ("independent", "daily-cycle", "overdispersed"):
        for r in sorted({n["rate"] for n in nulls}):
            sel = [n for n in nulls if n["kind"] == kind and n["rate"] == r]
            if sel:
                lines.append(f"{kind} r={r:g}: {min(n['ratio'] for n in sel):.2f}-{max(n['ratio'] for n in sel):.2f}x")
    out = ["- **False alarms vs budget** (ratio over N): " + "; ".join(lines) + "."]
    out.append(
        "- **Fewer false alarms than budgeted on clean streams**: the budget is split between the two CUSUMs "
        "(union bound), but one noise excursion often trips both, so the split double-counts; the ARL0 grid "
        "rounds each target up (<= 4.4%) and thresholds are lattice points at or above the exact value. "
        "Baseline estimation error pushes the other way, most at low traffic (q0's standard error ~0.9 pp at "
        "r = 2, ~0.3 pp at r = 50).")
    over = [n for n in nulls if n["kind"] == "overdispersed"]
    if over:
        worst = max(over, key=lambda n: n["ratio"])
        base = next((n for n in nulls if n["kind"] == "independent" and n["rate"] == worst["rate"]
                     and n["fleet"] == worst["fleet"]), None)
        factor = (f" ({worst['ratio'] / base['ratio']:.1f}x the independent null's rate at the same r and N)"
                  if base and base["ratio"] else "")
        low = min(over, key=lambda n: n["ratio"])
        raised = [n for n in nulls if n["kind"] != "overdispersed"]
        raised_share = max((n.get("dispersed_share", 0.0) for n in raised), default=0.0)
        out.append(
            f"- **Overdispersion, recalibrated per segment**: the overdispersed nulls land at {low['ratio']:.2f}-"
            f"{worst['ratio']:.2f}x (r={low['rate']:g} N={low['fleet']} to r={worst['rate']:g} N={worst['fleet']}"
            f"{factor}). Each segment estimates from its own "
            "five-minute windows how much its share varies beyond binomial noise (rho = 1/(kappa + 1), shrunk by one "
            "standard error) and raises h to (h + offset)/theta, theta the Lundberg exponent of one window's "
            "CUSUM increment under a Beta share and the offset the difference of the ln ARL0 intercepts of two "
            "exact Markov chains (per answer, and per window with a Beta share). Against Monte Carlo (r = 50, "
            "kappa = 200, ARL0 10^5 answers) this keeps 1.11x the target ARL0 for the +10 pp CUSUM and 1.09x for "
            "the +25 pp one (Siegmund's ln theta in place of the offset, the previous rule: 1.29x and 2.0x). What "
            "is left is the grid's rounding of r and rho upwards (r = 50 is taken as 53.8): the unrounded cell's "
            "thresholds are 0.125 and 0.104 lower, 1.10x and 1.08x less ARL0, so the chains themselves are within "
            "~1% of the Monte Carlo. On the clean nulls "
            f"at most {raised_share:.0%} of segments had h raised (noise one standard error high).")
    small = [n for n in nulls if n["rate"] == min(x["rate"] for x in nulls)]
    if small:
        unresolved = sum(n["unresolved"] for n in small)
        alarms = sum(n["alarms"] for n in small)
        med = [n["alert_minutes_median"] for n in small if not math.isnan(n["alert_minutes_median"])]
        out.append(
            f"- **Alerts on quiet segments stay open for hours**: at r={small[0]['rate']:g} the median false alert "
            f"is open {min(med):.0f}-{max(med):.0f} min and {unresolved} of {alarms} never resolved within the run. "
            "The resolve rule needs the Wilson upper bound of the last hour below q0 + 5 pp; with ~24 answers an "
            "hour that takes 2 detractors or fewer where 6 are normal (about 4% of hours). While open the segment "
            "cannot alert again and its baseline is frozen.")
    spikes = _spikes(results)
    fleets = sorted({s["fleet"] for s in spikes})
    if len(fleets) > 1:
        out.append(
            "- **Delay targets and fleet size**: the targets are ~15% above an optimal dual CUSUM at ARL0 = 10^4 "
            "windows, i.e. a fleet of roughly 17-35 segments under the budget split. Thresholds grow with ln N, so "
            "N = 100 and 1000 are slower by design (about ln(N/N') / KL answers more).")
    cells = sum(g.get("threshold_cells", 0) for g in results["groups"])
    out.append(
        f"- **Thresholds**: {cells} distinct (ARL0, q0, q1) cells were computed, each exactly on the lattice of "
        "`processors.cusum.lattice_for` (the step ratio kept to < 5e-4).")
    batching = results.get("batching", [])
    if batching:
        worst_b = max(batching, key=lambda b: b["cost"])
        out.append(f"- **Batching per minute** costs at most {worst_b['cost']:.0f} answers (r={worst_b['rate']:g}, "
                   f"+{_pp(worst_b['shift'])}, {worst_b['cost'] / worst_b['per_answer']:.0%} of the delay): more than "
                   "half a slice, because a slice only shows S at its end, not an excursion above h inside it.")
    out.extend(_speedup_findings(results))
    if "cpu_seconds" in results:
        cpu = results["cpu_seconds"]
        big = max(g["fleet"] for g in results["groups"])
        big_cpu = sum(g.get("cpu_seconds", 0.0) for g in results["groups"] if g["fleet"] == big)
        workers = results["config"]["workers"]
        out.append(
            f"- **Runtime**: {results['seconds']:.0f} s wall time on a shared machine; the scenarios used {cpu:.0f} "
            f"CPU seconds ({big_cpu / cpu:.0%} in the N = {big} groups: up to 10,000 segments for several days each), "
            f"i.e. about {cpu / workers:.0f} s on {workers} idle cores with the tasks (one per null scenario, "
            "the independent one with its spikes) spread evenly. Wall time above that is other load on the cores.")
    return "\n".join(out)


def _speedup_findings(results: dict[str, Any]) -> list[str]:
    """Why a +10/+20 pp scenario is under the 1.8x target, from the slice batching run of the same r and shift."""
    cost = {(b["rate"], b["shift"]): b["cost"] for b in results.get("batching", [])}
    low = [s for s in _spikes(results) if s["shift"] <= 0.20 + 1e-9 and _speedup(s) < SPEEDUP_VS_5M]
    lines = []
    for s in low:
        mine, test = s["detectors"]["npspulse"], s["detectors"]["test-5m"]
        extra = cost.get((s["rate"], s["shift"]))
        per_answer = (f" Fed per answer it would take about {mine['mean'] - extra:.0f} answers "
                      f"({test['mean'] / (mine['mean'] - extra):.2f}x): the one-minute slices cost ~{extra:.0f} "
                      "answers here (the batching table), of which half a slice is waiting for the slice to close"
                      if extra is not None else "")
        null = next((g["nulls"]["independent"] for g in results["groups"]
                     if g["rate"] == s["rate"] and g["fleet"] == s["fleet"] and "independent" in g["nulls"]), None)
        raised = (f" The thresholds are the fleet's exact ones; the dispersion rule raises h on few of these "
                  f"segments (the spike streams have the independent null's history: {null['dispersed_share']:.0%} "
                  "raised there)."
                  if null is not None and "dispersed_share" in null else "")
        lines.append(
            f"- **{SPEEDUP_VS_5M}x target at r={s['rate']:g} +{_pp(s['shift'])} N={s['fleet']}**: npspulse "
            f"{mine['mean']:.0f} answers (SE {_nan0(mine['se']):.1f}) against the 5-min test's "
            f"{test['mean']:.0f} (SE {_nan0(test['se']):.1f}), {_speedup(s):.2f}x.{per_answer}.{raised}"
            + (" At high traffic and a large shift one five-minute window (r answers) already holds most of the "
               "evidence a test needs, and the smallest fleet gives the window test its loosest threshold, so "
               "this is where its gap to the CUSUM is smallest." if s["rate"] >= 50 and s["shift"] >= 0.2 else "")
            + " The slices are the pipeline's unit (per-minute counts), so the product keeps them; checking S "
            "inside a slice (in the count-only order) would recover the excursion part of the cost, not the "
            "wait, and changes the product's detector and its vectorised replay: not done.")
    return lines


def targets_table(results: dict[str, Any]) -> str:
    rows = ["| target | verdict | evidence |", "|---|---|---|"]
    rows += [f"| {t} | {v} | {e} |" for t, v, e in target_checks(results)]
    return "\n".join(rows)


def sizes_text(results: dict[str, Any]) -> str:
    nulls = _nulls(results)
    alarms = [n["alarms"] for n in nulls]
    rse = [1 / math.sqrt(k) if k else math.inf for k in alarms]
    return (f"{len(nulls)} null scenarios, {min(alarms)}-{max(alarms)} npspulse false alarms each: relative standard "
            f"error of the false-alarm rates {min(rse):.0%}-{max(rse):.0%} (1/sqrt(alarms)).")


def render(results: dict[str, Any]) -> str:
    """The whole report."""
    c = results["config"]
    return "\n\n".join([
        "# Detection quality",
        f"Generated by `npspulse evaluate --seed {c['seed']}` in {results['seconds']:.0f} s wall time "
        f"({c['workers']} worker process{'es' if c['workers'] > 1 else ''}"
        + (f"; {results['cpu_seconds']:.0f} CPU seconds in the scenarios" if "cpu_seconds" in results else "")
        + "). "
        f"Fleets N = {', '.join(map(str, c['fleets']))}; traffic r = "
        f"{', '.join(f'{r:g}' for r in c['rates'])} answers per segment per 5 minutes; baseline q0 = 0.25; "
        f"budget F = {c['false_alerts_per_day']:g} false alert per day across the fleet.",
        PLAIN_LANGUAGE,
        "## Targets",
        "Verdicts on this run's point estimates; the evidence lists the misses (95% intervals in the tables).",
        targets_table(results),
        "## Findings",
        findings(results),
        "## False alarms on null streams",
        sizes_text(results) + " Rates are per segment per 1000 five-minute windows; the budget is 1000 F/(288 N). "
        "The window rules' thresholds are calibrated on the same streams to npspulse's false-alarm count.",
        null_table(results),
        "## Detection delay in answers (spikes on the independent null)",
        "Answers from the first spiking answer to the alarm (end of the alarming slice or window). `~`: exposure "
        "estimate for censored window rules (memoryless); `>=`: some runs censored, mean over detected runs.",
        delay_table(results, "mean", "answers"),
        "## Detection delay in minutes",
        delay_table(results, "mean_minutes", "minutes"),
        "## Onset estimate and severity (npspulse)",
        onset_table(results),
        "## Reference delays (facts file, ARL0 = 10^4 windows) and measured means",
        reference_table(results),
        "## Cost of slice batching",
        "Same answers fed per answer vs per one-minute slice (count-only order), q0 = 0.25 known, thresholds for "
        f"N = {c['batching_fleet']}: extra answers to the alarm.",
        batching_table(results),
        METHOD.format(history=c["history_days"], cap=c["cap_answers"], spikes=c["spike_instances"]),
    ]) + "\n"


PLAIN_LANGUAGE = """## For CX teams

**What an alert means.** npspulse watches every segment's share of detractors (scores 0-6) minute by
minute against what is normal for that segment at that hour of day (learnt from the last 4 weeks). An
alert says: the detractor share of this segment has risen, and the rise is too large and too sustained to be
ordinary noise. It tells you when the rise probably started (the onset), how large it is (in percentage
points over normal, with a 95% range), how many extra detractors that means, what it did to NPS, and which
touchpoints, channels or customer groups carry most of the extra detractors (the drivers). Sev-1 means a
rise of 20 points or more. When a segment and segments inside it alert together (all of EU, and EU app
users), their alerts share one incident id: one problem, one ticket. You get one message when an alert
opens, one if it becomes more severe, and one when it is over; it is over when the last hour looks normal
again, at least 30 minutes after it opened.

**How fast it comes.** It depends on how many answers the segment gets and on how big the rise is; the
tables below give both in answers and in minutes. As a rule of thumb the detector needs a few dozen answers
after the start of a large rise (+30 points) and a few hundred for a small one (+10 points): minutes for a
busy segment, hours for a quiet one. It is never slower than the simple rules it was compared with, at the
same number of false alarms.

**How often it is wrong.** You choose a budget of false alerts for the whole fleet (default: 1 per day,
whatever the number of segments); thresholds are set per segment so that the fleet stays within it. The
tables below show the measured rate against the budget for ordinary noise, for a daily rhythm in the
detractor share and for noisier-than-random answers. An alert stays open until the last hour looks normal
again (at least 30 minutes); on quiet segments that can take hours, see the alert durations. A new
segment stays silent until it has 1000 answers: its normal level is learnt first.

**Answers that come in clumps.** Sometimes a segment's answers are not independent: a bad quarter of an
hour makes everyone answering in it a little grumpier together. Each segment measures from its own last
4 weeks how much its detractor share jumps between five-minute windows beyond what chance explains, and
raises its alert thresholds to match, so such segments stay within the false-alert budget (the
"overdispersed" rows) instead of raising several times too many. The price: on a busy, clumpy segment a real
rise needs somewhat more evidence before it alerts. Segments without clumps keep their normal thresholds.
A daily rhythm does not count as clumping: it is compared with the normal level of the same hour."""


METHOD = """## Method

**Detector (npspulse, vectorised).** `streams/fleet_detector.py` replays the scalar detector exactly over a
fleet: per segment an hourly baseline (`processors/baseline.py`: 24 hour-of-day counts decayed by
lambda = (H-1)/(H+1) per UTC day, H = 28, i.e. an effective sample of 28 days; each hour shrunk with m = 300
toward the segment's level on the parent's hour profile; no detection below 1000 answers; clamp to
[0.005, 0.95]; a slice joins the baseline an hour late, and an opening alert drops the queued slices from its
onset), two Bernoulli CUSUMs (`processors/cusum.py`, q1 = q0 + 10 pp and q0 + 25 pp, `update_slice`'s
count-only order) with thresholds `cached_threshold(fleet_arl0_answers(r, N, F), q0, q1)` (exact on a lattice
that keeps the step ratio, `lattice_for`), r the baseline's traffic estimate, raised for overdispersion (below),
and the alert lifecycle
(baseline frozen while open; resolve when the last 60 minutes' Wilson upper bound < q0 + 5 pp and open >= 30
min; restart both CUSUMs at h/2). A unit test checks that it raises the same alarms, at the same slices with
the same onsets and severities, as the product's detector (`processors/spikes.py`).

**Overdispersion.** The baseline groups the slices it learns into five-minute windows and compares each
window of n >= 2 answers with its hour's share q before it (v = q (1 - q)): method of moments for a Beta share
with rho = 1/(kappa + 1), decayed like the counts, A += (d - n q)^2 - n v - n^2 v / N_hour,
B += n (n - 1) v, V += n v + (2 n^2 - 6 n) v^2 (the term's binomial variance, squared weights); rho =
max(0, A - z sqrt(V)) / B with z = `dispersion_z` = 1, capped at 0.2. With rho > 0 each threshold becomes
max(h, (h + offset)/theta) (`processors.cusum.inflate_threshold`): theta in (0, 1] solves E[exp(theta Y)] = 1
for one window's increment Y (Poisson(r) answers, Beta share; Kummer's function, `window_log_mgf`), the slope
of ln ARL0 in h (1 for independent answers), and offset = c_1 - c_rho, the difference of the intercepts of
ln ARL0 = h + c_1 (independent answers) and theta h + c_rho (Beta windows). Both intercepts come from exact
Markov chains (`windowed_arl`): S on a lattice of 125 states up to h = 10, checked after every answer, moved
window by window by exp(r (Q_p - I)) (answers a Poisson process within the window, Q_p the per-answer chain),
the Beta share by 6-point Gauss-Jacobi quadrature; each step is split between its two neighbouring lattice
points so that its mean is kept (a coarse lattice cannot keep the ratio of the up and down steps, and the
intercepts are sensitive to it), and each chain's intercept is taken with its own lattice exponent. The
offset changes by < 0.01 between h = 10 and 14 and between 100 and 300 states. A chain costs ~20-50 ms, so the
ratio offset / ln theta is computed on nodes 0.02 apart in q0 and an octave apart in r and rho and
interpolated (within ~0.02/theta in h of the chains'); theta is exact per cell (q0, q1 in thousandths, r and
rho rounded up on grids of 8 per octave). Checked against a per-answer Monte Carlo of the overdispersed CUSUM
(`tests/unit/test_dispersion.py`: ARL0 within 0.85-1.2x of the target at r = 50, kappa = 200, for both
CUSUMs). The previous rule, Siegmund's (h + ln theta)/theta, kept 1.26-1.29x (+10 pp) and 1.9-2.0x (+25 pp)
the target ARL0 there; the bare exponent h/theta 1.7x and 2.7x.

**Streams.** Each segment gets {history} days of history (five-minute counts fed to the baseline, including its
estimation error), then one-minute slices of Poisson(r/5) answers, detractors Binomial(n, q). Nulls:
independent (q = 0.25); daily cycle (q = 0.25 + 0.05 sin(2 pi t / 1 day), history too); overdispersed (per
five-minute window q ~ Beta with mean 0.25 and kappa = 200, history too). A group of N segments (or all
simulated ones, if fewer) shares a parent baseline fed with all their answers. Segments are independent, so
a null scenario spreads its segment-days over up to 10,000 simulated segments; N enters through the
thresholds and the parent. Spikes: {spikes} segments per scenario, onset at a random minute 1-7 h into
the evaluation, q = 0.25 + shift from then on; the parent (the rest of the fleet) is frozen after the
history; runs are followed up to {cap:g} answers after onset.

**Window rules (harness only).** At the end of each five-minute window, against the same q0 as npspulse
(answer-weighted): fixed share (share - q0 >= c, n >= 10), exact one-sided binomial test of the window
(p <= alpha), the same test over the last hour hopping every 5 minutes. Consecutive alarming windows are one
alarm. Each rule's threshold is the lowest one whose false alarms on the independent null stream of the same
r and N do not exceed npspulse's count there (calibrations on the other nulls are listed for reference).

**Choices where the spec is silent** (the scalar detector should make the same ones, or the reference in
`tests/unit/test_evaluation.py` must change with it): q0, r and h come from the baseline as it was before the
slice; both CUSUMs keep running while an alert is open; when both fire on the same slice the +25 pp one is
the firing CUSUM (onset, sev-1); resolution is checked on slices with answers, over the last 60 one-minute
slices; a slice is queued for the baseline iff no alert is open after it is processed (the resolving slice is
queued, the alarm slice is not); the parent takes every answer of its children at once, alerting or not; r counts idle and
frozen time as covered time. The harness feeds the history as five-minute aggregates (one slice at each
window's last minute): the same counts and windows as minute slices.

**Thresholds.** Every distinct (ARL0 grid, q0, q1) cell costs one `threshold_for_arl` search (~2 ms median,
up to ~0.2 s single-threaded; more when OpenBLAS runs its threads on cores that are busy, so the harness limits
it to one thread). The product computes a threshold only when S passes a cheap lower bound.

**Censoring.** The window rules judge independent windows, so their waiting time is memoryless; when a run
is censored their mean delay is the exposure estimate (answers observed after onset per detection) and the
p90 the exponential one. For npspulse and the hourly test a censored mean is a lower bound (marked `>=`)."""
