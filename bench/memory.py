"""Memory of the per-segment state: N segments after H hours of event time (prints figures; asserts nothing).

    python bench/memory.py [--segments 100000] [--hours 24] [--answers 3] [--report-at 2,6,12]

Builds the state the worker keeps per segment, with the product's classes and default settings (1-minute slices,
5-minute tumbling and 1-hour hopping windows, the detector with its 28-day hour-of-day baseline), by the
worker's own path: each minute of event time, every segment with answers gets one (segment, slice) aggregate
(counts, the kept answer refs, the driver breakdown) encoded as a segment-slices record would be, decoded the
way ``Pipeline.handle_slices`` decodes it, merged with ``SegmentStage.add_slice``, and the stage is advanced
to the watermark (max event time - grace), which closes slices, emits windows and runs the detector.

Segments: ``all``, S stores and 3 channels per store (``store=s00042|channel=app``): N = 4 S + 1. Each leaf
gets Poisson(``--answers`` / 5) answers per minute (25% detractors, whose refs are kept), each with five driver
values (channel, region, store, tier, touchpoint). An answer is in three segments (leaf, store, all).

Reported at checkpoints of event time: RSS (``VmRSS``, without tracemalloc: it would double the cost)
before and after, bytes per segment of RSS, a sizeof walk of a sample of segments by component, and the
worker's table copy: the value it writes to the ``segments`` table (``{"p", "s", "o", **to_dict()}``) as orjson
bytes, which is what a ``memory://`` table keeps (the worker encodes table values itself), and their RSS. Not
modelled: the replicas of parent segments a worker with several slice partitions keeps (their detector and open slices, no closed
slices), the customer side (profiles), Faust and Kafka buffers.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from processors.config import config_from_dict
from processors.engine import SegmentStage
from processors.nps import NpsCounts
from processors.packed import dumps_kept
from processors.retarget import Retargeter
from processors.timeparse import HOUR_MS, MINUTE_MS
from processors.windows import Slice

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = ("app", "web", "phone")
REGIONS = ("EU", "NA", "APAC", "LATAM")
TIERS = ("none", "bronze", "silver", "gold", "platinum")
TOUCHPOINTS = ("delivery", "support", "checkout", "returns")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
DETRACTOR_SHARE = 0.25
SOURCE_PARTITIONS = 6  # survey partitions whose last counted run each table value records ("o")
Record = tuple[str, int, list[int], list[list[Any]], dict[str, list[int]]]


def rss_bytes() -> int:
    """This process's resident memory (VmRSS), in bytes."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))


def settings_for(segments: int, min_history: float | None) -> Any:
    """The default config (processors/npspulse.toml) with the bench's segment families and fleet size."""
    doc = tomllib.loads((ROOT / "processors" / "npspulse.toml").read_text())
    doc["segmentation"]["segments"] = ["all", "store", "store x channel"]
    doc["detection"]["segments"] = segments
    if min_history is not None:
        doc["detection"]["min_history"] = min_history
    return config_from_dict(doc).engine


class Workload:
    """Synthetic answers per minute for ``stores`` x 3 leaf segments, aggregated per (segment, slice)."""

    def __init__(self, stores: int, answers_per_5min: float, seed: int = 7) -> None:
        self.stores = stores
        self.rate = answers_per_5min / 5.0
        self.rng = np.random.default_rng(seed)
        self.pick = random.Random(seed)
        self.sequence = 0
        self.regions = [REGIONS[i % len(REGIONS)] for i in range(stores)]

    def minute(self, start: int) -> list[Record]:
        """Every non-empty (segment, slice) aggregate of the minute starting at ``start``."""
        leaves = self.stores * len(CHANNELS)
        counts = self.rng.poisson(self.rate, leaves)
        detractors = self.rng.binomial(counts, DETRACTOR_SHARE)
        promoters = self.rng.binomial(counts - detractors, 0.5)
        stores: dict[int, Record] = {}
        total: Record = ("all", start, [0, 0, 0], [], {})
        out: list[Record] = []
        pick = self.pick.randrange
        for leaf in np.flatnonzero(counts).tolist():
            n, d, p = int(counts[leaf]), int(detractors[leaf]), int(promoters[leaf])
            store, channel = divmod(leaf, len(CHANNELS))
            store_value = f"s{store:05d}"
            fixed = (f"channel={CHANNELS[channel]}", f"region={self.regions[store]}", f"store={store_value}")
            record: Record = (f"store={store_value}|channel={CHANNELS[channel]}", start, [d, n - d - p, p], [], {})
            for k in range(n):
                self.sequence += 1
                tier = TIERS[pick(len(TIERS))]
                drivers = (*fixed, f"tier={tier}", f"touchpoint={TOUCHPOINTS[pick(len(TOUCHPOINTS))]}")
                detractor = int(k < d)
                if detractor:
                    record[3].append([f"s{self.sequence:09d}", f"c{pick(10_000_000):07d}", pick(7), tier,
                                      pick(500_000)])
                for key in drivers:
                    row = record[4].setdefault(key, [0, 0])
                    row[0] += 1
                    row[1] += detractor
            out.append(record)
            parent = stores.get(store)
            if parent is None:
                parent = stores[store] = (f"store={store_value}", start, [0, 0, 0], [], {})
            for upper in (parent, total):
                upper[2][0] += d
                upper[2][1] += n - d - p
                upper[2][2] += p
                upper[3].extend(record[3])
                for key, (vn, vd) in record[4].items():
                    row = upper[4].setdefault(key, [0, 0])
                    row[0] += vn
                    row[1] += vd
        out.extend(stores.values())
        if total[2] != [0, 0, 0]:
            out.append(total)
        return out


