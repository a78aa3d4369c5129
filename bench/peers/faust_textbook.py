"""The bench job the way Faust's docs teach it: a Record model, one agent iterating events, and a tumbling
windowed table counting answers per segment membership in 5-minute event-time windows.

    BENCH_TOPIC=... BENCH_APP=... python bench/peers/faust_textbook.py worker -l warn

Windows expire after ten years, not the docs' hour. Faust's expiry sweep (every 30 s) compares each window's
event-time end with the wall clock (``window.stale(end, time.time())`` in ``Collection._del_old_keys``), and the
workload's event time (2026-03-02) is months old: with an hour or a day every window older than that was deleted
at each sweep while answers still arrived for it, and its count restarted from zero (3,745-4,421 of 57,681 counts
short; the changelog shows ``..., 100, 101, 1, 2, 3``). The counts are read back from the table's changelog.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import faust
from segments import memberships

app = faust.App(os.environ["BENCH_APP"], broker=f"kafka://{os.environ['NPSPULSE_KAFKA_BOOTSTRAP']}",
                topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "6")), consumer_auto_offset_reset="earliest",
                web_enabled=False)


class Answer(faust.Record, serializer="json", isodates=True):
    type: str
    event_id: str
    customer_id: str
    score: int
    answered_at: datetime
    touchpoint: str
    channel: str
    region: str
    attributes: dict[str, str]
    comment: str | None = None


surveys = app.topic(os.environ["BENCH_TOPIC"], value_type=Answer)
counts = app.Table("segment-counts", default=int).tumbling(300, expires=timedelta(days=3650)).relative_to_field(
    Answer.answered_at)


@app.agent(surveys)
async def count(answers: faust.Stream[Answer]) -> None:
    async for answer in answers:
        for segment in memberships(answer.asdict()):
            counts[segment] += 1


if __name__ == "__main__":
    app.main()
