"""Window settings and times shared by the window tests: 5-minute tumbling and 1-hour hopping windows over
1-minute slices with a 2-minute grace, from a start aligned to every window."""

from __future__ import annotations

from processors.windows import WindowSettings, WindowSpec

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 20_416 * DAY + 10 * HOUR  # 2025-11-24T10:00:00Z, aligned to every window
SETTINGS = WindowSettings(specs=(WindowSpec("5m", 5 * MIN, 5 * MIN), WindowSpec("1h/5m", HOUR, 5 * MIN)),
                          slice_ms=MIN, grace_ms=2 * MIN)
