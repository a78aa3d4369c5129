"""The delivery policy in the real Redis (streams.delivery_store), no mocks: the shared table of cases and
random sequences agree with the in-memory policy, caps hold with two processes admitting at once, keys expire,
the opt-out and audience commands, and failing closed when Redis is unreachable."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from delivery_cases import (
    CASES,
    DAY,
    HOUR,
    RANDOM_SETTINGS,
    T0,
    Case,
    Step,
    admit,
    describe,
    random_steps,
    run_memory,
    trigger,
)

from processors.delivery import Cap, DeliverySettings, Outcome
from processors.events import RetargetTrigger
from streams.cli import main
from streams.delivery_store import REDIS_UNAVAILABLE, DeliveryStore, DeliveryStoreError, namespace_for
from streams.settings import load_config

pytestmark = pytest.mark.redis


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A private key namespace; every key under it is deleted afterwards."""
    name = f"test-delivery-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match=f"{name}:*", count=1000))
    if stale:
        client.delete(*stale)
    client.close()


def run_store(redis_url: str, namespace: str, settings: DeliverySettings, steps: list[Step] | tuple[Step, ...],
              campaigns: list[str]) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Apply steps through the Redis store; consecutive admissions go as one batch (one pipelined call)."""

    async def scenario() -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        store = DeliveryStore(redis_url, settings, namespace=namespace)
        decisions: list[str] = []
        batch: list[RetargetTrigger] = []
        try:
            for step in [*steps, None]:
                if step is not None and step.op == "admit":
                    batch.append(trigger(step))
                    continue
                decisions.extend(describe(decision) for decision in await store.admit(batch))
                batch = []
                if step is not None:
                    await (store.opt_out if step.op == "opt_out" else store.opt_in)([step.customer])
            return decisions, {campaign: await store.export_audience(campaign) for campaign in campaigns}
        finally:
            await store.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_shared_cases(case: Case, redis_url: str, namespace: str) -> None:
    decisions, audiences = run_store(redis_url, namespace, case.settings, case.steps, list(case.audiences))
    assert decisions == [step.expect for step in case.steps if step.op == "admit"]
    assert audiences == case.audiences


@pytest.mark.parametrize(("seed", "priorities"), [(0, False), (1, False), (2, True), (3, True)])
def test_random_sequences_agree_with_the_memory_policy(seed: int, priorities: bool, redis_url: str,
                                                       namespace: str) -> None:
    steps = random_steps(seed, priorities=priorities)
    expected = run_memory(RANDOM_SETTINGS, steps, ["a", "b", "c"])
    got = run_store(redis_url, namespace, RANDOM_SETTINGS, steps, ["a", "b", "c"])
    assert got == expected
    kinds = set(got[0])
    assert {"sent", "capped:campaign", "capped:customer", "opted_out"} <= kinds
    assert any(kind.startswith("duplicate:") for kind in kinds)


# ---------------------------------------------------------------- two processes at once

CONCURRENT = DeliverySettings(customer_cap=Cap(3, DAY), campaign_caps={"a": Cap(2, 2 * DAY), "b": Cap(2, 2 * DAY)})
CUSTOMERS = [f"cust-{i:02d}" for i in range(30)]


def concurrent_triggers(process: int, spread: int) -> list[RetargetTrigger]:
    """For each customer, 4 triggers of each campaign of this process's own, plus 2 shared with the other
    process (same trigger ids), times within ``spread``, in a random order."""
    rng = random.Random(process)
    steps = []
    for customer in CUSTOMERS:
        for campaign in "ab":
            for k in range(4):
                steps.append(admit(customer, f"p{process}-{customer}-{campaign}{k}", rng.randrange(spread), "",
                                   campaign))
        for k in range(2):
            steps.append(admit(customer, f"shared-{customer}-{k}", k * spread // 2, "", "a"))
    rng.shuffle(steps)
    return [trigger(step) for step in steps]


def admit_in_process(redis_url: str, namespace: str, process: int, spread: int, start: Any, results: Any) -> None:
    """One of the two processes: admit this process's triggers in small batches once both are ready."""
    async def scenario() -> list[tuple[str, str, str, int, str]]:
        store = DeliveryStore(redis_url, CONCURRENT, namespace=namespace)
        triggers = concurrent_triggers(process, spread)
        out = []
        start.wait(30)
        try:
            for begin in range(0, len(triggers), 5):  # small batches: the two processes interleave
                batch = triggers[begin:begin + 5]
                for item, decision in zip(batch, await store.admit(batch), strict=True):
                    out.append((decision.trigger_id, item.campaign_id, item.customer_id, item.created_at,
                                decision.outcome.value))
        finally:
            await store.close()
        return out

    results.put((process, asyncio.run(scenario())))