def worker_decode(records: list[Record], share_refs: bool) -> Iterator[tuple[str, int, NpsCounts,
                                                                            list[tuple[Any, ...]],
                                                                            dict[str, list[int]]]]:
    """The records through orjson and back, each segment's slice with its own ref tuples, strings and breakdown
    (the state they build is what ``Pipeline.handle_slices`` builds). ``share_refs``: one ref tuple per answer for
    all its segments (by event id), as the worker does within each segment-slices record."""
    shared: dict[str, tuple[Any, ...]] = {}
    for chunk in range(0, len(records), 500):
        data = orjson.loads(orjson.dumps({"v": records[chunk:chunk + 500]}))
        for segment_id, start, counts, refs, breakdown in data["v"]:
            kept = [shared.setdefault(ref[0], tuple(ref)) if share_refs else tuple(ref) for ref in refs]
            yield (str(segment_id), int(start), NpsCounts.from_list(counts), kept,
                   {str(key): [int(n), int(d)] for key, (n, d) in breakdown.items()})


def table_value(stage: SegmentStage, segment_id: str) -> dict[str, Any]:
    """What the worker's checkpoint writes to the segments table for one segment."""
    runs = {str(source): [1_000_000, 0] for source in range(SOURCE_PARTITIONS)}
    return {"p": 0, "s": segment_id, "o": runs, **stage.segments[segment_id].to_dict()}


def deep_size(root: Any, seen: set[int]) -> int:
    """sys.getsizeof of ``root`` and everything it references (each object once per ``seen``)."""
    size, todo = 0, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, bool):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, list | tuple | set):
            todo.extend(obj)
        elif hasattr(obj, "__slots__"):
            todo.extend(getattr(obj, name) for cls in type(obj).__mro__
                        for name in getattr(cls, "__slots__", ()) if hasattr(obj, name))
    return size


def components(stage: SegmentStage, sample: Iterable[str]) -> Counter[str]:
    """Bytes by part of the state (sizeof walk; shared objects counted once, with the part first seen)."""
    out: Counter[str] = Counter()
    seen: set[int] = set()
    for segment_id in sample:
        state = stage.segments[segment_id]
        windows, spikes = state.windows, state.spikes
        out["windows: closed slices (count columns)"] += (deep_size(windows.closed_starts, seen)
                                                          + deep_size(windows.closed_counts, seen))
        out["windows: closed answer refs"] += (deep_size(windows.closed_ref_data, seen)
                                               + deep_size(windows.closed_ref_ends, seen))
        for piece in windows.open.values():
            out["windows: open slices (incl. breakdown)"] += deep_size(piece, seen)
        out["windows: containers"] += deep_size(windows, seen)
        out["detector: baseline"] += deep_size(spikes.baseline, seen)
        out["detector: recent and pending rows"] += deep_size(spikes.rows, seen)
        out["detector: cusums, evidence, alert"] += deep_size(spikes, seen)
        out["segment state + id"] += deep_size(state, seen) + deep_size(segment_id, seen)
    return out


