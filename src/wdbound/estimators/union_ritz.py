r"""Top eigenvalues and a deflation space from the SLQ probes' own Krylov spaces (no separate Lanczos run).

Each SLQ probe :math:`p` leaves an orthonormal basis :math:`Q_p` [m_p, d] (rows) and the Lanczos relation
:math:`H Q_p^\top = Q_p^\top T_p + r_p e_{m_p}^\top`, with :math:`T_p` its tridiagonal and :math:`r_p` the
last residual (:math:`\beta_{m_p} q_{m_p+1}`). Stacked, :math:`V = [Q_1; \dots; Q_k]` [N, d] spans the union
of the probes' Krylov spaces and

.. math::
    H V^\top = V^\top T + R^\top S^\top, \qquad V H V^\top = G\,T + (V R^\top) S^\top ,

with :math:`T` block diagonal, :math:`G = VV^\top` the Gram matrix, :math:`R` [k, d] the residuals and
:math:`S` [N, k] picking each probe's last row. So the Rayleigh–Ritz projection of :math:`H` on the union
costs no HVP: with :math:`C = E\,\mathrm{diag}(g)^{-1/2}` from :math:`G = E\,\mathrm{diag}(g)E^\top`
(directions with :math:`g` below ``rank_tol`` × max dropped), :math:`U = C^\top V` is orthonormal and
:math:`B = C^\top (V H V^\top) C` is :math:`U H U^\top`. A Ritz pair :math:`(\theta, y = V^\top a)`,
:math:`a = C s`, has the residual

.. math::
    H y - \theta y = V^\top (T a - \theta a) + R^\top S^\top a ,

whose norm needs only :math:`G`, :math:`VR^\top` and :math:`RR^\top`. For a symmetric matrix that norm
bounds the distance from :math:`\theta` to an eigenvalue (Parlett 1998, Thm 4.5.1): the same certificate
as a single Lanczos run's :math:`|\beta_m u_{m,i}|`. The union holds k independent Krylov spaces of degree
m; its top Ritz values converge at least as fast as each probe's alone (the union contains each space), and
an eigenvalue of multiplicity up to k appears that many times (one start vector finds it once).

The same :math:`U` is the deflation space of :func:`wdbound.estimators.krylov_trace.krylov_deflated_trace`:
:math:`\mathrm{tr}(UHU^\top) = \mathrm{tr}\,B`, for free.

The probes themselves are trace samples too, at no HVP (leave-one-out, as in XTrace: Epperly, Tropp & Webber,
SIAM J. Matrix Anal. Appl. 45, 2024). Probe p's start :math:`z_p` is independent of the union
:math:`U_{-p}` of the other probes' spaces, so with :math:`P_{-p} = I - U_{-p}^\top U_{-p}`

.. math::
    t_p = \mathrm{tr}(U_{-p} H U_{-p}^\top) + z_p^\top P_{-p} H P_{-p} z_p

is an unbiased sample of :math:`\mathrm{tr}\,H` with the deflated-Hutchinson variance of a space of
(k-1)·m dimensions; every term is in :math:`G` and :math:`VHV^\top` (:math:`Hz_p` is in the union).

>>> import torch
>>> from wdbound.curvature import DenseOperator
>>> from wdbound.estimators.lanczos import lanczos
>>> H = torch.diag(torch.cat([torch.tensor([100.0, 50.0, 20.0]), torch.linspace(0, 1, 37)]).double())
>>> z = torch.randn(2, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
>>> union = union_ritz(lanczos(DenseOperator(H), z, 12, keep_basis=True), 3)
>>> [round(float(v), 6) for v in union.top.values], bool(union.top.residuals.max() < 1e-3)
([100.0, 50.0, 20.0], True)
>>> union.span.rank, union.weights.shape  # 2 x 12 vectors, the 3 converged directions found twice count once
(21, (2, 21))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .krylov_trace import KrylovSpan, LanczosRelation
from .lanczos import ATOM_RTOL, LanczosRun, TopEigen, deflate_rows, error_bounds, exact_atoms, within

RANK_TOL = 1e-6  # Gram eigenvalues below this x the largest are dropped (Ritz pairs, span and quadrature)


@dataclass(frozen=True)
class UnionRitz:
    """What the union of the probes' Krylov spaces gives: the top Ritz pairs' values with residual bounds,
    the orthonormal span (deflation space of the trace), and the union quadrature: every Ritz value (shared
    nodes) with its residual bound and one row of Gauss-type weights per probe."""

    top: TopEigen
    span: KrylovSpan
    nodes: np.ndarray  # [n] Ritz values of H on the union, ascending
    weights: np.ndarray  # [k, n] probe p's Gauss-type weights (each row sums to 1)
    residuals: np.ndarray  # [n] the residual bound of each node's Ritz pair
    gram: np.ndarray  # [N, N] V Vᵀ of the union basis (k blocks of `width` rows)
    projected: np.ndarray  # [N, N] V H Vᵀ
    width: int  # rows per probe's block in V
    norms_sq: np.ndarray  # [k] ||z_p||² of the probes' starts

    def trace_samples(self, rank_tol: float = RANK_TOL) -> np.ndarray:
        """[k] leave-one-out samples of tr H, one per probe, at no HVP (module docstring;
        :func:`leave_one_out_traces`). Computed when asked: the single pass's checks do not need them."""
        firsts = list(range(0, self.gram.shape[0], self.width))
        return leave_one_out_traces(self.gram, self.projected, firsts, self.width, self.norms_sq, rank_tol)

    def atoms(self, rtol: float = ATOM_RTOL) -> np.ndarray:
        """[n] bool: the nodes whose Ritz pair is converged, residual bound <= ``rtol`` × |node|
        (:func:`~wdbound.estimators.lanczos.exact_atoms`; the union's Ritz vectors are orthonormal, so a
        repeated node is a repeated eigenvalue). Each is within that bound of an eigenvalue of H, and c such
        orthonormal pairs certify c eigenvalues (counted with multiplicity) near them."""
        return exact_atoms(self.nodes, self.residuals, rtol, isolated=False)

    def deflated_weights(self, norms_sq: np.ndarray, rtol: float = ATOM_RTOL) -> tuple[np.ndarray, int]:
        """The union quadrature's weights with the converged Ritz pairs (:meth:`atoms`) as exact atoms, and how
        many atoms (:func:`~wdbound.estimators.lanczos.deflate_rows`; ``norms_sq`` [k]: the probes'
        ``||z_p||²``; each row of the result sums to 1; a row whose start lies mostly in the converged space
        leaves all undeflated)."""
        return deflate_rows(self.weights, self.atoms(rtol), norms_sq)


