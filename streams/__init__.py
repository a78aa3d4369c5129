"""npspulse's imperative shell: configuration loading, the embedded runner, the simulator and the CLI
(the Faust worker, Kafka clients and Redis stores build on the same processors)."""

import os

# Before numpy/scipy load (processors.cusum, for exact CUSUM thresholds): OpenBLAS threads on busy cores make
# the small banded ARL solves 3-50x slower (measured by the evaluation harness), and a worker has other work.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
