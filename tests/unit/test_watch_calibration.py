"""The odds → expected watch time calibration: monotone, fitted on one set, right on another."""

from __future__ import annotations

import numpy as np

from model.watch_calibration import WatchCalibration, deciles


def _impressions(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted-LR odds of a world with high click shares: odds = E[T] / (1 - p)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.9, n)
    mean_t = rng.uniform(300, 3000, n)
    odds = p * mean_t / (1 - p)
    watched = rng.random(n) < p
    observed = np.where(watched, rng.exponential(mean_t), 0.0)
    return odds, observed


def test_raw_odds_overstate_and_the_calibration_fixes_every_held_out_decile() -> None:
    fit_odds, fit_obs = _impressions(0, 40_000)
    cal = WatchCalibration.fit(fit_odds, fit_obs)
    odds, observed = _impressions(1, 40_000)  # held out
    raw = deciles(odds, observed)
    assert max(r["ratio"] for r in raw) > 2.0  # E[T]/(1-p): far above the watch time
    fixed = deciles(cal(odds), observed)
    assert all(abs(r["ratio"] - 1) < 0.1 for r in fixed), fixed
    grid = np.linspace(0, 2 * odds.max(), 500)
    assert (np.diff(cal(grid)) >= -1e-9).all()  # monotone: never reorders the ranker's list


def test_calibration_round_trips_and_refuses_non_monotone_knots() -> None:
    cal = WatchCalibration.fit(*_impressions(2, 5000))
    again = WatchCalibration.from_json(cal.to_json())
    assert again is not None
    x = np.array([1.0, 50.0, 5e4])
    assert np.array_equal(again(x), cal(x))
    assert WatchCalibration.from_json(None) is None
    try:
        WatchCalibration(np.array([1.0, 2.0]), np.array([5.0, 1.0]))
    except ValueError:
        pass
    else:
        raise AssertionError("decreasing knots accepted")