def union_ritz(run: LanczosRun, top: int, *, tol: float = 1e-4, rank_tol: float = RANK_TOL,
               cache: "GramCache | None" = None) -> UnionRitz:
    r"""The ``top`` largest Ritz values of ``H`` on the union of ``run``'s Krylov spaces, each with its residual
    bound, the union's orthonormal span with ``tr(UHUᵀ)``, and the union quadrature with every Ritz pair's
    residual bound (see the module docstring).

    ``run`` must keep its basis and last residuals (``lanczos(..., keep_basis=True)``). ``top.converged`` says
    whether every error bound (:func:`~wdbound.estimators.lanczos.error_bounds`: the residual, tightened by
    the gap to the other Ritz values of the union) is at most ``tol`` × |value|.

    The quadrature: probe p's start vector :math:`z_p` lies in the union, so
    :math:`z_p^\top f(H) z_p \approx \|z_p\|^2 \sum_j (s_j^\top U z_p/\|z_p\|)^2 f(\theta_j)` over the union's Ritz
    pairs; exact for polynomials of degree < 2m like the probe's own Gauss rule (the union contains its
    Krylov space), with k·m nodes instead of m. :meth:`UnionRitz.deflated_weights` turns the converged
    pairs into exact atoms.

    The basis is read in place, a block per probe (no copy of its k·m·d floats). ``cache``: the Gram matrix of
    an earlier call on the same growing run, so a check after more steps only multiplies the new rows
    (:class:`GramCache`).
    """
    if run.basis is None or run.residuals is None:
        raise ValueError("union_ritz needs a Lanczos run that kept its basis and last residuals")
    lengths = [int(n) for n in run.lengths]
    k, width = len(lengths), max(lengths)
    basis = run.basis[:, :width]  # V: k blocks of `width` rows, read in place (rows past a probe's length are 0)
    residuals = run.residuals.to(basis.dtype)  # R [k, d]
    size = k * width
    blocks = np.zeros((size, size))
    last = np.zeros((size, k))  # S
    firsts = [p * width for p in range(k)]
    for p, n in enumerate(lengths):
        blocks[firsts[p]:firsts[p] + n, firsts[p]:firsts[p] + n] = run.tridiagonal(p)
        last[firsts[p] + n - 1, p] = 1.0
    gram, cross = (cache or GramCache()).products(basis, residuals)  # V Vᵀ [N, N], V Rᵀ [N, k]
    outer = (residuals @ residuals.T).double().cpu().numpy()  # R Rᵀ [k, k]
    projected = gram @ blocks + cross @ last.T
    projected = (projected + projected.T) / 2
    g, vectors = np.linalg.eigh(gram)
    keep = g > rank_tol * g.max()
    mix = vectors[:, keep] / np.sqrt(g[keep])  # C [N, r]: U = Cᵀ V is orthonormal
    reduced = mix.T @ projected @ mix  # B = U H Uᵀ
    theta, s = np.linalg.eigh(reduced)  # ascending
    a = mix @ s  # coefficients of the Ritz vectors in V [N, r]
    b = blocks @ a - a * theta
    c = last.T @ a
    squared = (np.einsum("nt,nm,mt->t", b, gram, b) + 2 * np.einsum("nt,nk,kt->t", b, cross, c)
               + np.einsum("kt,kl,lt->t", c, outer, c))
    residual_norms = np.sqrt(np.maximum(squared, 0.0))
    order = np.argsort(theta)[::-1][:min(top, len(theta))]
    values = theta[order]
    bounds = error_bounds(theta, residual_norms)[order]
    converged = within(bounds, values, tol)
    span = KrylovSpan(basis, float(theta.sum()), torch.from_numpy(mix).to(basis.device, basis.dtype),
                      relation=LanczosRelation(blocks, residuals, last, reduced))
    weights = ((a.T @ gram[:, firsts]) ** 2).T  # [k, n]: (s_jᵀ U q_p1)² = (a_jᵀ G e_p1)²
    weights = weights / weights.sum(1, keepdims=True)
    top_pairs = TopEigen(values, residual_norms[order], bounds, int(max(lengths)), converged, tol, span)
    return UnionRitz(top_pairs, span, theta, weights, residual_norms, gram, projected, width,
                     np.asarray(run.norms, dtype=np.float64) ** 2)


