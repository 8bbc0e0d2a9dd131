"""Operators with known eigenvalues (wdbound.synthetic): exactly orthogonal, the spectrum asked for, dense to a
Rademacher probe, and the spectra generators' shapes."""

import numpy as np
import pytest
import torch

from wdbound.synthetic import (KnownSpectrumOperator, RandomOrthogonal, grown_spectrum, published_spectrum,
                               repeated_spectrum)


@pytest.mark.parametrize("dim", [1, 2, 7, 64, 1001])
def test_random_orthogonal_is_orthogonal(dim):
    q = RandomOrthogonal(dim, seed=dim)
    x = torch.randn(3, dim, dtype=torch.float64)
    assert torch.allclose(q.transpose(q.apply(x)), x, atol=1e-12)
    assert torch.allclose(q.apply(x).norm(dim=1), x.norm(dim=1), rtol=1e-12)
    if dim <= 64:
        matrix = q.apply(torch.eye(dim, dtype=torch.float64))
        assert torch.allclose(matrix @ matrix.T, torch.eye(dim, dtype=torch.float64), atol=1e-12)


def test_the_operator_has_the_spectrum_it_was_given():
    ev = np.sort(np.random.default_rng(0).standard_normal(300))
    op = KnownSpectrumOperator(ev, seed=2)
    dense = op.matmat(torch.eye(300, dtype=torch.float64)).numpy()
    assert np.allclose(dense, dense.T, atol=1e-12)
    assert np.allclose(np.linalg.eigvalsh(dense), ev, atol=1e-10)
    assert op.matvecs == 300


def test_a_rademacher_probe_sees_a_dense_matrix():
    """The spectral weights (v_i . z)^2 / d of a Rademacher probe: coordinate-aligned eigenvectors would give 1/d
    each exactly; behind Q they spread like a Gaussian probe's chi-square(1) (variance 2/d^2)."""
    dim = 4096
    q = RandomOrthogonal(dim, seed=0)
    z = torch.randint(0, 2, (1, dim), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    weights = q.apply(z)[0].numpy() ** 2
    assert weights.mean() == pytest.approx(1.0, rel=1e-9)
    assert 1.5 < weights.var() < 2.5  # chi-square(1): variance 2


def test_spectra_shapes():
    base = np.array([0.0, -0.01, 1e-4, 2.0])
    tiled = repeated_spectrum(base, 10_000, seed=1)
    assert len(tiled) == 10_000 and np.sum(tiled == 0.0) == 2_500
    assert np.allclose(np.sort(tiled[1::4]), -0.01, rtol=1e-2)
    for kind in ("resnet", "vit"):
        ev = published_spectrum(kind, 50_000, seed=0)
        negative = np.mean(ev < 0)
        assert 0.15 < negative < 0.5 and np.median(np.abs(ev)) < 1e-2 * ev.max()
    with pytest.raises(ValueError, match="unknown spectrum shape"):
        published_spectrum("lstm", 10)


def test_a_grown_spectrum_tiles_the_bulk_and_keeps_each_outlier_once():
    values = np.sort(np.random.default_rng(1).standard_normal(200))
    values[-3:] = [50.0, 70.0, 90.0]
    grown = grown_spectrum(values, 10_000, outliers=3)
    assert len(grown) == 10_000 and sorted(grown[-3:]) == [50.0, 70.0, 90.0]
    assert np.sum(grown > 10) == 3  # the outliers once, where repeated_spectrum has 150 of them
    assert np.sum(repeated_spectrum(values, 10_000) > 10) == 150
    bulk = np.sort(grown[:-3])  # the bulk's quantiles are the small spectrum's, to the jitter
    quantiles = [0.1, 0.5, 0.9]
    assert np.allclose(np.quantile(bulk, quantiles), np.quantile(values[:-3], quantiles), rtol=0.05, atol=0.02)
    with pytest.raises(ValueError):
        grown_spectrum(values, 100, outliers=3)
    with pytest.raises(ValueError):
        grown_spectrum(values, 10_000, outliers=200)
