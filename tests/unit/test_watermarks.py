"""The watermark over source partitions: min of active sources minus grace, idle ones excluded."""

from processors.watermarks import WatermarkTracker


def test_unset_until_every_source_reported() -> None:
    tracker = WatermarkTracker(expected_sources=2, grace_ms=100)
    tracker.update(0, 1_000, idle=False)
    assert tracker.watermark() is None
    tracker.update(1, 600, idle=False)
    assert tracker.watermark() == 500  # the lagging source holds it back


def test_idle_sources_do_not_hold_it_back_and_it_never_goes_backwards() -> None:
    tracker = WatermarkTracker(expected_sources=2, grace_ms=100)
    tracker.update(0, 1_000, idle=False)
    tracker.update(1, None, idle=True)
    assert tracker.watermark() == 900
    tracker.update(1, 200, idle=False)  # a source wakes up far behind
    assert tracker.watermark() == 900
    tracker.update(0, 800, idle=False)  # stream times are monotone per source
    assert tracker.sources[0].stream_time == 1_000


def test_an_active_source_without_data_waits_and_all_idle_follows_the_furthest() -> None:
    tracker = WatermarkTracker(expected_sources=2, grace_ms=0)
    tracker.update(0, 500, idle=False)
    tracker.update(1, None, idle=False)
    assert tracker.watermark() is None
    tracker.update(0, 500, idle=True)
    tracker.update(1, 700, idle=True)
    assert tracker.watermark() == 700
