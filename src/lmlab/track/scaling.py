"""Scaling-law fits: L(C) = E + A * C^-alpha by least squares, bootstrap intervals, and where two fits cross.

The fit works in log compute about the points' geometric mean, so its three parameters are of similar size
whatever the FLOPs are. E is kept in [0, min loss] and alpha in (0, 5]: a saturating power law, the form
Hoffmann et al. (2022, approach 3) and Kaplan et al. (2020) fit. Intervals come from resampling the seeds of
each ladder rung with replacement and refitting (a stratified bootstrap), so a rung keeps its compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALPHA_MAX = 5.0


@dataclass
class PowerLaw:
    """L(C) = E + A * C^-alpha."""

    E: float
    A: float
    alpha: float

    def __call__(self, compute: np.ndarray | float) -> np.ndarray | float:
        """The fitted loss at `compute` FLOPs."""
        return self.E + self.A * np.power(compute, -self.alpha)


@dataclass
class Fit:
    """A power law fitted to (compute, loss) points, with bootstrap refits for its intervals."""

    law: PowerLaw
    rmse: float
    boot: list[PowerLaw] = field(default_factory=list)

    def interval(self, what: str, level: float = 0.95) -> tuple[float, float]:
        """The bootstrap percentile interval of E, A or alpha."""
        values = np.array([getattr(b, what) for b in self.boot])
        return _percentiles(values, level)

    def predict(self, compute: float, level: float = 0.95) -> tuple[float, float, float]:
        """(fitted loss, low, high) at `compute`, the interval from the bootstrap refits."""
        values = np.array([b(compute) for b in self.boot])
        low, high = _percentiles(values, level)
        return float(self.law(compute)), low, high


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    if not len(values):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def fit_power_law(compute: np.ndarray, loss: np.ndarray, start: PowerLaw | None = None) -> tuple[PowerLaw, float]:
    """The least-squares L = E + A C^-alpha through the points, and its root-mean-square residual.

    Without `start`, several starting exponents are tried and the best kept: the problem is not convex
    in alpha. A bootstrap refit starts from the full fit instead."""
    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    if len(np.unique(compute)) < 3:
        raise ValueError("a power law with a floor has three parameters: it needs points at 3 or more computes")
    c0 = float(np.exp(np.mean(np.log(compute))))
    u = np.log(compute / c0)
    top = max(float(loss.min()) * (1 - 1e-9), 1e-12)

    def residual(p: np.ndarray) -> np.ndarray:
        e, b, alpha = p
        return e + np.exp(b - alpha * u) - loss

    if start is None:
        e0 = 0.5 * top
        b0 = math.log(max(float(loss.mean()) - e0, 1e-9))
        starts = [[e0, b0, alpha0] for alpha0 in (0.05, 0.2, 0.5, 1.0, 2.0)]
    else:
        b0 = math.log(max(start.A * c0**-start.alpha, 1e-300))
        starts = [[min(start.E, top * (1 - 1e-6)), b0, min(max(start.alpha, 1e-6), ALPHA_MAX)]]
    # scipy loads here, not with the module: the tracker registry imports every module of this folder at start-up.
    from scipy.optimize import least_squares

    best = None
    for p0 in starts:
        found = least_squares(residual, p0, bounds=([0.0, -np.inf, 1e-6], [top, np.inf, ALPHA_MAX]), method="trf")
        if best is None or found.cost < best.cost:
            best = found
    e, b, alpha = best.x
    law = PowerLaw(float(e), float(math.exp(b) * c0**alpha), float(alpha))
    return law, float(np.sqrt(np.mean(best.fun**2)))


def fit_with_bootstrap(rungs: dict[float, list[float]], *, samples: int = 1000, seed: int = 0) -> Fit:
    """Fit every seed's point of every rung ({compute: [loss per seed]}), then refit `samples` times with
    each rung's seeds drawn with replacement."""
    compute = np.array([c for c, losses in rungs.items() for _ in losses])
    loss = np.array([x for losses in rungs.values() for x in losses])
    law, rmse = fit_power_law(compute, loss)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(samples):
        drawn = np.concatenate([rng.choice(np.asarray(losses, float), size=len(losses)) for losses in rungs.values()])
        boot.append(fit_power_law(compute, drawn, start=law)[0])
    return Fit(law, rmse, boot)


@dataclass
class Crossing:
    """Where fit b's loss falls below fit a's (or rises above it) within a compute range."""

    low: float  # the range searched
    high: float
    at: float | None  # the fitted crossing, None when the fits do not cross in the range
    share: float  # bootstrap pairs that cross in the range
    interval: tuple[float, float]  # 95% interval of the crossing over the pairs that cross


def first_crossing(a: PowerLaw, b: PowerLaw, low: float, high: float, points: int = 2001) -> float | None:
    """The smallest compute in [low, high] where a(C) - b(C) changes sign (bisected on log C), or None."""
    grid = np.geomspace(low, high, points)
    diff = a(grid) - b(grid)
    flips = np.nonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0)[0]
    if not len(flips):
        exact = np.nonzero(diff == 0)[0]
        return float(grid[exact[0]]) if len(exact) else None
    lo, hi = math.log(grid[flips[0]]), math.log(grid[flips[0] + 1])
    sign_lo = np.sign(a(math.exp(lo)) - b(math.exp(lo)))
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.sign(a(math.exp(mid)) - b(math.exp(mid))) == sign_lo:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def crossing(a: Fit, b: Fit, low: float, high: float) -> Crossing:
    """Where two fits cross in [low, high], with the share of bootstrap pairs that cross and their interval."""
    at = first_crossing(a.law, b.law, low, high)
    found = [c for x, y in zip(a.boot, b.boot, strict=False) if (c := first_crossing(x, y, low, high)) is not None]
    pairs = min(len(a.boot), len(b.boot))
    interval = _geometric_percentiles(np.array(found)) if found else (math.nan, math.nan)
    return Crossing(low, high, at, len(found) / pairs if pairs else math.nan, interval)


def _geometric_percentiles(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(np.log(values), [2.5, 97.5])
    return float(np.exp(low)), float(np.exp(high))
