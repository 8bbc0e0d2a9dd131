"""stats.py against independent computations."""

import math

import numpy as np
import pytest

from wdbound.stats import gaussian_smooth, mean_stderr


def test_mean_stderr_written_out():
    samples = [2.0, 4.0, 9.0]
    mean = sum(samples) / 3
    variance = sum((s - mean) ** 2 for s in samples) / 2  # unbiased
    assert mean_stderr(samples) == (pytest.approx(5.0), pytest.approx(math.sqrt(variance / 3)))
    assert math.isnan(mean_stderr([1.0])[1]) and mean_stderr([1.0], math.inf) == (1.0, math.inf)


def test_gaussian_smooth_is_a_normal_density():
    grid = np.array([0.0, 1.0])
    value = gaussian_smooth(grid, np.array([0.0]), np.array([2.0]), 0.5)
    expected = 2.0 * np.exp(-0.5 * (grid / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(value, expected, rtol=1e-14)