def leave_one_out_traces(gram: np.ndarray, projected: np.ndarray, firsts: list[int], width: int,
                         norms_sq: np.ndarray, rank_tol: float = RANK_TOL) -> np.ndarray:
    r"""[k] samples of :math:`\mathrm{tr}\,H`, probe p's deflated by the union of the others' Krylov spaces.

    ``gram`` = :math:`VV^\top` and ``projected`` = :math:`VHV^\top` [N, N] of the union basis, probe p's rows
    from ``firsts[p]`` (``width`` rows each, its start direction :math:`q_{p1}` first); ``norms_sq`` [k]:
    :math:`\|z_p\|^2`. With :math:`C` orthonormalising the other rows (:math:`U = C^\top V_{-p}`),
    :math:`c = U q_{p1}`, :math:`h = U H q_{p1}` and :math:`B = UHU^\top`:
    :math:`t_p = \mathrm{tr}\,B + \|z_p\|^2 (q_{p1}^\top H q_{p1} - 2 c^\top h + c^\top B c)`.
    One probe alone gives plain Hutchinson, :math:`z^\top H z`.

    >>> H = np.diag([3.0, 1.0]); V = np.eye(2)  # two probes along e1 and e2, one step each
    >>> leave_one_out_traces(V @ V.T, V @ H @ V.T, [0, 1], 1, np.array([1.0, 1.0])).tolist()  # exact: tr H = 4
    [4.0, 4.0]
    """
    size = gram.shape[0]
    samples = np.empty(len(firsts))
    for p, first in enumerate(firsts):
        others = np.ones(size, dtype=bool)
        others[first:first + width] = False
        inner = projected[first, first]  # q_p1ᵀ H q_p1
        tr = 0.0
        g, vectors = np.linalg.eigh(gram[np.ix_(others, others)]) if others.any() else (np.zeros(0), None)
        keep = g > rank_tol * g.max() if len(g) and g.max() > 0 else np.zeros(len(g), dtype=bool)
        if keep.any():
            mix = vectors[:, keep] / np.sqrt(g[keep])
            b = mix.T @ projected[np.ix_(others, others)] @ mix
            c = mix.T @ gram[others, first]
            h = mix.T @ projected[others, first]
            tr = float(np.trace(b))
            inner += -2.0 * c @ h + c @ b @ c
        samples[p] = tr + norms_sq[p] * inner
    return samples


