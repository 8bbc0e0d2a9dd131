"""estimators/krylov_trace.py: the deflated Hutchinson trace against exact traces of dense matrices."""

import math

import numpy as np
import pytest
import torch

from wdbound.curvature import DenseOperator
from wdbound.estimators import KrylovSpan, hutchinson, krylov_deflated_trace, top_eigenvalues


def _matrix(seed, dim=200):
    """A Hessian-like spectrum: a few large eigenvalues, a decaying bulk, some negatives."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    values = np.concatenate([[80.0, 30.0, 15.0, 12.0, 11.0], np.geomspace(5.0, 1e-4, dim - 10),
                             -np.geomspace(0.05, 1e-3, 5)])
    return torch.from_numpy(basis @ np.diag(values) @ basis.T), float(values.sum())


@pytest.mark.parametrize("seed", range(4))
def test_unbiased_within_its_standard_error_and_far_tighter_than_hutchinson(seed):
    matrix, exact = _matrix(seed)
    operator = DenseOperator(matrix)
    top = top_eigenvalues(operator, 5, torch.Generator().manual_seed(seed))
    errors, ratios = [], []
    for rep in range(10):
        est = krylov_deflated_trace(operator, top.span, 16, torch.Generator().manual_seed(100 * seed + rep))
        plain, _ = hutchinson(operator, 16, torch.Generator().manual_seed(100 * seed + rep))
        errors.append((est.estimate - exact) / est.stderr)
        ratios.append(est.stderr / plain.stderr)
        assert est.samples.shape == (16,) and est.estimate == pytest.approx(float(np.mean(est.samples)))
    # 40 estimates in all: each within 4 standard errors (a Gaussian error exceeds that 1 time in 15,000),
    # and the errors in standard-error units are centred (an unbiased estimator).
    assert max(abs(e) for e in errors) < 4 and abs(np.mean(errors)) < 4 / np.sqrt(10)
    # Deflating the top Krylov space removes most of the variance on this spectrum.
    assert np.median(ratios) < 0.5


def test_span_trace_is_the_projected_trace_and_rtol_decides_the_probes():
    matrix, exact = _matrix(7)
    operator = DenseOperator(matrix)
    top = top_eigenvalues(operator, 3, torch.Generator().manual_seed(0))
    basis = top.span.basis
    np.testing.assert_allclose(basis @ basis.T, np.eye(len(basis)), atol=1e-10)  # orthonormal rows
    assert top.span.trace == pytest.approx(float(torch.trace(basis @ matrix @ basis.T)), rel=1e-10)
    one_block = krylov_deflated_trace(operator, top.span, 4, torch.Generator().manual_seed(1), rtol=0.5)
    assert len(one_block.samples) == 4
    capped = krylov_deflated_trace(operator, top.span, 4, torch.Generator().manual_seed(1), rtol=1e-9,
                                   max_probes=12)
    assert len(capped.samples) == 12
    with pytest.raises(ValueError):
        krylov_deflated_trace(operator, top.span, 1, torch.Generator())


def test_thick_restart_span_is_usable():
    matrix, exact = _matrix(3)
    operator = DenseOperator(matrix)
    top = top_eigenvalues(operator, 5, torch.Generator().manual_seed(0), restart=12)
    assert isinstance(top.span, KrylovSpan) and len(top.span.basis) <= 12
    basis = top.span.basis
    assert top.span.trace == pytest.approx(float(torch.trace(basis @ matrix @ basis.T)), rel=1e-8)
    est = krylov_deflated_trace(operator, top.span, 32, torch.Generator().manual_seed(5))
    assert abs(est.estimate - exact) < 4 * est.stderr


def test_a_span_of_the_whole_space_is_exact_without_probes():
    matrix, exact = _matrix(1, dim=12)
    operator = DenseOperator(matrix)
    basis = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0].T
    span = KrylovSpan(basis, float(torch.trace(basis @ matrix @ basis.T)))
    est = krylov_deflated_trace(operator, span, 4, torch.Generator().manual_seed(0))
    assert operator.matvecs == 0 and est.stderr == 0.0
    assert est.estimate == pytest.approx(exact, rel=1e-12)


def test_prior_samples_are_pooled_and_count_toward_the_first_block():
    """Samples in hand (the SLQ probes' leave-one-out ones) join the fresh ones: the estimate is the mean of
    all, the first block draws only what the prior leaves missing (at least 2 fresh), and the cap counts both."""
    matrix, exact = _matrix(3)
    operator = DenseOperator(matrix)
    top = top_eigenvalues(operator, 5, torch.Generator().manual_seed(3))
    prior = np.full(5, exact)
    before = operator.matvecs
    est = krylov_deflated_trace(operator, top.span, 8, torch.Generator().manual_seed(0), prior=prior)
    assert operator.matvecs - before == 3 and est.samples.shape == (8,)
    np.testing.assert_allclose(est.samples[:5], prior)
    assert est.estimate == pytest.approx(float(np.mean(est.samples)))
    fresh = krylov_deflated_trace(operator, top.span, 3, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(est.samples[5:], fresh.samples)  # the same fresh probes, after the prior
    before = operator.matvecs
    many = krylov_deflated_trace(operator, top.span, 4, torch.Generator().manual_seed(0), prior=np.full(9, exact),
                                 rtol=1e-12, max_probes=12)
    assert operator.matvecs - before == 3 and many.samples.shape == (12,)  # 2 fresh at least, then up to the cap


@pytest.mark.parametrize("mixed", [False, True])
def test_float32_rows_are_projected_in_float32_against_the_float64_basis(monkeypatch, mixed):
    """The cast path (float32 probes, float64 basis, a few columns cast at a time) removes the span as the
    float64 projection does, to float32 rounding, with or without a mixing matrix (a union span)."""
    from wdbound.estimators import krylov_trace

    monkeypatch.setattr(krylov_trace, "CAST_COLUMNS", 7)  # several slices, the last one short (d = 50)
    gen = torch.Generator().manual_seed(3)
    q = torch.linalg.qr(torch.randn(50, 6, generator=gen, dtype=torch.float64))[0].T  # 6 orthonormal rows
    if mixed:  # two blocks of 3 rows that are not orthonormal together; U = mixᵀ basis is
        basis = torch.stack([q[:3], q[2:5] + 0.5 * q[:3]])
        flat = basis.reshape(6, 50)
        g, vectors = torch.linalg.eigh(flat @ flat.T)
        keep = g > 1e-10 * g.max()
        span = KrylovSpan(basis, 0.0, mix=vectors[:, keep] / g[keep].sqrt())
        rank = 5
    else:
        span, rank = KrylovSpan(q, 0.0), 6
    rows = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    expected = span.project_out(rows)
    got = span.project_out(rows.float())
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, atol=1e-5 * float(rows.abs().max()))
    assert span.rank == rank
    in_span = got.double() @ (q[:5] if mixed else q).T  # what is left along the span: float32 rounding
    assert float(in_span.abs().max()) < 1e-5 * float(rows.norm(dim=1).max())


def _spans(matrix):
    """The three spans that keep their Lanczos relation: the union of three probes' runs, one run of 15 steps,
    and a thick-restart run (8 vectors kept) that restarted before it stopped."""
    from wdbound.estimators.lanczos import lanczos
    from wdbound.estimators.union_ritz import union_ritz

    operator = DenseOperator(matrix)
    starts = torch.randn(3, matrix.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return {"union": union_ritz(lanczos(operator, starts, 10, keep_basis=True), 3).span,
            "single": top_eigenvalues(operator, 2, torch.Generator().manual_seed(1), min_steps=15,
                                      max_steps=15).span,
            "restarted": top_eigenvalues(operator, 2, torch.Generator().manual_seed(1), min_steps=8,
                                         max_steps=40, restart=8).span}


@pytest.mark.parametrize("kind", ["union", "single", "restarted"])
def test_the_lanczos_relation_gives_each_probes_deflated_quadratic_form_without_projecting_it(kind, monkeypatch):
    """gᵀPHPg from Hg of the unprojected probe, its coefficients along the span and the residuals (one read of
    the basis) equals the brute-force form of the explicitly projected probe: to float64 rounding, and to
    float32 rounding for float32 probes (the cast path, a few columns at a time)."""
    from wdbound.estimators import krylov_trace

    monkeypatch.setattr(krylov_trace, "CAST_COLUMNS", 37)  # several slices, the last one short (d = 200)
    matrix, _ = _matrix(11)
    span = _spans(matrix)[kind]
    assert span.relation is not None
    g = torch.randn(6, 200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u = (span.mix.T @ torch.cat(span.blocks())) if span.mix is not None else span.basis  # orthonormal rows
    pg = g - (g @ u.T) @ u
    brute = ((pg @ matrix) * pg).sum(1).numpy()
    scale = float(np.abs(brute).max())
    got = span.deflated_quadratic(g, g @ matrix, span.coefficients(g, span.relation.residuals))
    np.testing.assert_allclose(got, brute, rtol=0, atol=1e-11 * scale)
    g32, matrix32 = g.float(), matrix.float()
    got32 = span.deflated_quadratic(g32, g32 @ matrix32, span.coefficients(g32, span.relation.residuals))
    np.testing.assert_allclose(got32, brute, rtol=0, atol=1e-5 * scale)


def test_the_deflated_trace_is_the_same_estimate_with_or_without_the_relation():
    """Same seed, same probes: the one-read path (the span's relation) and the projection path give the same
    samples to float64 rounding."""
    from dataclasses import replace

    matrix, exact = _matrix(12)
    operator = DenseOperator(matrix)
    span = _spans(matrix)["union"]
    with_relation = krylov_deflated_trace(operator, span, 8, torch.Generator().manual_seed(9), rtol=0.01)
    projected = krylov_deflated_trace(operator, replace(span, relation=None), 8, torch.Generator().manual_seed(9),
                                      rtol=0.01)
    assert len(with_relation.samples) == len(projected.samples) > 8
    np.testing.assert_allclose(with_relation.samples, projected.samples, rtol=1e-11)
    assert abs(with_relation.estimate - exact) < 4 * with_relation.stderr


def test_each_further_block_at_most_triples_the_samples_then_the_cap_stops_it(monkeypatch):
    """A target out of reach: the samples grow 4 -> 12 -> 36 (each block at most twice the samples in hand,
    however many the standard error says are missing), then the cap ends the run at 40; a reachable target
    stops as soon as the standard error meets it, the count at most tripling per block."""
    from wdbound.estimators import krylov_trace

    matrix, _ = _matrix(3)
    operator = DenseOperator(matrix)
    top = top_eigenvalues(operator, 3, torch.Generator().manual_seed(0))
    seen = []
    real = krylov_trace.next_block
    monkeypatch.setattr(krylov_trace, "next_block", lambda drawn, *a: seen.append(drawn) or real(drawn, *a))
    est = krylov_deflated_trace(operator, top.span, 4, torch.Generator().manual_seed(2), rtol=1e-12, max_probes=40)
    assert seen == [4, 12, 36] and len(est.samples) == 40
    assert [real(n, 1e3, 1.0) for n in (4, 8, 16)] == [8, 16, 32]  # a million times the count: capped at 2n
    assert real(40, 1.05, 1.0) == max(2, math.ceil(1.3 * 40 * 1.05 ** 2) - 40)  # near the target: the margin
    seen.clear()
    reached = krylov_deflated_trace(operator, top.span, 4, torch.Generator().manual_seed(2), rtol=0.2,
                                    max_probes=400)
    assert reached.stderr <= 0.2 * abs(reached.estimate)
    counts = seen + [len(reached.samples)]
    assert all(later <= 3 * earlier for earlier, later in zip(counts, counts[1:]))
