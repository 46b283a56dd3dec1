"""Turning the ranker's odds into an expected watch time a person can believe (paper §4.2).

Weighted logistic regression learns odds ΣT / #unwatched = E[T] / (1 − P) ≈ E[T](1 + P): close
to E[T] when watches are rare, far above it when the click share P is high (on the MovieLens
proxy most shown items are "watched", so e^logit × scale sat at the 90-minute duration cap for
6 of 15 items in the demo). The ranking is unaffected (any monotone map keeps the order); only
the number shown as "expected watch" needs correcting.

The correction is fitted on validation pages (never the pages it is checked on): impressions
sorted by predicted odds, cut into bins (equal-count up to the 90th percentile, then halving
towards the top, where the odds run away and a person most often looks), each bin's mean
observed watch seconds (0 for an unwatched impression) made monotone by pool-adjacent-
violators, then interpolated linearly between bin medians; below the first bin the prediction
is scaled by that bin's ratio, above the last it is that bin's knot (a runaway logit must not
become a runaway number). Linear interpolation between medians pulls a bin's mean towards its
neighbours, most at the ends (half of the top bin sat on the knot below the bin's mean: the
top held-out decile read 20 % low), so the knots are then moved until every bin's mean
calibrated value equals its observed mean (a fixed point, re-made monotone each step). The
duration cap stays as a safety net.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

BINS = 18  # equal-count bins of the validation impressions below the 90th percentile
TOP_EDGES = (0.9, 0.95, 0.975, 0.99, 0.995, 1.0)  # finer bins above it
MIN_BIN = 10  # impressions per bin at least (smaller top bins merge into the one below)
MEAN_STEPS = 50  # fixed-point steps that make each bin's mean calibrated value its mean


def bin_groups(n: int, bins: int = BINS) -> list[np.ndarray]:
    """Index groups of ``n`` sorted impressions: ``bins`` equal-count bins up to the 90th
    percentile, then the ``TOP_EDGES`` quantiles; every group holds ≥ ``MIN_BIN`` items
    (or all of them when ``n`` is smaller)."""
    edges = np.concatenate([np.linspace(0.0, TOP_EDGES[0], bins + 1)[:-1], TOP_EDGES])
    bounds = [0]
    for cut in np.round(edges * n).astype(np.int64).tolist()[1:]:
        if cut - bounds[-1] >= MIN_BIN:
            bounds.append(cut)
    if bounds[-1] < n:  # a short top remainder joins the bin below it
        bounds = [*bounds[:-1], n] if len(bounds) > 1 else [0, n]
    return [np.arange(lo, hi) for lo, hi in pairwise(bounds)]


def _pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing fit of ``y`` with weights ``w``."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, wt in zip(y, w, strict=True):
        blocks.append([float(v), float(wt), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            b = blocks.pop()
            a = blocks[-1]
            total = a[1] + b[1]
            a[0] = (a[0] * a[1] + b[0] * b[1]) / total
            a[1] = total
            a[2] += b[2]
    return np.concatenate([np.full(int(c), m) for m, _, c in blocks])


@dataclass(frozen=True)
class WatchCalibration:
    """Monotone map from predicted odds × scale (s) to expected watch seconds."""

    x: np.ndarray  # [K] bin mean predictions, ascending
    y: np.ndarray  # [K] calibrated expected watch seconds, non-decreasing

    def __post_init__(self) -> None:
        if len(self.x) == 0 or self.x.shape != self.y.shape:
            raise ValueError(f"calibration knots: x {self.x.shape}, y {self.y.shape}")
        if np.any(np.diff(self.x) < 0) or np.any(np.diff(self.y) < 0) or self.x[0] <= 0:
            raise ValueError("calibration knots must be positive, ascending and monotone")

    @classmethod
    def fit(cls, predicted: np.ndarray, observed: np.ndarray, bins: int = BINS) -> WatchCalibration:
        """Fit on validation impressions: ``predicted`` e^logit × scale, ``observed`` watch
        seconds (0 when not watched), both [R]."""
        order = np.argsort(predicted, kind="stable")
        p, o = predicted[order], observed[order]
        groups = bin_groups(len(p), bins)
        # a bin's position is its median prediction: a few runaway logits (e^40) must not
        # drag the top knot to where no impression is
        x = np.array([float(np.median(p[g])) for g in groups])
        x = np.maximum.accumulate(np.maximum(x, 1e-6))
        w = np.array([len(g) for g in groups], dtype=np.float64)
        target = np.array([o[g].mean() for g in groups])
        y = np.maximum(_pav(target, w), 0.0)
        for _ in range(MEAN_STEPS):  # move the knots until each bin's mean is its own
            got = np.array([cls(x, y)(p[g]).mean() for g in groups])
            y = np.maximum(_pav(y + (target - got), w), 0.0)
        return cls(x, y)

    def __call__(self, predicted: np.ndarray | float) -> np.ndarray:
        """Calibrated expected watch seconds of ``predicted`` (same shape)."""
        p = np.asarray(predicted, dtype=np.float64)
        out = np.interp(p, self.x, self.y)
        lo = p < self.x[0]
        hi = p > self.x[-1]
        out = np.where(lo, p * (self.y[0] / self.x[0]), out)
        return np.where(hi, self.y[-1], out)  # above every knot: the top bin's watch time

    def to_json(self) -> dict[str, list[float]]:
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}

    @classmethod
    def from_json(cls, doc: Any) -> WatchCalibration | None:
        """The stored calibration, or None (rankers written before it existed)."""
        if not isinstance(doc, dict) or "x" not in doc or "y" not in doc:
            return None
        return cls(np.asarray(doc["x"], np.float64), np.asarray(doc["y"], np.float64))


def deciles(predicted: np.ndarray, observed: np.ndarray) -> list[dict[str, float]]:
    """Per decile of prediction: mean predicted and mean observed watch seconds, and their
    ratio (the check of a calibration on held-out impressions)."""
    order = np.argsort(predicted, kind="stable")
    out = []
    for g in np.array_split(order, 10):
        if len(g) == 0:
            continue
        mp, mo = float(predicted[g].mean()), float(observed[g].mean())
        out.append(
            {
                "pred": round(mp, 2),
                "observed": round(mo, 2),
                "ratio": round(mp / mo, 4) if mo > 0 else float("inf"),
            }
        )
    return out


def flat_watch(pages: Sequence[Any]) -> np.ndarray:
    """[R] observed watch seconds of every impression of ``pages``, in order."""
    return np.concatenate([p.watch_seconds for p in pages]) if pages else np.zeros(0)
