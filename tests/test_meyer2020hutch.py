"""Hutch++ against the exact trace of dense matrices: exact when the sketch spans the range, and within its
standard error (3 sigma over seeds, at the rate the variance bound allows) on a full-rank decaying spectrum."""

import numpy as np
import torch

from wdbound.curvature import DenseOperator
from wdbound.estimators.meyer2020hutch import hutchpp


def _matrix(eigenvalues, seed=0):
    d = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_hutchpp_is_exact_on_a_low_rank_matrix():
    H = _matrix([5.0, 3.0, -2.0] + [0.0] * 57)
    est = hutchpp(DenseOperator(H), matvecs=15, generator=torch.Generator().manual_seed(3))
    assert abs(est.estimate - 6.0) < 1e-10 and est.method == "hutch++"


def test_hutchpp_covers_the_exact_trace_on_a_decaying_spectrum():
    eigenvalues = 1.0 / np.arange(1, 201) ** 1.5
    H = _matrix(eigenvalues, seed=1)
    exact = float(eigenvalues.sum())
    errors = []
    for seed in range(20):
        est = hutchpp(DenseOperator(H), matvecs=60, generator=torch.Generator().manual_seed(seed))
        errors.append(est.estimate - exact)
        assert abs(est.estimate - exact) <= 4 * est.stderr + 1e-12  # 4 sigma: no false alarm in 20 draws
    plain = [float(((z := torch.randint(0, 2, (60, 200), generator=torch.Generator().manual_seed(s),
                                        dtype=torch.float64) * 2 - 1) @ H * z).sum(1).mean()) - exact
             for s in range(20)]
    assert np.std(errors) < np.std(plain)  # the deflated head is what Hutch++ buys