@pytest.mark.parametrize("spread", [HOUR, 3 * DAY], ids=["within-one-period", "across-three-days"])
def test_caps_hold_with_two_processes_at_once(spread: int, redis_url: str, namespace: str) -> None:
    """Two processes admit triggers for the same 30 customers at once (each its own plus 60 trigger ids both
    admit): no window exceeds a cap, no id is sent twice, and within one period the caps are met exactly."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=admit_in_process, args=(redis_url, namespace, n, spread, start, results))
                 for n in (1, 2)]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    decisions = outcomes[1] + outcomes[2]
    assert len(outcomes[1]) == len(outcomes[2]) == len(CUSTOMERS) * 10
    assert all(outcome != Outcome.UNDELIVERED.value for *_, outcome in decisions)

    sent = [row for row in decisions if row[4] == "sent"]
    # A trigger id is sent once, even when both processes admit it.
    assert len({row[0] for row in sent}) == len(sent)
    for customer in CUSTOMERS:
        mine = [row for row in sent if row[2] == customer]
        windows = [(CONCURRENT.customer_cap, [row[3] for row in mine])]
        windows += [(CONCURRENT.campaign_caps[c], [row[3] for row in mine if row[1] == c]) for c in "ab"]
        for cap, times in windows:
            assert cap is not None
            for end in times:
                assert sum(end - cap.period_ms < at <= end for at in times) <= cap.max, (customer, cap, times)
        if spread == HOUR:  # all in one window: the caps are reached exactly
            assert len(mine) == 3
            assert sorted(Counter(row[1] for row in mine).values()) == [1, 2]

    async def audience() -> list[tuple[str, int]]:
        store = DeliveryStore(redis_url, CONCURRENT, namespace=namespace)
        try:
            return await store.export_audience("a") + await store.export_audience("b")
        finally:
            await store.close()

    exported = asyncio.run(audience())
    assert {customer for customer, _ in exported} == set(CUSTOMERS)
    latest = {(row[1], row[2]): 0 for row in sent}
    for row in sent:
        latest[row[1], row[2]] = max(latest[row[1], row[2]], row[3])
    assert sorted(at for _, at in exported) == sorted(latest.values())

    # The trigger ids both processes admitted: one first decision each, the other process saw a duplicate.
    shared_ids = {trigger(admit(customer, f"shared-{customer}-{k}", 0, "", "a")).id
                  for customer in CUSTOMERS for k in range(2)}
    by_id: dict[str, list[str]] = {}
    for row in decisions:
        if row[0] in shared_ids:
            by_id.setdefault(row[0], []).append(row[4])
    assert len(by_id) == len(shared_ids)
    for trigger_id, seen in by_id.items():
        assert len(seen) == 2 and seen.count("duplicate") == 1, (trigger_id, seen)


# ---------------------------------------------------------------- keys


def test_keys_are_namespaced_and_expire(redis_url: str, namespace: str) -> None:
    settings = DeliverySettings(customer_cap=Cap(3, DAY), campaign_caps={"a": Cap(1, 7 * DAY)}, dedup_window_ms=2 * DAY,
                                audience_retention_ms=30 * DAY)
    first = admit("c1", "e1", 0, "")
    run_store(redis_url, namespace, settings, [first, admit("c2", "e2", 0, ""), Step("opt_out", "c9")], [])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = set(client.scan_iter(match=f"{namespace}:*", count=1000))
        store = DeliveryStore(redis_url, settings, namespace=namespace)
        # A high-priority trigger is recorded in the bands low (the plain customer key), normal and high.
        expected_ttl = {store.seen_key(trigger(first).id): 2 * DAY, store.campaign_key("a", "c1"): 14 * DAY,
                        store.customer_key("c1"): 2 * DAY, store.customer_key("c1", "normal"): 2 * DAY,
                        store.customer_key("c1", "high"): 2 * DAY, store.audience_key("a"): 30 * DAY}
        assert store.customer_key("c1", "high") == f"{namespace}:delivery:customer:c1:high"
        assert store.customer_key("c1", "urgent") not in keys
        assert set(expected_ttl) | {store.optout_key} <= keys
        assert all(key.startswith(f"{namespace}:") for key in keys)
        for key, ttl in expected_ttl.items():
            assert ttl - 60_000 < client.pttl(key) <= ttl, key
        assert client.pttl(store.optout_key) == -1  # consent is kept until removed
        assert client.zrange(store.customer_key("c1"), 0, -1, withscores=True) == [(trigger(first).id, T0)]
        asyncio.run(store.close())
    finally:
        client.close()


def test_a_refused_trigger_leaves_nothing_behind(redis_url: str, namespace: str) -> None:
    """A key of the wrong type makes the script refuse that trigger before any write: it is undelivered, and
    neither its id nor a cap counts it; the other triggers of the batch are decided as usual."""
    settings = DeliverySettings(customer_cap=Cap(3, DAY))
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    async def scenario() -> list[tuple[Outcome, str]]:
        store = DeliveryStore(redis_url, settings, namespace=namespace)
        client.set(store.audience_key("a"), "not a sorted set")
        try:
            batch = [trigger(admit("c1", "e1", 0, "", "a")), trigger(admit("c1", "e2", 0, "", "b"))]
            decisions = [(d.outcome, d.reason) for d in await store.admit(batch)]
            assert client.exists(store.seen_key(batch[0].id)) == 0
            assert client.zrange(store.customer_key("c1"), 0, -1) == [batch[1].id]
            assert store.undelivered == 1
            return decisions
        finally:
            await store.close()

    try:
        assert asyncio.run(scenario()) == [(Outcome.UNDELIVERED, "redis error"), (Outcome.SENT, "")]
    finally:
        client.close()


def test_namespace_follows_the_topic_prefix() -> None:
    assert namespace_for(load_config(None, environ={}).kafka) == "npspulse"
    env = {"NPSPULSE_KAFKA_TOPIC_PREFIX": "it0123abcd."}
    assert DeliveryStore.from_config(load_config(None, environ=env)).namespace == "it0123abcd"


# ---------------------------------------------------------------- command line


def test_optout_and_audience_commands(redis_url: str, namespace: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NPSPULSE_REDIS_URL", redis_url)
    monkeypatch.setenv("NPSPULSE_KAFKA_TOPIC_PREFIX", f"{namespace}.")
    config_path = tmp_path / "npspulse.toml"
    config_path.write_text('[[campaigns]]\nid = "referral-ask"\non = "answer"\nloyalty = ["promoter"]\n'
                           'cap = { max = 1, period = "7d" }\n\n[delivery]\nmax_per_customer = 0\n')
    config = ["--config", str(config_path)]
    ids_file = tmp_path / "optouts.txt"
    ids_file.write_text("# unsubscribed on 2026-03-01\nc3\n\nc4\n")

    assert main(["optout", "add", "c1", "c2", "--file", str(ids_file), *config]) == 0
    assert "4 added" in capsys.readouterr().err
    assert main(["optout", "remove", "c2", "c9", *config]) == 0
    assert "1 removed" in capsys.readouterr().err
    assert main(["optout", "list", *config]) == 0
    assert capsys.readouterr().out.split() == ["c1", "c3", "c4"]
    assert main(["optout", "list", "c4", "c5", *config]) == 0
    assert capsys.readouterr().out.split() == ["c4"]
    assert main(["optout", "add", *config]) == 2

    async def admit_some() -> list[str]:
        store = DeliveryStore.from_config(load_config(config_path))
        assert store.namespace == namespace
        try:
            steps = [admit("c1", "e1", 0, "", "referral-ask"), admit("c2", "e2", HOUR, "", "referral-ask"),
                     admit("c5", "e3", 2 * HOUR + 1500, "", "referral-ask"),
                     admit("c5", "e4", 3 * HOUR, "", "referral-ask"), admit("c6", "e5", 0, "", "other")]
            return [describe(decision) for decision in await store.admit([trigger(step) for step in steps])]
        finally:
            await store.close()

    assert asyncio.run(admit_some()) == ["opted_out", "sent", "sent", "capped:campaign", "sent"]
    out = tmp_path / "exports" / "referral.csv"
    assert main(["audience", "export", "referral-ask", "--out", str(out), *config]) == 0
    assert "2 customers of referral-ask" in capsys.readouterr().err
    assert out.read_text() == ("customer_id,triggered_at\nc2,2026-03-02T15:20:00Z\n"
                               "c5,2026-03-02T16:20:01.500Z\n")
    assert main(["audience", "export", "referral-ask", "--since", "2026-03-02T16:00:00+00:00", *config]) == 0
    assert capsys.readouterr().out == "customer_id,triggered_at\nc5,2026-03-02T16:20:01.500Z\n"
    assert main(["audience", "export", "other", *config]) == 0
    captured = capsys.readouterr()
    assert captured.out == "customer_id,triggered_at\nc6,2026-03-02T14:20:00Z\n"
    assert "not a configured campaign" in captured.err


# ---------------------------------------------------------------- Redis down


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_down_fails_closed_and_recovers(tmp_path: Path) -> None:
    port = closed_port()
    url = f"redis://127.0.0.1:{port}/0"
    triggers = [trigger(admit("c1", "e1", 0, "")), trigger(admit("c2", "e2", 0, ""))]

    async def down() -> DeliveryStore:
        store = DeliveryStore(url, DeliverySettings(), namespace="down", retry_seconds=0.5)
        decisions = await store.admit(triggers)
        assert [(d.outcome, d.reason, d.sent) for d in decisions] == [(Outcome.UNDELIVERED, REDIS_UNAVAILABLE, False)] * 2
        started = time.monotonic()
        assert all(d.outcome is Outcome.UNDELIVERED for d in await store.admit(triggers))  # within the back-off
        assert time.monotonic() - started < 0.2
        assert (store.undelivered, store.available) == (4, False)
        with pytest.raises(DeliveryStoreError, match="unreachable") as raised:
            await store.export_audience("a")
        assert str(port) not in str(raised.value)
        with pytest.raises(DeliveryStoreError):
            await store.opt_out(["c1"])
        return store

    async def back(store: DeliveryStore) -> None:
        await asyncio.sleep(0.6)
        try:
            assert [d.outcome for d in await store.admit(triggers)] == [Outcome.SENT, Outcome.SENT]
            assert store.available and store.undelivered == 4
        finally:
            await store.close()

    async def scenario() -> None:
        store = await down()
        server = _start_redis(port, tmp_path)
        try:
            await back(store)
        finally:
            server.terminate()
            server.wait(10)

    asyncio.run(scenario())


def test_cli_reports_redis_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NPSPULSE_REDIS_URL", f"redis://:secret-pass@127.0.0.1:{closed_port()}/0")
    assert main(["optout", "list"]) == 1
    assert main(["audience", "export", "referral-ask"]) == 1
    err = capsys.readouterr().err
    assert "Redis unreachable" in err and "secret-pass" not in err


def _start_redis(port: int, tmp: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run via `make test`")
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            time.sleep(0.05)
    server.terminate()
    pytest.fail("private redis-server did not start")

