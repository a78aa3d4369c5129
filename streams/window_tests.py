"""The evaluation harness's baseline detectors, per segment on five-minute windows, and their calibration.

Three rules, each judged at the end of every five-minute window against the same hourly baseline q0 as
npspulse (answer-weighted over the window's slices):
- ``fixed``: detractor share - q0 >= c with n >= 10 (statistic: share - q0);
- ``test-5m``: exact one-sided binomial test of the window, P(X >= d | n, q0) <= alpha (statistic -log10 p);
- ``test-1h``: the same test over the last 12 windows (an hour hopping every 5 minutes).
A rule alarms while its statistic is at or above its threshold; a run of consecutive alarming windows is one
alarm. p-values above 0.1 are not resolved (statistic 0): no calibrated level comes near them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import bdtrc

RULES = ("fixed", "test-5m", "test-1h")
MIN_FIXED_ANSWERS = 10
HOP_WINDOWS = 12
GRIDS = {
    "fixed": np.round(np.arange(0, 1001) * 0.001, 3),  # c in share points
    "test-5m": np.round(1.0 + np.arange(0, 3001) * 0.01, 2),  # -log10 alpha
    "test-1h": np.round(1.0 + np.arange(0, 3001) * 0.01, 2),
}


def neg_log10_pvalue(d: np.ndarray, n: np.ndarray, q: np.ndarray) -> np.ndarray:
    """-log10 P(X >= d), X ~ Binomial(n, q); 0 where the excess is under one standard deviation."""
    out = np.zeros(d.shape)
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(n * q * (1.0 - q))
        sel = np.flatnonzero((n > 0) & (d - n * q >= sd))
    if sel.size:
        p = bdtrc((d[sel] - 1).astype(np.float64), n[sel].astype(np.int64), q[sel])
        out[sel] = -np.log10(np.maximum(p, 1e-300))
    return out


class WindowRules:
    """Per-segment window sums and the three rules' statistics at each window end."""

    def __init__(self, size: int) -> None:
        self.n = np.zeros(size, dtype=np.int64)
        self.d = np.zeros(size, dtype=np.int64)
        self.nq = np.zeros(size)
        self._ring = np.zeros((3, HOP_WINDOWS, size))  # n, d, n q0 of the last 12 windows
        self._windows = 0

    def add(self, idx: np.ndarray, n: np.ndarray, d: np.ndarray, q0: np.ndarray) -> None:
        """A slice's answers for segments idx, judged against their q0 for it."""
        self.n[idx] += n
        self.d[idx] += d
        self.nq[idx] += n * q0

    def close(self) -> dict[str, np.ndarray]:
        """End of a five-minute window: the rules' statistics for every segment; sums restart."""
        n, d, nq = self.n, self.d, self.nq
        slot = self._windows % HOP_WINDOWS
        self._windows += 1
        self._ring[0, slot], self._ring[1, slot], self._ring[2, slot] = n, d, nq
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(n > 0, nq / n, 0.5)
            fixed = np.where(n >= MIN_FIXED_ANSWERS, d / n - q, -np.inf)
        hn, hd, hnq = self._ring.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            hq = np.where(hn > 0, hnq / hn, 0.5)
        stats = {"fixed": fixed, "test-5m": neg_log10_pvalue(d, n, q),
                 "test-1h": neg_log10_pvalue(hd, hn, hq)}
        self.n = np.zeros_like(n)
        self.d = np.zeros_like(d)
        self.nq = np.zeros_like(nq)
        return stats


class EpisodeCounter:
    """Alarms (runs of windows with statistic >= threshold) for every threshold of a grid at once."""

    def __init__(self, grid: np.ndarray, size: int) -> None:
        self.grid = grid
        self._diff = np.zeros(grid.size + 1, dtype=np.int64)
        self._prev = np.full(size, -np.inf)

    def add(self, stat: np.ndarray) -> None:
        # an alarm starts at threshold g iff prev < g <= stat: grid indices [a, b)
        a = np.searchsorted(self.grid, self._prev, side="right")
        b = np.searchsorted(self.grid, stat, side="right")
        sel = b > a
        self._diff += np.bincount(a[sel], minlength=self.grid.size + 1)
        self._diff -= np.bincount(b[sel], minlength=self.grid.size + 1)
        self._prev = stat

    def counts(self) -> np.ndarray:
        """Alarms at each grid threshold."""
        return np.cumsum(self._diff)[: self.grid.size]

    def count_at(self, threshold: float) -> int:
        i = int(np.searchsorted(self.grid, threshold - 1e-12))
        return int(self.counts()[i]) if i < self.grid.size else 0


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float  # inf when even the highest grid threshold gives more alarms than the target
    alarms: int
    target: float


def calibrate(grid: np.ndarray, counts: np.ndarray, target_alarms: float) -> Calibration:
    """The lowest grid threshold at and above which every grid threshold gives <= ``target_alarms`` alarms."""
    too_many = np.flatnonzero(counts > target_alarms)
    if too_many.size == 0:
        return Calibration(float(grid[0]), int(counts[0]), target_alarms)
    i = int(too_many[-1]) + 1
    if i >= grid.size:
        return Calibration(float("inf"), 0, target_alarms)
    return Calibration(float(grid[i]), int(counts[i]), target_alarms)
