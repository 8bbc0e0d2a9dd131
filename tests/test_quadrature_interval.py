"""The SLQ intervals against exact values on dense matrices whose spectrum is as hard as a trained net's:
a cluster just above zero, a few tiny negative eigenvalues, exact zeros and a long tail up to lambda_max."""

import numpy as np
import pytest
import torch

from wdbound.bounds import (BoundInputs, corollary3_exact, corollary3_from_slq, corollary3_integrand,
                            logdet_integrand, ratio_integrand, x_equals_one, x_of_sigma)
from wdbound.curvature import DenseOperator
from wdbound.estimators.hutchinson import rademacher
from wdbound.estimators.lanczos import lanczos, slq_from_run, spectral_support
from wdbound.estimators.quadrature_interval import (Interval, PiecewiseMonotone, probe_brackets,
                                                    radau_distribution_bounds)

P = BoundInputs(d=400, n=1437, b=64, eta=1e-4, lam=5e-2, rho=0.125, sigma_floor=1e-6)


def hard_matrix(d=400, seed=0):
    """Eigenvalues: 10% in (1e-8, 1e-6) (below the floor), 40% in (1e-6, 1e-2), 5% tiny negatives,
    the rest log-spread up to 80, in a random eigenbasis."""
    rng = np.random.default_rng(seed)
    parts = [10 ** rng.uniform(-8, -6, d // 10), 10 ** rng.uniform(-6, -2, 4 * d // 10),
             -(10 ** rng.uniform(-5, -3, d // 20))]
    rest = d - sum(len(p) for p in parts)
    ev = np.concatenate(parts + [10 ** rng.uniform(-2, np.log10(80), rest)])
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return torch.from_numpy((q * ev) @ q.T), ev


def test_extremes_match_a_dense_grid():
    f = corollary3_integrand("l2-adam", P)
    rng = np.random.default_rng(1)
    low = -(10 ** rng.uniform(-8, 0, 200)) * (rng.random(200) < 0.3)
    high = low + 10 ** rng.uniform(-8, 1, 200)
    fmin, fmax = f.extremes(low, high)
    for lo, hi, a, b in zip(low, high, fmin, fmax):
        grid = np.concatenate([np.linspace(lo, hi, 2001), np.geomspace(1e-9, max(hi, 2e-9), 2001)])
        grid = grid[(grid >= lo) & (grid <= hi)]
        values = f(grid)
        assert a <= values.min() + 1e-12 and b >= values.max() - 1e-12
        assert a >= values.min() - 1e-6 * abs(values.min()) or lo <= 0 <= hi  # attained, not just a bound


def test_x_equals_one_closed_form():
    p = BoundInputs(d=1, n=10, b=1, eta=1.0, lam=0.01, rho=0.5)  # c = 1
    (s,) = x_equals_one("adamw", p)
    assert x_of_sigma(np.array([s]), "adamw", p)[0] == pytest.approx(1.0)
    roots = x_equals_one("l2-adam", BoundInputs(d=1, n=10, b=1, eta=1.0, lam=0.1, rho=0.5))
    assert len(roots) == 2
    for s in roots:
        assert x_of_sigma(np.array([s]), "l2-adam", BoundInputs(d=1, n=10, b=1, eta=1.0, lam=0.1, rho=0.5))[0] == \
            pytest.approx(1.0)
    assert x_equals_one("adamw", P) == []  # x >> 1 everywhere at the zoo's settings


@pytest.mark.parametrize("steps", [5, 20, 60])
def test_every_probe_bracket_contains_its_exact_quadratic_form(steps):
    matrix, ev = hard_matrix()
    op = DenseOperator(matrix)
    z = rademacher(8, 400, torch.Generator().manual_seed(steps), torch.float64)
    run = slq_from_run(lanczos(op, z, steps), 400)
    support = (float(ev.min()), float(ev.max()))
    values, vectors = np.linalg.eigh(matrix.numpy())
    coeff = (z.numpy() @ vectors) ** 2  # [k, d]: (v_i . z)^2
    for f in (corollary3_integrand("adamw", P), corollary3_integrand("l2-adam", P), logdet_integrand(P.lam, 1e-6),
              ratio_integrand(P.lam, 1e-6)):
        lower, upper = probe_brackets(run, f, support)
        exact = coeff @ f(values)
        gauss = run.quadrature(f)
        slack = 1e-9 * np.abs(exact).max()
        assert np.all(lower <= exact + slack) and np.all(exact <= upper + slack)
        assert np.all(lower <= gauss + slack) and np.all(gauss <= upper + slack)


def test_bracket_narrows_with_steps_and_is_a_point_after_breakdown():
    matrix, ev = hard_matrix()
    op = DenseOperator(matrix)
    f = corollary3_integrand("l2-adam", P)
    z = rademacher(4, 400, torch.Generator().manual_seed(0), torch.float64)
    widths = []
    for steps in (10, 40, 160):
        lower, upper = probe_brackets(slq_from_run(lanczos(op, z, steps), 400), f, (ev.min(), ev.max()))
        widths.append(float(np.mean(upper - lower)))
    assert widths[0] > widths[1] > widths[2]
    small = DenseOperator(torch.diag(torch.tensor([0.0, 1e-7, 1e-7, 2.0, 5.0], dtype=torch.float64)))
    run = slq_from_run(lanczos(small, torch.ones(2, 5, dtype=torch.float64), 5), 5)
    assert run.complete.all()
    lower, upper = probe_brackets(run, f, (0.0, 5.0))
    assert np.array_equal(lower, upper)


def _dense_radau(alphas, betas, n, t):
    """The n-point Gauss-Radau rule with a node at t, from a dense eigendecomposition (Golub's modification)."""
    a, b = alphas[:n].copy(), betas[:n - 1]
    inner = np.diag(a[:n - 1] - t) + np.diag(b[:n - 2], 1) + np.diag(b[:n - 2], -1)
    a[n - 1] = t + b[n - 2] ** 2 * np.linalg.inv(inner)[-1, -1]
    theta, vectors = np.linalg.eigh(np.diag(a) + np.diag(b, 1) + np.diag(b, -1))
    return theta, vectors[0] ** 2


@pytest.mark.parametrize("steps", [6, 25, 80])
def test_radau_distribution_bounds_hold_for_the_exact_measure_and_match_a_dense_rule(steps):
    """The Chebyshev-Markov-Stieltjes bounds at points between the Gauss nodes, against the probe's exact spectral
    measure (from the dense eigenvectors), at points near zero (both signs) and across the spectrum."""
    matrix, ev = hard_matrix(seed=steps)
    values, vectors = np.linalg.eigh(matrix.numpy())
    z = rademacher(2, 400, torch.Generator().manual_seed(steps), torch.float64)
    run = slq_from_run(lanczos(DenseOperator(matrix), z, steps), 400)
    rng = np.random.default_rng(steps)
    points = np.concatenate([np.geomspace(1e-9, 80, 40), -np.geomspace(1e-9, 1e-2, 20), rng.uniform(-1e-3, 80, 20)])
    checked = 0
    for p in range(2):
        mass = (z[p].numpy() @ vectors) ** 2 / float(z[p] @ z[p])
        for t in points:
            bounds = radau_distribution_bounds(run.alphas[p], run.betas[p], steps, t, run.nodes[p])
            if bounds is None:
                continue
            below, up_to = bounds
            assert below <= mass[values < t].sum() + 1e-12 and mass[values <= t].sum() <= up_to + 1e-12
            theta, weights = _dense_radau(run.alphas[p], run.betas[p], steps, t)
            k = int(np.argmin(np.abs(theta - t)))
            assert below == pytest.approx(weights[:k].sum(), abs=1e-10)
            assert up_to == pytest.approx(weights[:k + 1].sum(), abs=1e-10)
            checked += 1
    assert checked >= 100


def test_radau_points_narrow_the_bracket_and_stay_inside_the_gauss_bracket():
    """Refined brackets: inside the Gauss-node bracket (points=0, which is Σ w_k [min, max] of f over the cells
    [θ_{k-1}, θ_{k+1}]), still containing the exact quadratic form, and narrower."""
    matrix, ev = hard_matrix(seed=7)
    values, vectors = np.linalg.eigh(matrix.numpy())
    z = rademacher(4, 400, torch.Generator().manual_seed(7), torch.float64)
    run = slq_from_run(lanczos(DenseOperator(matrix), z, 60), 400)
    support = (float(ev.min()), float(ev.max()))
    coeff = (z.numpy() @ vectors) ** 2
    for f in (corollary3_integrand("adamw", P), corollary3_integrand("l2-adam", P), logdet_integrand(P.lam, 1e-6)):
        gauss_low, gauss_high = probe_brackets(run, f, support, points=0)
        cells = []
        for p, (w, t) in enumerate(zip(run.weights, run.nodes)):
            left = np.concatenate([[support[0]], t[:-1]])
            right = np.concatenate([t[1:], [support[1]]])
            fmin, fmax = f.extremes(left, right)
            cells.append((run.norms_sq[p] * np.sum(w * fmin), run.norms_sq[p] * np.sum(w * fmax)))
        np.testing.assert_allclose(np.array(cells), np.stack([gauss_low, gauss_high], 1), rtol=1e-12)
        low, high = probe_brackets(run, f, support)
        exact = coeff @ f(values)
        slack = 1e-9 * np.abs(exact).max()
        assert np.all(gauss_low <= low + slack) and np.all(high <= gauss_high + slack)
        assert np.all(low <= exact + slack) and np.all(exact <= high + slack)
        assert np.mean(high - low) < 0.95 * np.mean(gauss_high - gauss_low)


@pytest.mark.parametrize("seed", range(4))
def test_corollary3_interval_covers_the_exact_err(seed):
    matrix, ev = hard_matrix(seed=seed)
    op = DenseOperator(matrix)
    generator = torch.Generator().manual_seed(seed)
    run = slq_from_run(lanczos(op, rademacher(12, 400, generator, torch.float64), 40), 400)
    support = spectral_support(op, generator)
    assert support.low <= ev.min() and support.high >= ev.max()
    for form in ("adamw", "l2-adam"):
        exact = corollary3_exact(ev, form, P).err_mean
        interval = corollary3_from_slq(run, form, P, support.bounds()).err_mean_interval
        assert interval.contains(exact), (form, interval, exact)


def test_interval_arithmetic():
    i = Interval(2.0, 1.0, 4.0)
    assert i.affine(-1.0, 1.0) == Interval(-1.0, -3.0, 0.0)
    assert i.relative_half_width() == pytest.approx(0.75) and Interval.point(3.0).relative_half_width() == 0.0
    assert i.to_json() == [1.0, 4.0] and i.contains(4.0) and not i.contains(4.1)


def test_piecewise_monotone_needs_its_breakpoints():
    # Without the breakpoint at 0 the max of t^2 on [-1, 1] would be found, but its min would not.
    f = PiecewiseMonotone(lambda t: t**2, breakpoints=(0.0,))
    fmin, fmax = f.extremes(np.array([-1.0]), np.array([1.0]))
    assert fmin[0] == 0.0 and fmax[0] == 1.0


@pytest.mark.parametrize("form", ["adamw", "l2-adam"])
def test_probe_variance_bound_is_above_the_exact_rademacher_variance(form):
    """Var(zᵀf(H)z) = 2 Σ_{i≠j} f(H)_ij² for Rademacher z, computed from the dense f(H); the bound from one or two
    probes' quadrature must not fall below it (it bounds 2‖f(H) − cI‖_F² from above)."""
    from wdbound.estimators.quadrature_interval import probe_variance_bound

    matrix, ev = hard_matrix(d=300, seed=3)
    values, vectors = np.linalg.eigh(matrix.numpy())
    f = corollary3_integrand(form, P)
    dense = (vectors * f(values)) @ vectors.T
    exact_variance = 2 * (np.sum(dense**2) - np.sum(np.diag(dense) ** 2))
    op = DenseOperator(matrix)
    for seed in range(3):
        z = rademacher(2, 300, torch.Generator().manual_seed(seed), torch.float64)
        run = slq_from_run(lanczos(op, z, 60), 300)
        bound = probe_variance_bound(run, f, (float(ev.min()), float(ev.max())))
        assert exact_variance <= bound <= 20 * exact_variance, (exact_variance, bound)


def test_two_long_probes_cover_on_a_dense_operator_over_many_seeds():
    """The default shape (few probes, long runs): 2 probes, their stderr from the variance bound, on a spectrum
    like the zoo's (a random orthogonal basis, so Rademacher probes see a dense matrix). A 3-stderr interval around
    rigorous brackets: every one of 24 seeds x 2 forms must cover (the miss rate a normal 3-sigma allows is 0.3 %)."""
    from wdbound.synthetic import KnownSpectrumOperator

    _, ev = hard_matrix(d=1500, seed=7)
    p = BoundInputs(d=1500, n=1437, b=64, eta=1e-4, lam=5e-2, rho=0.125, sigma_floor=1e-6)
    op = KnownSpectrumOperator(ev, seed=1)
    support = (float(ev.min()), float(ev.max()))
    widths = {"adamw": [], "l2-adam": []}
    for seed in range(24):
        z = rademacher(2, 1500, torch.Generator().manual_seed(seed), torch.float64)
        run = slq_from_run(lanczos(op, z, 120), 1500)
        for form in widths:
            exact = corollary3_exact(ev, form, p).err_mean
            interval = corollary3_from_slq(run, form, p, support, shift_directions=0).err_mean_interval
            assert interval.contains(exact), (seed, form, interval, exact)
            widths[form].append(interval.relative_half_width())
    # the probe part is bounded, not measured: it must not swamp the interval
    assert np.median(widths["adamw"]) < 0.10 and np.median(widths["l2-adam"]) < 0.20


def test_a_probe_spanning_the_deflated_space_gives_the_exact_err():
    """Lanczos run to the dimension of the deflated space: its Ritz values are every eigenvalue, so err/d is
    exact (to the HVPs' precision) whatever the probe, with no probe error; 50 exactly-zero rows deflated."""
    from wdbound.estimators.lanczos import hvp_precision

    matrix, ev = hard_matrix(d=400, seed=3)
    big = torch.zeros(450, 450, dtype=torch.float64)
    keep = torch.ones(450, dtype=torch.bool)
    keep[torch.randperm(450, generator=torch.Generator().manual_seed(0))[:50]] = False
    big[keep[:, None] & keep[None, :]] = matrix.reshape(-1)
    op = DenseOperator(big)
    everything = np.concatenate([ev, np.zeros(50)])
    p = BoundInputs(d=450, n=1437, b=64, eta=1e-4, lam=5e-2, rho=0.125, sigma_floor=1e-6)
    support = (float(ev.min()), float(ev.max()))
    for seed in range(3):
        z = rademacher(1, 450, torch.Generator().manual_seed(seed), torch.float64) * keep
        run = slq_from_run(lanczos(op, z, 450), 450, null_weight=50.0, space_dim=400, precision=hvp_precision(op))
        assert run.spanning_probe() == 0 and int(run.lengths[0]) == 400
        np.testing.assert_allclose(np.sort(run.spanned_eigenvalues()), np.sort(ev), rtol=0, atol=1e-10)
        for form in ("adamw", "l2-adam"):
            exact = corollary3_exact(everything, form, p)
            cor = corollary3_from_slq(run, form, p, support, shift_directions=0)
            interval = cor.err_mean_interval
            assert interval.contains(exact.err_mean), (seed, form, interval, exact.err_mean)
            assert abs(cor.err_mean - exact.err_mean) <= 1e-10 * exact.err_mean
            assert interval.relative_half_width() < 1e-6 and cor.err_mean_stderr == 0.0
            assert cor.mass_below_floor == pytest.approx(exact.mass_below_floor, abs=1e-12)


def test_a_probe_short_of_the_space_or_broken_down_early_is_not_spanning():
    """Fewer steps than the space's dimension, a repeated eigenvalue (the Krylov space breaks down early), or
    probes that are not isotropic (no ``space_dim``): the probe part of the interval stays."""
    matrix, ev = hard_matrix(d=200, seed=1)
    op = DenseOperator(matrix)
    z = rademacher(1, 200, torch.Generator().manual_seed(0), torch.float64)
    assert slq_from_run(lanczos(op, z, 150), 200, space_dim=200).spanning_probe() is None
    assert slq_from_run(lanczos(op, z, 200), 200).spanning_probe() is None
    spanning = slq_from_run(lanczos(op, z, 200), 200, space_dim=200)
    assert spanning.spanning_probe() == 0 and spanning.truncated(100).spanning_probe() is None
    repeated = DenseOperator(torch.diag(torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64)))
    run = slq_from_run(lanczos(repeated, torch.ones(1, 4, dtype=torch.float64), 4), 4, space_dim=4)
    assert int(run.lengths[0]) == 3 and run.spanning_probe() is None


@pytest.mark.parametrize("rows", ["top eigenvectors", "unconverged ritz", "random"])
def test_top_ritz_deflation_bound_holds_for_any_orthonormal_rows(rows):
    """tr f(H) = tr f(H_⊥) + Σ f(θ_i) + δ with |δ| <= atom_slack for the compression H_⊥ of H to the complement
    of k orthonormal rows and θ the eigenvalues of their own compression: checked with every eigenvalue computed
    densely, for rows that are eigenvectors, the Ritz vectors of a short Lanczos run, and random rows (the bound
    must not lean on convergence)."""
    from wdbound.estimators.lanczos import SLQ
    from wdbound.estimators.quadrature_interval import atom_slack

    d, k = 300, 12
    matrix, ev = hard_matrix(d=d, seed=5)
    rng = np.random.default_rng(0)
    if rows == "top eigenvectors":
        v = torch.linalg.eigh(matrix).eigenvectors[:, -k:].T
    elif rows == "unconverged ritz":
        run = lanczos(DenseOperator(matrix), torch.from_numpy(rng.standard_normal((1, d))), 15, keep_basis=True)
        basis = run.basis[0]
        v = torch.linalg.eigh(basis @ matrix @ basis.T).eigenvectors[:, -k:].T @ basis
    else:
        v = torch.linalg.qr(torch.from_numpy(rng.standard_normal((d, k))))[0].T
    w = torch.linalg.svd(torch.eye(d, dtype=torch.float64) - v.T @ v).U[:, : d - k]  # orthonormal basis of V⊥
    mu = torch.linalg.eigvalsh(w.T @ matrix @ w).numpy()
    theta = torch.linalg.eigvalsh(v @ matrix @ v.T).numpy()
    run = SLQ.from_tridiagonals(np.array([[1.0]]), np.zeros((1, 0)), np.array([1]), np.array([1.0]), d,
                                atoms=theta, atom_rounding=np.full(k, 1e-12))
    support = (float(ev.min()), float(ev.max()))
    for form in ("adamw", "l2-adam"):
        f = corollary3_integrand(form, P)
        gap = abs(float(np.sum(f(ev))) - float(np.sum(f(mu))) - float(np.sum(f(theta))))
        slack = atom_slack(run, f, support)
        assert gap <= slack, (rows, form, gap, slack)
        assert slack <= 2 * (k + 1) * f.variation(*support)  # the k/d share the docstring promises


@pytest.mark.parametrize("seed", range(4))
def test_three_term_run_with_top_ritz_vectors_projected_off_covers(seed):
    """The low-memory density run as ``wdbound`` makes it: a thick-restart top-k run, its kept Ritz vectors
    projected off the probes and products, a three-term run on the rest, the Ritz values back as atoms. On a
    heavy-tailed spectrum behind a random rotation, both forms' err/d intervals cover the exact values."""
    from wdbound.curvature import ProjectedOperator
    from wdbound.estimators.lanczos import RitzDeflation, hvp_precision, lanczos_blocks, top_eigenvalues
    from wdbound.synthetic import KnownSpectrumOperator, published_spectrum

    d = 3000
    ev = published_spectrum("resnet", d)
    op = KnownSpectrumOperator(ev, seed=seed)
    p = BoundInputs(d=d, n=1437, b=64, eta=1e-4, lam=5e-2, rho=0.125, sigma_floor=1e-6)
    generator = torch.Generator().manual_seed(seed)
    top = top_eigenvalues(op, 5, generator, restart=20)
    ritz = RitzDeflation.from_top(top, precision=hvp_precision(op))
    assert ritz.count == top.span.rank and np.allclose(ritz.vectors @ ritz.vectors.T, np.eye(ritz.count), atol=1e-12)
    np.testing.assert_allclose(ritz.values[:5], top.values, rtol=1e-9)
    assert RitzDeflation.from_top(top, max_count=ritz.count - 1) is None  # over the cap: nothing is built
    assert RitzDeflation.from_top(top, max_count=ritz.count).count == ritz.count

    def draw(count):
        return ritz.project(rademacher(count, d, generator, torch.float64))

    run = slq_from_run(lanczos_blocks(ProjectedOperator(op, ritz.project), draw, 2, 250, block=2), d, ritz=ritz)
    assert run.atom_count == ritz.count and run.space_dim == d - ritz.count
    support = spectral_support(op, torch.Generator().manual_seed(seed + 1), top).bounds()
    for form in ("adamw", "l2-adam"):
        exact = corollary3_exact(ev, form, p).err_mean
        cor = corollary3_from_slq(run, form, p, support, shift_directions=0)
        assert cor.err_mean_interval.contains(exact), (seed, form, cor.err_mean_interval, exact)
        assert abs(cor.err_mean - exact) <= 0.05 * exact


@pytest.mark.parametrize("seed", range(3))
def test_mass_below_floor_interval_covers_the_exact_count(seed):
    """The mass with |σ| <= floor, a count of exact eigenvalues over d, inside the SLQ interval: on a spectrum
    with 10 % below 1e-6 and 40 % in (1e-6, 1e-2) (floor 1e-6, where the Gauss nodes cannot place it), and with
    a floor of 1e-3 inside the near-zero cluster; 2 probes with the variance bound, as the defaults run."""
    from wdbound.bounds import mass_below_floor_interval
    from wdbound.synthetic import KnownSpectrumOperator

    _, ev = hard_matrix(d=1500, seed=seed)
    op = KnownSpectrumOperator(ev, seed=seed + 1)
    support = (float(ev.min()), float(ev.max()))
    z = rademacher(2, 1500, torch.Generator().manual_seed(seed), torch.float64)
    run = slq_from_run(lanczos(op, z, 120), 1500)
    for floor in (1e-6, 1e-3):
        exact = float(np.mean(np.abs(ev) <= floor))
        mass = mass_below_floor_interval(run, floor, support)
        assert mass.contains(exact), (floor, mass, exact)
        assert 0.0 <= mass.low <= mass.high <= 1.0 and mass.high - mass.low < 0.9
        gauss = float(np.mean([np.sum(w[np.abs(t) <= floor]) for w, t in zip(run.weights, run.nodes)]))
        assert mass.low <= gauss <= mass.high


def test_mass_below_floor_interval_is_the_count_for_a_spanning_probe():
    """A probe whose Krylov space is the whole deflated space knows every eigenvalue: the interval is the exact
    count (50 deflated zero rows included) with no width."""
    from wdbound.bounds import mass_below_floor_interval
    from wdbound.estimators.lanczos import hvp_precision

    matrix, ev = hard_matrix(d=300, seed=2)
    big = torch.zeros(350, 350, dtype=torch.float64)
    keep = torch.ones(350, dtype=torch.bool)
    keep[torch.randperm(350, generator=torch.Generator().manual_seed(0))[:50]] = False
    big[keep[:, None] & keep[None, :]] = matrix.reshape(-1)
    z = rademacher(1, 350, torch.Generator().manual_seed(1), torch.float64) * keep
    run = slq_from_run(lanczos(DenseOperator(big), z, 350), 350, null_weight=50.0, space_dim=300,
                       precision=hvp_precision(DenseOperator(big)))
    exact = (np.sum(np.abs(ev) <= 1e-6) + 50) / 350
    mass = mass_below_floor_interval(run, 1e-6, (float(ev.min()), float(ev.max())))
    assert mass.low == pytest.approx(exact, abs=1e-12) and mass.high == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_perturbed_interval_covers_the_exact_err_of_the_unperturbed_matrix(seed):
    """Products of H + E (||E|| = eps, a random symmetric E: an approximate HVP) give an interval for H's own
    tr f(H) once widened by Weyl (perturbed_interval); checked against the exact eigenvalues of H, for both
    Corollary 3 integrands, at eps 1e-6 and 1e-3 of ||H||. The unwidened interval of H + E brackets H + E's."""
    from wdbound.estimators.quadrature_interval import monotone_parts, perturbed_interval, trace_interval

    matrix, ev = hard_matrix(seed=seed)
    rng = np.random.default_rng(100 + seed)
    noise = rng.standard_normal((400, 400))
    noise = (noise + noise.T) / 2
    noise /= np.linalg.norm(noise, 2)
    for scale in (1e-6, 1e-3):
        eps = scale * float(np.abs(ev).max())
        perturbed = matrix + torch.from_numpy(eps * noise)
        ev_tilde = np.linalg.eigvalsh(perturbed.numpy())
        assert np.max(np.abs(np.sort(ev) - ev_tilde)) <= eps * (1 + 1e-9)  # Weyl, the premise
        z = rademacher(4, 400, torch.Generator().manual_seed(seed), torch.float64)
        run = slq_from_run(lanczos(DenseOperator(perturbed), z, 60), 400)
        support = (float(ev_tilde.min()), float(ev_tilde.max()))
        for form in ("adamw", "l2-adam"):
            f = corollary3_integrand(form, P)
            box = perturbed_interval(run, f, support, eps)
            assert box.low <= float(np.sum(f(ev))) <= box.high, (scale, form, box)
            own = trace_interval(run, f, support, shift_directions=0)
            assert own.low <= float(np.sum(f(ev_tilde))) <= own.high
            assert box.low <= own.low and own.high <= box.high
            parts = monotone_parts(f, support[0] - 1.0)  # f = f(o) + P - N exactly, P and N non-decreasing
            grid = np.linspace(support[0] - 0.5, support[1], 2001)
            assert np.allclose(f(np.array([support[0] - 1.0]))[0] + parts[0](grid) - parts[1](grid), f(grid),
                               rtol=1e-10, atol=1e-12)
            assert np.all(np.diff(parts[0](grid)) >= 0) and np.all(np.diff(parts[1](grid)) >= 0)


def test_perturbed_interval_keeps_the_exact_zero_rows_at_zero():
    # H with 6 exactly-zero rows; the products are those of H~ = H + E with E zero on those rows too (a finite
    # difference is exactly 0 there). The probe skips the zero rows and the run counts them as an exact atom:
    # the interval, shifted by eps on the live part only, covers tr f(H).
    from wdbound.estimators.quadrature_interval import perturbed_interval

    rng = np.random.default_rng(3)
    dim, dead = 40, np.array([0, 5, 9, 17, 23, 31])
    live = np.setdiff1d(np.arange(dim), dead)
    basis, _ = np.linalg.qr(rng.standard_normal((len(live), len(live))))
    block = basis @ np.diag(np.linspace(-0.5, 6.0, len(live))) @ basis.T
    H = np.zeros((dim, dim))
    H[np.ix_(live, live)] = block
    noise = rng.standard_normal((len(live), len(live)))
    noise = 1e-3 * (noise + noise.T) / np.linalg.norm(noise + noise.T, 2)  # ||E|| = 1e-3
    perturbed = H.copy()
    perturbed[np.ix_(live, live)] += noise
    start = torch.ones(1, dim, dtype=torch.float64)
    start[0, dead] = 0.0
    run = slq_from_run(lanczos(DenseOperator(torch.from_numpy(perturbed)), start, 12), dim, null_weight=len(dead))
    f = PiecewiseMonotone(lambda t: np.log1p(np.abs(t)), breakpoints=(0.0,))
    exact = float(np.sum(f(np.linalg.eigvalsh(H))))
    ends = np.linalg.eigvalsh(perturbed)
    box = perturbed_interval(run, f, (ends[0], ends[-1]), 1e-3)
    assert box.low <= exact <= box.high
    assert run.null_weight == len(dead) and box.low < box.estimate < box.high
