"""Detection quality of npspulse's detector vs three window rules (prints a markdown report; asserts nothing).

A thin wrapper around `npspulse evaluate` (streams/evaluation.py); the same flags:

    python bench/detection.py [--quick] [--seed 1] [--segments 10,100,1000] [--out docs/detection.md]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: on busy cores BLAS threads slow ARL solves 3-50x

from streams.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