def report(stage: SegmentStage, hours: float, baseline_rss: int, sample_size: int, seconds: float,
           final: bool) -> None:
    """The table; the RSS of a recovered table copy only when ``final`` (its garbage would stay in the RSS of
    later reports)."""
    gc.collect()
    rss = rss_bytes()
    count = len(stage.segments)
    ids = sorted(stage.segments)
    sample = random.Random(1).sample(ids, min(sample_size, count))
    if "all" not in sample:
        sample[0] = "all"  # the one segment with every answer: sampled always, weighted 1 / count below
    parts = components(stage, [s for s in sample if s != "all"])
    whole = components(stage, ["all"])
    per = {name: (parts[name] * (count - 1) / (len(sample) - 1) + whole[name]) / count for name in parts | whole}
    if final:
        gc.collect()
        before_copy = rss_bytes()
        encoded = [dumps_kept(table_value(stage, segment_id)) for segment_id in ids]
        gc.collect()
        copy = rss_bytes() - before_copy
        serialized = sum(map(len, encoded))
        del encoded
        gc.collect()
    else:
        serialized = sum(len(orjson.dumps(table_value(stage, segment_id))) for segment_id in ids)
    state = rss - baseline_rss
    print(f"\n== after {hours:g} h of event time ({seconds:.0f} s to feed): {count:,} segments")
    print(f"RSS before the state {baseline_rss / 2**20:,.0f} MiB, with it {rss / 2**20:,.0f} MiB: "
          f"state {state / 2**20:,.0f} MiB")
    print("| measure | total MiB | bytes per segment |")
    print("|---|---:|---:|")
    print(f"| state in memory (RSS delta) | {state / 2**20:,.0f} | {state / count:,.0f} |")
    print(f"| state in memory (sizeof walk of {len(sample):,} segments) | {sum(per.values()) * count / 2**20:,.0f} "
          f"| {sum(per.values()):,.0f} |")
    for name, value in sorted(per.items(), key=lambda item: -item[1]):
        print(f"| - {name} | {value * count / 2**20:,.0f} | {value:,.0f} |")
    print(f"| table value, orjson bytes (changelog) | {serialized / 2**20:,.0f} | {serialized / count:,.0f} |")
    if final:
        print(f"| table copy: those bytes in a memory:// table (RSS delta) | {copy / 2**20:,.0f} | {copy / count:,.0f} |")
        print(f"| worker total: state + table copy | {(state + copy) / 2**20:,.0f} | "
              f"{(state + copy) / count:,.0f} |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=100_000, help="about this many segments (4 S + 1)")
    parser.add_argument("--hours", type=float, default=24.0, help="hours of event time fed (default 24)")
    parser.add_argument("--answers", type=float, default=3.0, help="answers per leaf segment per 5 min (default 3)")
    parser.add_argument("--report-at", default="", help="also report after these hours, e.g. 2,6,12")
    parser.add_argument("--sample", type=int, default=2000, help="segments in the sizeof walk (default 2000)")
    parser.add_argument("--share-refs", action="store_true",
                        help="one ref tuple per answer for all its segments (the worker shares them within a record)")
    parser.add_argument("--min-history", type=float, default=None,
                        help="the detector's min_history (default: the product's 1000 answers)")
    args = parser.parse_args()
    stores = max(1, (args.segments - 1) // 4)
    settings = settings_for(stores * 4 + 1, args.min_history)
    workload = Workload(stores, args.answers)
    gc.collect()
    baseline_rss = rss_bytes()
    stage = SegmentStage(settings, Retargeter(settings.campaigns))
    grace = settings.windows.grace_ms
    minutes = round(args.hours * 60)
    checkpoints = {round(float(h) * 60) for h in args.report_at.split(",") if h} | {minutes}
    print(f"memory: {stores * 4 + 1:,} segments (all, {stores:,} stores, {stores * 3:,} store x channel), "
          f"{args.answers:g} answers per leaf per 5 min, {args.hours:g} h of event time, windows "
          f"{', '.join(spec.name for spec in settings.windows.specs)}, min_history "
          f"{settings.detection.baseline.min_history:g}{', refs shared' if args.share_refs else ''}")
    started = time.perf_counter()
    alerts = answers = 0
    for minute in range(minutes):
        start = START_MS + minute * MINUTE_MS
        records = workload.minute(start)
        answers += sum(sum(r[2]) for r in records if r[0].count("|") == 1)
        for segment_id, at, counts, refs, breakdown in worker_decode(records, args.share_refs):
            stage.add_slice(segment_id, at, Slice(counts, refs, breakdown))  # type: ignore[arg-type]
        alerts += len(stage.advance(start + MINUTE_MS - 1 - grace).alerts)
        if (minute + 1) % 60 == 0:
            print(f"  {(minute + 1) / 60:g} h: {answers:,} answers, {alerts} alert events, "
                  f"{time.perf_counter() - started:.0f} s, RSS {rss_bytes() / 2**20:,.0f} MiB", flush=True)
        if minute + 1 in checkpoints:
            report(stage, (minute + 1) / 60, baseline_rss, args.sample, time.perf_counter() - started,
                   final=minute + 1 == minutes)
    print(f"\n{answers:,} answers over {minutes / 60:g} h ({HOUR_MS // MINUTE_MS} slices an hour), "
          f"{alerts} alert events")


if __name__ == "__main__":
    main()
