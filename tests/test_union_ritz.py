"""estimators/union_ritz.py: Rayleigh-Ritz on the union of the SLQ probes' Krylov spaces, against brute force."""

import numpy as np
import pytest
import torch

from wdbound.curvature import DenseOperator
from wdbound.estimators.krylov_trace import KrylovSpan
from wdbound.estimators.lanczos import SLQ, lanczos, slq_from_run
from wdbound.estimators.union_ritz import RANK_TOL, union_ritz


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
    u = (span.mix.T @ torch.cat(span.blocks())).double()  # U [r, d], formed explicitly here only
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
    for value, residual, bound in zip(union.top.values, union.top.residuals, union.top.bounds):
        assert np.min(np.abs(exact - value)) <= bound + 1e-10
        assert bound <= residual


@pytest.mark.parametrize("probes", [1, 2, 5])
def test_top_k_certified_by_the_refined_bounds_is_within_tol_of_the_exact_top_k(probes):
    """Stopped as the single pass stops (every 2 steps, once each error bound is <= 1e-3 x |value|): the values
    are within 1e-3 of the exact top 5 on every seed, and each lies within its bound of an exact eigenvalue."""
    for seed in range(12):
        matrix = _matrix(seed)
        exact = np.linalg.eigvalsh(matrix.numpy())
        for steps in range(2, 60, 2):
            top = union_ritz(_run(matrix, probes, steps, seed), 5, tol=1e-3).top
            if top.converged:
                break
        assert top.converged
        np.testing.assert_allclose(top.values, exact[::-1][:5], rtol=1e-3)
        distance = np.abs(top.values[:, None] - exact[None, :]).min(1)
        assert np.all(distance <= top.bounds + 1e-10)
        assert np.all(top.bounds <= top.residuals)


def test_gap_refined_bounds_certify_with_fewer_steps_than_the_residuals():
    matrix = _matrix(0)

    def first_certified(errors) -> int:
        for steps in range(2, 40):
            top = union_ritz(_run(matrix, 2, steps, 0), 5).top
            if np.all(errors(top) <= 1e-6 * np.abs(top.values)):
                return steps
        raise AssertionError("not certified in 40 steps")

    assert first_certified(lambda top: top.bounds) < first_certified(lambda top: top.residuals)


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


