"""``Pipeline._profile`` on a RocksDB profiles table, without Kafka: a customer's profile is found whichever event is
current when the answer is segmented.

Faust's RocksDB store keeps one database per partition and, for a table without ``use_partitioner``, files a key
under the partition of the event current at the write (the purchase's) and looks it up *only* in the database of the
event current at the read. The surveys agent drains every survey partition's held answers at once, and when it
drains from its own loop (2,000 answers received before the timer's next drain: a backlog after a restart) the
current event is the last answer received, of any partition. The profile of a customer on another partition was
then read as missing and the answer segmented as ``tier=none``. Only after a restart: until then the decoded-profile
cache holds every profile the worker wrote (``test_kill.py::test_sigkill_and_restart_mid_stream[rocksdb://]``)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from processors.profiles import CustomerProfile
from streams.app import build_app
from streams.pipeline import Pipeline, as_current_event
from streams.settings import load_config

pytest.importorskip("rocksdict")

PURCHASES = "flt.purchases"
SURVEYS = "flt.surveys"


class Event:
    """What the store reads of Faust's current event: its message's partition (weak-referenceable, like an Event)."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition, offset=0)


def _pipeline(tmp_path: Path) -> Pipeline:
    config = load_config(None, environ={})
    config = dataclasses.replace(config, worker=dataclasses.replace(config.worker, store="rocksdb://"))
    app = build_app(config)
    app.conf.datadir = tmp_path
    return Pipeline(app, config, None)


def _stored(profile: CustomerProfile, partition: int) -> bytes:
    return orjson.dumps({**profile.to_dict(), "o": [partition, 7]})


def test_a_profile_is_read_whichever_partitions_event_is_current(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    profile = CustomerProfile()
    profile.add_purchase(1_772_237_372_426, Decimal("53.21"), horizon_days=90)
    with as_current_event(Event(PURCHASES, 0)):  # the purchases agent writes under its purchase's event
        pipeline.profiles.data[b"c0000587"] = _stored(profile, 0)
    pipeline._profile_cache.clear()  # a restarted worker: nothing decoded yet, the profile is in the table only

    for partition in (1, 2, 0):  # the drain runs with the last answer received current, of any partition
        with as_current_event(Event(SURVEYS, partition)):
            assert pipeline._profile(b"c0000587") == profile, partition
        pipeline._profile_cache.clear()
    assert pipeline._profile(b"c0000587") == profile  # the timer's drain: no current event
    assert pipeline._profile(b"c0000000") is None  # a customer without purchases has none


def test_a_purchase_reads_the_offset_its_partition_applied(tmp_path: Path) -> None:
    # The purchases agent reads the same way: the profile and the last offset folded in from its partition.
    pipeline = _pipeline(tmp_path)
    with as_current_event(Event(PURCHASES, 2)):
        pipeline.profiles.data[b"c0000052"] = _stored(CustomerProfile(), 2)
    pipeline._profile_cache.clear()
    with as_current_event(Event(PURCHASES, 2)):
        assert pipeline._profile_and_offset(b"c0000052", 2)[1] == 7
    pipeline._profile_cache.clear()
    with as_current_event(Event(PURCHASES, 1)):
        assert pipeline._profile_and_offset(b"c0000052", 1)[1] == -1
