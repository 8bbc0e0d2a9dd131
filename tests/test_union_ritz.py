"""estimators/union_ritz.py: Rayleigh-Ritz on the union of the SLQ probes' Krylov spaces, against brute force."""

import numpy as np
import pytest
import torch

from wdbound.curvature import DenseOperator
from wdbound.estimators.krylov_trace import KrylovSpan
from wdbound.estimators.lanczos import SLQ, lanczos, slq_from_run
from wdbound.estimators.union_ritz import union_ritz


def _matrix(seed: int, dim: int = 150) -> torch.Tensor:
    """A dense symmetric matrix with a few outlying eigenvalues over a bulk (the shape of a network Hessian)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    values = np.concatenate([[40.0, 25.0, 11.0, 7.0, 5.0], rng.uniform(-0.3, 1.0, dim - 5)])
    return torch.from_numpy(basis @ np.diag(values) @ basis.T)


def _run(matrix: torch.Tensor, probes: int, steps: int, seed: int):
    z = torch.randn(probes, matrix.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lanczos(DenseOperator(matrix), z, steps, keep_basis=True)


@pytest.mark.parametrize("seed", range(3))
def test_ritz_values_and_residuals_match_the_explicit_projection(seed):
    matrix = _matrix(seed)
    run = _run(matrix, 3, 8, seed)
    union = union_ritz(run, 5)
    span = union.span
    u = (span.mix.T @ span.basis).double()  # U [r, d], formed explicitly here only
    np.testing.assert_allclose((u @ u.T).numpy(), np.eye(span.rank), atol=1e-8)
    projected = (u @ matrix @ u.T).numpy()
    theta, s = np.linalg.eigh(projected)
    order = np.argsort(theta)[::-1][:5]
    np.testing.assert_allclose(union.top.values, theta[order], rtol=1e-9, atol=1e-9)
    assert span.trace == pytest.approx(np.trace(projected), rel=1e-10)
    # The residual norms computed without an HVP equal ||H y - theta y|| of the explicit Ritz vectors.
    y = torch.from_numpy(s[:, order]).T @ u
    brute = (y @ matrix - torch.from_numpy(theta[order])[:, None] * y).norm(dim=1).numpy()
    np.testing.assert_allclose(union.top.residuals, brute, rtol=1e-6, atol=1e-9)
    # The certificate: every value lies within its residual of an exact eigenvalue.
    exact = np.linalg.eigvalsh(matrix.numpy())
    for value, residual in zip(union.top.values, union.top.residuals):
        assert np.min(np.abs(exact - value)) <= residual + 1e-10


def test_the_union_is_at_least_as_good_as_each_probe_and_converges():
    matrix = _matrix(7)
    exact = np.linalg.eigvalsh(matrix.numpy())[::-1][:5]
    run = _run(matrix, 4, 12, 7)
    union = union_ritz(run, 5, tol=1e-5)
    assert union.top.converged
    np.testing.assert_allclose(union.top.values, exact, rtol=1e-8)
    for p in range(4):  # each probe alone: its own top Ritz value is no closer (interlacing on a subspace)
        own = np.linalg.eigvalsh(run.tridiagonal(p)).max()
        assert abs(own - exact[0]) >= abs(union.top.values[0] - exact[0]) - 1e-10


def test_the_union_quadrature_is_exact_for_low_degree_polynomials():
    matrix = _matrix(3) / 40.0  # spectrum in [-0.01, 1]: moments of moderate size
    steps = 6
    run = _run(matrix, 3, steps, 3)
    union = union_ritz(run, 5)
    slq = slq_from_run(run, matrix.shape[0]).with_union_rule(union.nodes, union.weights)
    assert slq.rule == "union" and len(union.nodes) > steps
    powers = [torch.eye(matrix.shape[0], dtype=torch.float64)]
    for _ in range(2 * steps):
        powers.append(powers[-1] @ matrix)
    starts = run.starts
    for degree in range(2 * steps):  # the probe's Gauss rule is exact below degree 2m; so is the union's
        exact = ((starts @ powers[degree]) * starts).sum(1).numpy()
        np.testing.assert_allclose(slq.quadrature(lambda t: t**degree), exact, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(union.weights.sum(1), 1.0, atol=1e-12)


def test_a_run_without_its_basis_is_refused():
    z = torch.randn(2, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = lanczos(DenseOperator(torch.eye(20, dtype=torch.float64)), z, 3)
    with pytest.raises(ValueError, match="kept its basis"):
        union_ritz(run, 1)


def test_a_mixed_span_projects_like_its_explicit_basis():
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(rng.standard_normal((6, 30)))
    g, e = np.linalg.eigh((rows @ rows.T).numpy())
    mix = torch.from_numpy(e / np.sqrt(g))
    span = KrylovSpan(rows, 0.0, mix)
    u = mix.T @ rows
    v = torch.from_numpy(rng.standard_normal((3, 30)))
    np.testing.assert_allclose(span.project_out(v).numpy(), (v - (v @ u.T) @ u).numpy(), atol=1e-12)
    assert span.rank == 6


def test_stopping_early_keeps_the_lanczos_relation():
    matrix = _matrix(2)
    z = torch.randn(2, 150, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen = []

    def stop(run) -> bool:
        seen.append(run.alphas.shape[1])
        return run.alphas.shape[1] >= 10

    run = lanczos(DenseOperator(matrix), z, 40, keep_basis=True, stop=stop, check_every=5)
    assert seen == [5, 10] and run.alphas.shape[1] == 10 and list(run.lengths) == [10, 10]
    # H Q_pᵀ = Q_pᵀ T_p + r_p e_mᵀ for the truncated run.
    for p in range(2):
        q = run.basis[p, :10]
        lhs = matrix @ q.T
        rhs = q.T @ torch.from_numpy(run.tridiagonal(p))
        rhs[:, -1] += run.residuals[p]
        np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), atol=1e-9)
    assert isinstance(slq_from_run(run, 150), SLQ)


def test_probes_that_break_down_early_give_exact_values():
    """Three distinct eigenvalues, each 10 times: every probe's Krylov space is invariant after 3 steps
    (breakdown); the union of 3 probes holds 3 directions of each eigenspace, so its Ritz values are the
    eigenvalues with multiplicity (a single Lanczos run finds each only once), with zero residuals, whether
    the run stops by itself or is stopped."""
    matrix = torch.diag(torch.tensor([5.0] * 10 + [2.0] * 10 + [-1.0] * 10, dtype=torch.float64))
    z = torch.randn(3, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for stop in (None, lambda run: True):
        run = lanczos(DenseOperator(matrix), z, 12, keep_basis=True, stop=stop, check_every=3)
        assert list(run.lengths) == [3, 3, 3]
        union = union_ritz(run, 5)
        np.testing.assert_allclose(union.top.values, [5.0, 5.0, 5.0, 2.0, 2.0], atol=1e-12)
        assert union.top.residuals.max() < 1e-10 and union.top.converged and union.span.rank == 9