def test_every_node_has_its_brute_force_residual_and_the_gram_cache_changes_nothing():
    from wdbound.estimators.union_ritz import GramCache

    matrix = _matrix(4)
    z = torch.randn(3, 150, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cache, seen = GramCache(), []

    def stop(run) -> bool:  # checks at 4, 8, 12 steps share one cache (only new rows are multiplied)
        seen.append((union_ritz(run, 5, cache=cache), union_ritz(run, 5)))
        return run.alphas.shape[1] >= 12

    run = lanczos(DenseOperator(matrix), z, 40, keep_basis=True, stop=stop, check_every=4)
    assert len(seen) == 3
    for cached, fresh in seen:
        np.testing.assert_allclose(cached.nodes, fresh.nodes, rtol=0, atol=1e-12)
        np.testing.assert_allclose(cached.residuals, fresh.residuals, rtol=0, atol=1e-10)
    union = seen[-1][0]
    u = (union.span.mix.T @ torch.cat(union.span.blocks())).double()
    theta, s = np.linalg.eigh((u @ matrix @ u.T).numpy())
    y = torch.from_numpy(s).T @ u
    brute = (y @ matrix - torch.from_numpy(theta)[:, None] * y).norm(dim=1).numpy()
    np.testing.assert_allclose(union.nodes, theta, atol=1e-9)
    np.testing.assert_allclose(union.residuals, brute, rtol=1e-6, atol=1e-9)
    assert run.alphas.shape[1] == 12


def _w1_to(exact: np.ndarray, nodes: np.ndarray, weights: np.ndarray) -> float:
    from wdbound.stats import wasserstein1

    return wasserstein1(nodes, weights, exact, np.ones_like(exact))


def test_converged_ritz_pairs_become_exact_atoms_and_cut_the_density_error():
    """Outliers over a bulk (the shape of a network Hessian), 4 Rademacher probes x 10 steps, 40 seeds:
    each converged pair gets exactly its mass 1/d, the rows still sum to 1, the per-probe estimate of tr H
    keeps its mean (unbiased up to the ratio estimator's O(1/d)), and W1 to the exact spectrum falls: the
    random weights (z_pᵀy)²/d of the five outliers, relative spread sqrt(2/4) ~ 0.7, are what moved the
    density most. The median over seeds must at least halve (measured: 2.3x; 4 or 5 atoms in every seed: an
    atom's residual must be <= 1e-3 x its own value, and the outlier 8 is not always there after 10 steps)."""
    dim = 400
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    values = np.concatenate([[60.0, 35.0, 20.0, 12.0, 8.0], rng.uniform(-0.5, 2.0, dim - 5)])
    matrix = torch.from_numpy(basis @ np.diag(values) @ basis.T)
    exact = np.sort(values)
    plain, deflated, traces = [], [], []
    for seed in range(40):
        z = torch.randint(0, 2, (4, dim), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
        run = lanczos(DenseOperator(matrix), z, 10, keep_basis=True)
        union = union_ritz(run, 5)
        norms_sq = run.norms**2
        weights, atoms = union.deflated_weights(norms_sq)
        assert atoms >= 4 and weights.shape == union.weights.shape
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(weights[:, union.atoms()], 1.0 / norms_sq[:, None].repeat(atoms, 1), rtol=1e-12)
        plain.append(_w1_to(exact, union.nodes, union.weights.mean(0)))
        deflated.append(_w1_to(exact, union.nodes, weights.mean(0)))
        traces.append(float(np.mean(norms_sq * (weights @ union.nodes))))
    assert np.median(deflated) < 0.5 * np.median(plain)
    # tr H = 130.x: the mean of 40 seeds' estimates within 4 standard errors of it
    assert abs(np.mean(traces) - values.sum()) < 4 * np.std(traces) / np.sqrt(40)


def test_atoms_are_dropped_when_the_starts_lie_in_the_converged_space():
    """Three eigenvalues, each 10 times: the union finds 3 of each, every probe's start lies in those 9
    directions, and 9 atoms of mass 1/30 would undercount them; the Gauss-type weights (exact here) stay."""
    matrix = torch.diag(torch.tensor([5.0] * 10 + [2.0] * 10 + [-1.0] * 10, dtype=torch.float64))
    z = torch.randn(3, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    run = lanczos(DenseOperator(matrix), z, 12, keep_basis=True)
    union = union_ritz(run, 5)
    assert union.atoms().sum() == 9
    weights, atoms = union.deflated_weights(run.norms**2)
    assert atoms == 0 and np.array_equal(weights, union.weights)


def _brute_leave_one_out(matrix: torch.Tensor, run, probe: int) -> float:
    """tr(Q H Qᵀ) + zᵀ(I - QᵀQ) H (I - QᵀQ) z with Q an explicit orthonormal basis of the other probes' spaces."""
    z = run.starts[probe]
    if len(run.lengths) == 1:
        return float(z @ matrix @ z)
    others = torch.cat([run.basis[q, :int(run.lengths[q])] for q in range(len(run.lengths)) if q != probe])
    u, sv, _ = torch.linalg.svd(others.T, full_matrices=False)
    q = u[:, sv**2 > RANK_TOL * sv.max() ** 2].T  # [r, d]: the directions union_ritz keeps (Gram eigenvalues)
    pz = z - q.T @ (q @ z)
    return float(torch.trace(q @ matrix @ q.T) + pz @ matrix @ pz)


@pytest.mark.parametrize("probes", [1, 2, 4])
def test_leave_one_out_trace_samples_match_brute_force(probes):
    """Each probe's trace sample, computed from the Gram and projected matrices only, equals the explicit
    formula with the other probes' union orthonormalised by an SVD (one probe: plain Hutchinson zᵀHz)."""
    matrix = _matrix(5)
    z = torch.randint(0, 2, (probes, 150), generator=torch.Generator().manual_seed(5)).double() * 2 - 1
    run = lanczos(DenseOperator(matrix), z, 7, keep_basis=True)
    union = union_ritz(run, 3)
    brute = [_brute_leave_one_out(matrix, run, p) for p in range(probes)]
    np.testing.assert_allclose(union.trace_samples(), brute, rtol=1e-9, atol=1e-9)
    if probes == 1:
        assert union.trace_samples()[0] == pytest.approx(float(z[0] @ matrix @ z[0]), rel=1e-10)


def test_leave_one_out_trace_samples_are_unbiased_and_deflated():
    """Over 300 seeds of 4 Rademacher probes x 5 steps the mean sample is tr H within 4 standard errors, and
    the samples spread far less than plain Hutchinson's (the outliers are deflated): the variance drops by
    over 10x on this spectrum of five outliers over a bulk."""
    matrix = _matrix(6)
    exact = float(torch.trace(matrix))
    loo, plain = [], []
    for seed in range(300):
        z = torch.randint(0, 2, (4, 150), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
        union = union_ritz(lanczos(DenseOperator(matrix), z, 5, keep_basis=True), 3)
        loo.extend(union.trace_samples())
        plain.extend((z @ matrix * z).sum(1).tolist())
    loo, plain = np.asarray(loo), np.asarray(plain)
    means = loo.reshape(300, 4).mean(1)  # one seed's samples share their probes: independent across seeds only
    stderr = means.std(ddof=1) / np.sqrt(len(means))
    assert abs(loo.mean() - exact) <= 4 * stderr
    assert loo.var() * 10 < plain.var()


def test_one_read_products_are_the_brute_force_gram_and_cross_products(monkeypatch):
    """GramCache.products: V Vᵀ and V Rᵀ of a growing run (checks every 3 steps, several column slices, the
    last one short), against the dense products of the same rows."""
    from wdbound.estimators import union_ritz as module

    monkeypatch.setattr(module, "PRODUCT_COLUMNS", 64)  # d = 150: three slices
    matrix = _matrix(5)
    z = torch.randn(3, 150, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    cache, checked = module.GramCache(), []

    def stop(run) -> bool:
        width = max(int(n) for n in run.lengths)
        basis = run.basis[:, :width]
        gram, cross = cache.products(basis, run.residuals)
        flat = basis.reshape(-1, 150)
        np.testing.assert_allclose(gram, (flat @ flat.T).numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(cross, (flat @ run.residuals.T).numpy(), rtol=0, atol=1e-12)
        checked.append(width)
        return width >= 9

    lanczos(DenseOperator(matrix), z, 30, keep_basis=True, stop=stop, check_every=3)
    assert checked == [3, 6, 9]