PRODUCT_COLUMNS = 2**16  # columns of d per slice of the union's one-pass products (GramCache.products)


class GramCache:
    """The Gram matrix ``V Vᵀ`` of a Lanczos run's basis [k, m, d], kept between the checks of a run that is
    still growing: rows already written never change, so after more steps only the new rows are multiplied
    (k²·Δm·m·d flops instead of k²·m²·d). A different basis tensor, or fewer rows, recomputes it.

    :meth:`products` also gives ``V Rᵀ`` of the run's current residuals in the same pass: the basis is taken a
    slice of ``PRODUCT_COLUMNS`` columns at a time, and each probe block's slice is multiplied by every block's
    new rows and by the residuals while it is in the cache, so the basis is read from memory once per check
    (on ResNet-18 it is GBs; a whole product per pair of blocks, and one more for the residuals, read it
    k + 1 times)."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._width = 0
        self._gram: np.ndarray | None = None  # [k, width, k, width]

    def products(self, basis: torch.Tensor, residuals: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(``V Vᵀ`` [k·m, k·m] symmetrised, ``V Rᵀ`` [k·m, r]) of ``basis`` [k, m, d] (the rows of block p at
        p·m) and rows ``residuals`` [r, d], float64, in one read of the basis."""
        k, width, dim = basis.shape
        key = (basis.data_ptr(), k)
        start = self._width if self._key == key and self._width <= width else 0
        fresh, extra = width - start, residuals.shape[0]
        out = torch.zeros(k, width, k * fresh + extra, dtype=torch.float64, device=basis.device)
        for begin in range(0, dim, PRODUCT_COLUMNS):
            end = min(dim, begin + PRODUCT_COLUMNS)
            for q in range(k):  # block q's slice is read from memory once, then from the cache
                block = basis[q, :width, begin:end].double()
                for p in range(k if fresh else 0):
                    out[q, :, p * fresh:(p + 1) * fresh].addmm_(block, basis[p, start:width, begin:end].T.double())
                if extra:
                    out[q, :, k * fresh:].addmm_(block, residuals[:, begin:end].T.double())
        out_np = out.cpu().numpy()  # [k (block q), width (its rows), k·fresh new rows + residuals]
        gram = np.zeros((k, width, k, width))
        if start:
            gram[:, :start, :, :start] = self._gram
        new = out_np[:, :, :k * fresh].reshape(k, width, k, fresh)  # [q, row of q, p, new row of p]
        gram[:, :, :, start:] = new
        gram[:, start:, :, :] = new.transpose(2, 3, 0, 1)
        self._key, self._width, self._gram = key, width, gram
        flat = gram.reshape(k * width, k * width)
        return (flat + flat.T) / 2, out_np[:, :, k * fresh:].reshape(k * width, -1)
