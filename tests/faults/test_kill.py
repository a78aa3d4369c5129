"""SIGKILL of workers mid-stream: restarts (one worker) and take-over by a survivor (two workers in a group).

Both failed on main before 094e37d (effectively-once worker state): double counts, changed alerts, lost windows;
the figures of both versions are in docs/reliability.md."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.faults.harness import CONFIG, PacedProducer, describe, report, scenario

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_sigkill_and_restart_mid_stream(tmp_path: Path, kafka_bootstrap: str, redis_url: str, store: str) -> None:
    # rocksdb://: the restarted worker reopens the tables it kept on disk (same data directory) and reads only
    # the changelog written since; memory:// rebuilds them from the whole changelog.
    run, expected, lines = scenario(tmp_path, kafka_bootstrap, redis_url,
                                    config_text=CONFIG + f'\n[worker]\nstore = "{store}"\n')
    rng = random.Random(1208)
    kill_points = sorted(rng.uniform(0.15, 0.8) for _ in range(2))
    producer = PacedProducer(run.config, lines)
    run.start()
    run.wait_ready()
    producer.start()
    try:
        for number, point in enumerate(kill_points):
            # Events keep coming while the worker is down, but the next kill waits for the restarted worker
            # to own its partitions again: each kill hits a worker that is processing.
            producer.hold_at = kill_points[number + 1] if number + 1 < len(kill_points) else 1.0
            producer.wait_for(point)
            readies = run.readies()
            run.kill()
            run.start()
            run.wait_ready(since=readies)
            producer.hold_at = 1.0 if number + 1 == len(kill_points) else producer.hold_at
        producer.hold_at = 1.0
        run.settle(producer, expected)
        assert producer.failed == 0
        assert run.alive() == ["worker"], describe(run, run.figures(expected))
        figures = run.figures(expected)
        report("sigkill_restart", figures, kills=run.kills, kill_points=kill_points, store=store)
        assert figures.exact(), describe(run, figures)
    finally:
        run.stop_all()


def test_survivor_takes_over_a_killed_workers_partitions(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> None:
    run, expected, lines = scenario(tmp_path, kafka_bootstrap, redis_url, seed=9)
    producer = PacedProducer(run.config, lines)
    run.start("a")
    run.wait_ready("a")
    before = run.readies("a")
    run.start("b")
    run.wait_ready("b")
    run.wait_ready("a", since=before)  # the group rebalanced: both own partitions
    producer.start()
    try:
        producer.wait_for(0.45)
        before = run.readies("a")
        run.kill("b")
        run.wait_ready("a", since=before)  # took over b's partitions once b's session expired
        run.settle(producer, expected)
        assert producer.failed == 0
        assert run.alive() == ["a"], describe(run, run.figures(expected))
        figures = run.figures(expected)
        report("sigkill_one_of_two", figures, kills=run.kills, kill_point=0.45)
        assert figures.exact(), describe(run, figures)
    finally:
        run.stop_all()


def test_restart_over_a_backlog_reads_the_profiles_kept_on_disk(tmp_path: Path, kafka_bootstrap: str,
                                                                 redis_url: str) -> None:
    # The purchase history is processed and committed, the worker is killed, the rest of the stream arrives while
    # it is down, and the restarted worker (RocksDB tables kept on disk) takes it as one backlog: its surveys agent
    # then drains 2,000 answers at a time from its own loop, with the last answer received as Faust's current
    # event, and the profiles of customers whose purchases were all committed before the kill are in the table
    # only. The RocksDB store looked them up in the current event's partition alone, so every such customer of
    # another partition was segmented as tier=none (what test_sigkill_and_restart_mid_stream[rocksdb://] showed now
    # and then). Whether the agent drains before the timer does is timing: without the fix this failed 1 run in 4
    # (37 answers, 659 windows); tests/streams/test_pipeline_profiles_rocksdb.py is the deterministic check.
    run, expected, lines = scenario(tmp_path, kafka_bootstrap, redis_url,
                                    config_text=CONFIG + '\n[worker]\nstore = "rocksdb://"\n')
    history = next(i for i, line in enumerate(lines) if b'"type":"survey"' in line)
    run.start()
    run.wait_ready()
    try:
        first = PacedProducer(run.config, lines[:history], seconds=1, chunks=4)
        first.start()
        first.join(120)
        deadline = time.monotonic() + 60
        while run.lag() != 0:
            assert time.monotonic() < deadline, f"the history was not committed:\n{run.log()[-3000:]}"
            time.sleep(0.5)
        readies = run.readies()
        run.kill()
        rest = PacedProducer(run.config, lines[history:], seconds=1, chunks=4)
        rest.start()
        rest.join(120)
        run.start()
        run.wait_ready(since=readies)
        run.settle(rest, expected)
        assert first.failed == rest.failed == 0
        assert run.alive() == ["worker"], describe(run, run.figures(expected))
        figures = run.figures(expected)
        report("sigkill_restart_backlog", figures, kills=run.kills, store="rocksdb://")
        assert figures.exact(), describe(run, figures)
    finally:
        run.stop_all()
