"""Small numerical helpers shared by the estimators, the bounds and the plots (numpy only).

>>> mean, se = mean_stderr(np.array([1.0, 2.0, 3.0]))
>>> mean, round(se, 6)
(2.0, 0.57735)
>>> mean_stderr(np.array([5.0]))
(5.0, nan)
>>> wasserstein1(np.array([0.0]), np.array([1.0]), np.array([1.0, 3.0]), np.array([1.0, 1.0]))
2.0
>>> grid = np.linspace(-10, 10, 2001)
>>> round(float(gaussian_smooth(grid, np.array([0.0]), np.array([1.0]), 1.0).sum() * 0.01), 6)
1.0
"""

from __future__ import annotations

import math

import numpy as np

# The update-magnitude histograms' log2 bins (wdbound.updates counts, wdbound.plots draws):
# [<= 2^LOW_EXP], 27 interior bins, [>= 1].
LOW_EXP = -27
BINS = 29


def mean_stderr(samples, single: float = math.nan) -> tuple[float, float]:
    """Mean of ``samples`` [k] and its standard error ``std(ddof=1) / sqrt(k)``.

    Parameters
    ----------
    samples:
        One estimate per independent probe.
    single:
        The standard error reported when there is only one sample (no spread to measure): NaN by default;
        an interval that must stay conservative passes ``math.inf``.

    Returns
    -------
    (mean, stderr) as Python floats.
    """
    samples = np.asarray(samples, dtype=np.float64)
    k = len(samples)
    stderr = float(np.std(samples, ddof=1) / math.sqrt(k)) if k > 1 else single
    return float(np.mean(samples)), stderr


def gaussian_smooth(grid: np.ndarray, centers: np.ndarray, weights: np.ndarray, width: float) -> np.ndarray:
    """A weighted sum of Gaussians of standard deviation ``width`` centred on ``centers`` [n], evaluated on
    ``grid`` [g]: the smoothed spectral density of the plots (Ghorbani et al. 2019; PyHessian). Integrates to
    ``weights.sum()``."""
    diff = (np.asarray(grid)[:, None] - np.asarray(centers)[None, :]) / width
    return (np.exp(-0.5 * diff**2) * np.asarray(weights)[None, :]).sum(1) / (width * math.sqrt(2 * math.pi))


def wasserstein1(nodes_a, weights_a, nodes_b, weights_b) -> float:
    """W1 between two discrete measures on the line (weights normalised): the integral of |F_a - F_b|."""
    points = np.concatenate([np.asarray(nodes_a, dtype=np.float64), np.asarray(nodes_b, dtype=np.float64)])
    order = np.argsort(points, kind="stable")
    weights_a, weights_b = np.asarray(weights_a, dtype=np.float64), np.asarray(weights_b, dtype=np.float64)
    signed = np.concatenate([weights_a / weights_a.sum(), -weights_b / weights_b.sum()])[order]
    cdf_gap = np.cumsum(signed)[:-1]
    return float(np.sum(np.abs(cdf_gap) * np.diff(points[order])))
