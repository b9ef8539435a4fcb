"""Per-scene statistics of the quality records and bootstrap confidence intervals over scenes.

A scene is the unit: every measure is first reduced to one number per scene (e.g. its cell
accuracy over the last eight generated frames), then the mean over scenes is given with a
percentile bootstrap interval (scenes resampled with replacement, seeded, so a table is
reproducible). ``paired`` intervals resample the per-scene *differences* of two settings on the
same scenes, which is what "is this policy worse than the full cache" asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean over scenes and its bootstrap interval [low, high]; n: scenes with a value."""

    mean: float
    low: float
    high: float
    n: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def bootstrap_mean(
    values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs, scenes without a value,
    are left out). Deterministic for a given seed."""
    kept = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if kept.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, kept.size, size=(resamples, kept.size))
    means = kept[draws].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(kept.mean()), float(low), float(high), int(kept.size))


def scene_mean(values: Sequence[float], frames: slice = slice(None)) -> float:
    """One scene's mean of a per-frame measure over ``frames`` (NaN frames left out)."""
    kept = [v for v in list(values)[frames] if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def per_scene(records: list[dict], drift: int) -> dict[str, dict[int, float]]:
    """Per statistic, scene -> value: last/first ``drift`` frames' cell accuracy, drift (first
    minus last), objects lost (mean over frames), background accuracy, position error."""
    out: dict[str, dict[int, float]] = {
        name: {} for name in ("first", "last", "drift", "lost", "background", "position")
    }
    for r in records:
        scene = r["scene"]
        first = scene_mean(r["cell_accuracy"], slice(None, drift))
        last = scene_mean(r["cell_accuracy"], slice(-drift, None))
        out["first"][scene] = first
        out["last"][scene] = last
        out["drift"][scene] = first - last
        out["lost"][scene] = scene_mean(r["lost_fraction"])
        out["background"][scene] = scene_mean(r["background_accuracy"])
        out["position"][scene] = scene_mean(r["position_error"])
    return out


def paired_difference(ours: dict[int, float], theirs: dict[int, float]) -> Interval:
    """Mean over the shared scenes of ours - theirs, with its bootstrap interval."""
    shared = sorted(set(ours) & set(theirs))
    return bootstrap_mean([ours[s] - theirs[s] for s in shared])
