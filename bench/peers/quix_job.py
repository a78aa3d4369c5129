"""The bench job in Quix Streams: each answer expanded to its segment memberships, regrouped by segment,
counted in 5-minute event-time tumbling windows, each window's count written to an output topic as it changes.

The grace period is the whole day: Quix drops an answer as late once its partition's stream time passed the window
end + grace, and reading a backlog it takes large batches per source partition, so after the regrouping stream time
jumps hours ahead; with npspulse's 2-minute grace it dropped most answers of this workload (the bench check
showed it). With a day of grace no window closes during the run, so the job emits current counts, not final ones.

    BENCH_TOPIC=... BENCH_APP=... BENCH_OUT=... python bench/peers/quix_job.py   (in .venv-quix, see Makefile)
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from quixstreams import Application
from segments import memberships

GRACE_MS = 24 * 3_600_000


def event_time(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    return int(datetime.fromisoformat(value["answered_at"]).timestamp() * 1000)


def main() -> None:
    app = Application(broker_address=os.environ["NPSPULSE_KAFKA_BOOTSTRAP"], consumer_group=os.environ["BENCH_APP"],
                      auto_offset_reset="earliest", state_dir=os.environ.get("BENCH_STATE_DIR", "state"))
    surveys = app.topic(os.environ["BENCH_TOPIC"], value_deserializer="json", timestamp_extractor=event_time)
    sdf = app.dataframe(surveys)
    sdf = sdf.apply(memberships, expand=True)
    sdf = sdf.group_by(lambda segment: segment, name="segment")
    sdf = sdf.tumbling_window(300_000, grace_ms=GRACE_MS).count().current()
    sdf.to_topic(app.topic(os.environ["BENCH_OUT"], value_serializer="json"))
    app.run()


if __name__ == "__main__":
    main()
