r"""Hutchinson's trace estimator deflated by a Krylov subspace the analysis has already built.

The top-eigenvalue Lanczos run leaves an orthonormal basis :math:`V \in \mathbb{R}^{d\times n}` of a
Krylov space that holds the dominant eigenvectors, and :math:`T = V^\top H V` (tridiagonal, or the
projected matrix of a thick-restart run). With :math:`P = I - VV^\top`,

.. math::
    \mathrm{tr}\,H = \mathrm{tr}\,T + \mathrm{tr}(PHP), \qquad
    \widehat{\mathrm{tr}}\,H = \mathrm{tr}\,T + \frac1r\sum_{j=1}^r g_j^\top PHP\, g_j ,

with Rademacher :math:`g_j` drawn independently of :math:`V`: unbiased, and the variance is Hutchinson's
for the deflated matrix, :math:`\frac{2}{r}\sum_{i\ne k}(PHP)_{ik}^2`, small when a few eigenvalues carry
the Hessian's Frobenius norm (they do in trained networks: Ghorbani et al. 2019). The first term costs no
HVP; each probe costs one. This is the Krylov-aware trace estimation of Chen & Hallman (SIAM J. Matrix
Anal. Appl. 44, 2023) with the Krylov space of the top-eigenvalue run as the deflation space, a
relative of Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021), whose sketch is a random block instead.

After a first block, probes are added until the standard error is at most ``rtol`` times the estimate, or
``max_probes`` are spent: the accuracy target decides the cost. Each further block is the count the
standard error so far says is missing (a sequential design after Stein 1945: n' = n (s/target)^2, 30 %
more, at least 2), but never more than twice the samples already in hand, so the count at most triples
per block. A standard error from the 8 samples of a first block is itself uncertain by about a quarter,
and the count it predicts is its square: jumping straight to that count overshot by 45 % on average where
the target needs 40 samples, and the count's spread was 3/4 of the need. Growing at most threefold, the
last block is sized by a standard error from at least a third of the final samples
(``benchmarks/trace_stopping.py``: fewer probes where the target needs 25 to 80, no larger chance of ending
above the target, less spread in the count; docs/decisions.md).

>>> import torch
>>> from wdbound.curvature import DenseOperator
>>> A = torch.diag(torch.tensor([100.0, 10.0, 1.0, 1.0, 1.0], dtype=torch.float64))
>>> V = torch.eye(5, dtype=torch.float64)[:2]  # the span of the two largest eigenvectors
>>> est = krylov_deflated_trace(DenseOperator(A), KrylovSpan(V, 110.0), 4, torch.Generator().manual_seed(0))
>>> round(est.estimate, 10), est.method  # the deflated rest is the identity: exact with any probe
(113.0, 'krylov-deflated hutchinson')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .hutchinson import TraceEstimate, rademacher, row_dots

CAST_COLUMNS = 2**14  # basis columns cast at a time for lower-precision rows (KrylovSpan.coefficients, project_out)


@dataclass(frozen=True)
class LanczosRelation:
    r"""The Lanczos relation of a span's rows ``V`` [N, d]: :math:`HV^\top = V^\top T + R^\top S^\top`, with
    ``tridiagonal`` T [N, N] (block diagonal for several runs, dense after a thick restart), ``residuals``
    R [k, d] the runs' last residuals (rows, in the basis's precision) and ``coupling`` S [N, k] placing each
    at its run's last row; ``projected`` is :math:`UHU^\top` [n, n] of the span's orthonormal
    :math:`U = C^\top V`. With it :math:`UHg = C^\top(T\,Vg + S\,Rg)` costs no HVP, so a probe's deflated
    quadratic form needs only the coefficients :math:`Vg` and :math:`Rg` (one read of the basis) and the
    product :math:`Hg` of the probe itself (:meth:`KrylovSpan.deflated_quadratic`)."""

    tridiagonal: np.ndarray
    residuals: torch.Tensor
    coupling: np.ndarray
    projected: np.ndarray


@dataclass(frozen=True)
class KrylovSpan:
    """An orthonormal basis ``U`` [n, d] (rows; float64, on the operator's device) and ``tr(UHUᵀ)``.

    With ``mix`` [N, n] the rows of ``basis`` [N, d] need not be orthonormal: ``U = mixᵀ basis`` is (the
    union of several Lanczos bases, :mod:`~wdbound.estimators.union_ritz`), and it is never formed. Such a
    ``basis`` may also be [k, m, d], k blocks of m rows read in place (the Lanczos run's own storage: no
    copy of the k·m·d floats); its rows are then the blocks' rows in order.

    ``projected`` [n, n] is ``UHUᵀ`` when the span is one Lanczos run's basis, and ``residual`` that run's last
    β: ``HUᵀ = UᵀT + β q e_nᵀ``, so the Ritz pair of eigenvector y of T has residual norm ``β |y_n|``
    (:class:`~wdbound.estimators.lanczos.RitzDeflation`); None otherwise. ``relation``: the Lanczos relation
    of the rows, when the span keeps it (:class:`LanczosRelation`; the deflated trace then reads the basis
    once per block of probes instead of twice).
    """

    basis: torch.Tensor
    trace: float
    mix: torch.Tensor | None = None
    projected: np.ndarray | None = None
    residual: float | None = None
    relation: LanczosRelation | None = None

    @property
    def rank(self) -> int:
        """The span's dimension n."""
        return int(self.mix.shape[1] if self.mix is not None else self.basis.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The basis's precision."""
        return self.basis.dtype

    def blocks(self) -> list[torch.Tensor]:
        """The basis rows as 2-D blocks (views)."""
        return list(self.basis) if self.basis.ndim == 3 else [self.basis]

    def project_out(self, vectors: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``P`` applied to rows ``vectors`` [k, d]: the components along the span removed (``inplace``: written
        into ``vectors``, no [k, d] temporary; on an 11 M-parameter model each one is the size of an HVP's
        memory traffic). Rows in another precision than the basis (float32 probes of a float32 HVP against
        the float64 Lanczos vectors) are projected in their own precision, the basis cast a slice of
        ``CAST_COLUMNS`` columns at a time: no copy of the whole basis, and float32 products (a float64 GEMM
        of this shape is compute-bound: 7 probes on ResNet-18's 11.2 M took 0.95 s, 0.40 s this way)."""
        out = vectors if inplace else vectors.clone()
        blocks = self.blocks()
        coefficients = self.coefficients(vectors)
        if self.mix is not None:
            mix = self.mix.to(coefficients.dtype)
            coefficients = (coefficients @ mix) @ mix.T
        if vectors.dtype != self.basis.dtype:
            coefficients = coefficients.to(vectors.dtype)
            for start, rows in self._cast_slices(blocks, out):
                out[:, start:start + rows.shape[1]].addmm_(coefficients, rows, alpha=-1.0)
            return out
        offset = 0
        for block in blocks:
            out.addmm_(coefficients[:, offset:offset + block.shape[0]], block, alpha=-1.0)
            offset += block.shape[0]
        return out

    def coefficients(self, vectors: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """``[V; extra] vectorsᵀ`` transposed: [k, N (+ e)] in the basis's precision, the rows of ``vectors``
        [k, d] against every basis row (``V``, before ``mix``) and the rows of ``extra`` [e, d], in one read of
        each. Rows in another precision are multiplied in theirs, the basis cast ``CAST_COLUMNS`` columns at a
        time, each slice's products summed in the basis's precision."""
        blocks = self.blocks() + ([extra] if extra is not None and extra.shape[0] else [])
        if vectors.dtype == self.basis.dtype:
            return torch.cat([vectors @ block.T for block in blocks], dim=1)
        total = vectors.new_zeros(vectors.shape[0], sum(block.shape[0] for block in blocks), dtype=self.basis.dtype)
        for start, rows in self._cast_slices(blocks, vectors):
            total += (vectors[:, start:start + rows.shape[1]] @ rows.T).to(total.dtype)
        return total

    @staticmethod
    def _cast_slices(blocks: list[torch.Tensor], like: torch.Tensor):
        """(start, the rows of ``blocks`` on columns [start, start + CAST_COLUMNS) cast to ``like``'s precision),
        slice after slice, into one buffer (each slice is overwritten by the next)."""
        dim = like.shape[1]
        buffer = torch.empty(sum(block.shape[0] for block in blocks), min(CAST_COLUMNS, dim), dtype=like.dtype,
                             device=like.device)
        for start in range(0, dim, CAST_COLUMNS):
            width = min(CAST_COLUMNS, dim - start)
            offset = 0
            for block in blocks:
                buffer[offset:offset + block.shape[0], :width].copy_(block[:, start:start + width])
                offset += block.shape[0]
            yield start, buffer[:, :width]

    def deflated_quadratic(self, vectors: torch.Tensor, products: torch.Tensor,
                           coefficients: torch.Tensor) -> np.ndarray:
        r"""[k] :math:`g^\top PHPg` of rows ``vectors`` g [k, d] from their products ``products`` Hg, not
        projected, and ``coefficients`` ``[Vg; Rg]`` (:meth:`coefficients` with ``extra`` the relation's
        residuals): :math:`g^\top Hg - 2c^\top UHg + c^\top Bc` with :math:`c = Ug` and :math:`UHg` from the
        Lanczos relation (:class:`LanczosRelation`), no second read of the basis."""
        relation = self.relation
        if relation is None:
            raise ValueError("deflated_quadratic needs a span that keeps its Lanczos relation")
        plain = row_dots(vectors, products).double().cpu().numpy()
        coefficients = coefficients.double().cpu().numpy()
        size = relation.tridiagonal.shape[0]
        v_g, r_g = coefficients[:, :size], coefficients[:, size:]
        mix = self.mix.double().cpu().numpy() if self.mix is not None else np.eye(size)
        c = v_g @ mix
        uhg = (v_g @ relation.tridiagonal + r_g @ relation.coupling.T) @ mix
        return plain - 2.0 * np.einsum("kn,kn->k", c, uhg) + np.einsum("kn,nm,km->k", c, relation.projected, c)


def krylov_deflated_trace(operator, span: KrylovSpan, probes: int, generator: torch.Generator, *,
                          rtol: float = 0.0, max_probes: int | None = None,
                          project: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          chunk: int | None = None, prior: np.ndarray | None = None) -> TraceEstimate:
    """``tr H`` = ``span.trace`` + Hutchinson on the complement of the span (see the module docstring).

    Parameters
    ----------
    probes:
        Rademacher probes of the first block (at least 2: the standard error needs two).
    rtol:
        Accuracy target: add probes until the standard error is at most ``rtol`` × |estimate|, each block
        sized by the standard error so far (0: one block).
    max_probes:
        Cap on the probes (default: 8 × ``probes``).
    project:
        Applied to each probe first (e.g. the deflation of exactly-zero rows: exact null directions).
    chunk:
        At most this many probes of d floats are held at once (the memory plan's probe block; default: a
        whole block).
    prior:
        Unbiased samples of ``tr H`` already in hand at no HVP (the SLQ probes' leave-one-out samples,
        :func:`~wdbound.estimators.union_ritz.leave_one_out_traces`): pooled with the fresh ones, they count
        toward the first block and the cap (at least 2 fresh probes are still drawn: the pooled spread then
        sees both deflation spaces).

    Returns
    -------
    A :class:`TraceEstimate` whose ``samples`` are ``tr T + g_jᵀPHPg_j`` (their mean is the estimate).
    """
    if probes < 2:
        raise ValueError(f"the deflated trace needs at least 2 probes, got {probes}")
    if span.rank >= operator.dim:  # the span is the whole space: tr T is the trace, no probe needed
        return TraceEstimate(span.trace, 0.0, np.array([span.trace]), "krylov (the span is the whole space: exact)")
    cap = max(probes, max_probes if max_probes is not None else 8 * probes)
    samples: list[np.ndarray] = []
    drawn = 0
    if prior is not None and len(prior):
        samples.append(np.asarray(prior, dtype=np.float64) - span.trace)  # tr T is added back below
        drawn = len(prior)
    step = max(1, chunk or probes)
    block = min(max(2, probes - drawn), max(2, cap - drawn))
    while True:
        for start in range(0, block, step):
            count = min(step, block - start)
            g = rademacher(count, operator.dim, generator, operator.dtype, operator.device)
            if project is not None:
                g = project(g)
            if span.relation is not None:  # one read of the basis: Vg and Rg, then the relation
                coefficients = span.coefficients(g, span.relation.residuals)
                hg = operator.matmat(g)
                samples.append(span.deflated_quadratic(g, hg, coefficients))
            else:
                g = span.project_out(g, inplace=True)
                # gᵀPHPg with g = Pg already: gᵀHg (P is an orthogonal projector), no second projection; the
                # projection, the product and the dot products in the operator's precision (its HVP's)
                hg = operator.matmat(g)
                samples.append(row_dots(g, hg).double().cpu().numpy())
            del g, hg
        drawn += block
        estimate = TraceEstimate.from_samples(span.trace + np.concatenate(samples), "krylov-deflated hutchinson")
        target = rtol * abs(estimate.estimate)
        if drawn >= cap or rtol <= 0 or estimate.stderr <= target:
            return estimate
        block = min(cap - drawn, next_block(drawn, estimate.stderr, target))


def next_block(drawn: int, stderr: float, target: float) -> int:
    """How many probes to add when ``drawn`` samples have a standard error ``stderr`` above ``target``: the
    count :func:`missing_probes` predicts, but at most ``2 drawn`` (the sample count at most triples, so the
    next prediction rests on a standard error from at least a third of the samples then in hand), at least 2.

    >>> next_block(8, 3.0, 1.0), next_block(24, 1.2, 1.0)  # 86 predicted, capped at 16; then 21
    (16, 21)
    """
    return max(2, min(2 * drawn, missing_probes(drawn, stderr, target)))


def missing_probes(drawn: int, stderr: float, target: float) -> int:
    """How many more probes bring a standard error ``stderr`` of ``drawn`` samples down to ``target``
    (stderr shrinks as 1/sqrt(n)): ``n (stderr/target)^2 - n``, 30 % more for the noise of the estimated
    stderr, at least 2.

    >>> missing_probes(8, 2.0, 1.0)  # four times the samples (24 more) and a 30 % margin
    34
    >>> missing_probes(8, 1.01, 1.0)
    3
    """
    ratio = (stderr / target) ** 2 if target > 0 else math.inf
    return max(2, math.ceil(1.3 * drawn * ratio) - drawn) if math.isfinite(ratio) else 2 ** 31
