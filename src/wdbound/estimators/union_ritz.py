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

from .krylov_trace import KrylovSpan
from .lanczos import LanczosRun, TopEigen, tridiagonal

RANK_TOL = 1e-6  # Gram eigenvalues below this x the largest are dropped from the Ritz pairs and the span
QUADRATURE_RANK_TOL = 1e-8  # ... from the quadrature (no residual is computed there; W1 unchanged from 1e-10 to 1e-6)


@dataclass(frozen=True)
class UnionRitz:
    """What the union of the probes' Krylov spaces gives: the top Ritz pairs' values with residual bounds,
    the orthonormal span (deflation space of the trace) and the union quadrature rule (shared nodes, one
    row of weights per probe)."""

    top: TopEigen
    span: KrylovSpan
    nodes: np.ndarray  # [n] Ritz values of H on the union, ascending
    weights: np.ndarray  # [k, n] probe p's Gauss-type weights (each row sums to 1)


def union_ritz(run: LanczosRun, top: int, *, tol: float = 1e-4, rank_tol: float = RANK_TOL,
               quadrature_rank_tol: float = QUADRATURE_RANK_TOL) -> UnionRitz:
    r"""The ``top`` largest Ritz values of ``H`` on the union of ``run``'s Krylov spaces, each with its residual
    bound, the union's orthonormal span with ``tr(UHUᵀ)``, and the union quadrature (see the module docstring).

    ``run`` must keep its basis and last residuals (``lanczos(..., keep_basis=True)``). ``top.converged`` says
    whether every residual is at most ``tol`` × |value|.

    The quadrature: probe p's start vector :math:`z_p` lies in the union, so
    :math:`z_p^\top f(H) z_p \approx \|z_p\|^2 \sum_j (s_j^\top U z_p/\|z_p\|)^2 f(\theta_j)` over the union's Ritz
    pairs; exact for polynomials of degree < 2m like the probe's own Gauss rule (the union contains its
    Krylov space), with k·m nodes instead of m.
    """
    if run.basis is None or run.residuals is None:
        raise ValueError("union_ritz needs a Lanczos run that kept its basis and last residuals")
    lengths = [int(n) for n in run.lengths]
    rows = torch.cat([run.basis[p, :n] for p, n in enumerate(lengths)])  # V [N, d]
    residuals = run.residuals.to(rows.dtype)  # R [k, d]
    size = rows.shape[0]
    blocks = np.zeros((size, size))
    last = np.zeros((size, len(lengths)))  # S
    firsts = []
    offset = 0
    for p, n in enumerate(lengths):
        blocks[offset:offset + n, offset:offset + n] = run.tridiagonal(p)
        last[offset + n - 1, p] = 1.0
        firsts.append(offset)
        offset += n
    gram = (rows @ rows.T).double().cpu().numpy()
    gram = (gram + gram.T) / 2
    cross = (rows @ residuals.T).double().cpu().numpy()  # V Rᵀ [N, k]
    outer = (residuals @ residuals.T).double().cpu().numpy()  # R Rᵀ [k, k]
    projected = gram @ blocks + cross @ last.T
    projected = (projected + projected.T) / 2
    g, vectors = np.linalg.eigh(gram)

    def rayleigh_ritz(threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = g > threshold * g.max()
        mix = vectors[:, keep] / np.sqrt(g[keep])  # C [N, r]: U = Cᵀ V is orthonormal
        theta, s = np.linalg.eigh(mix.T @ projected @ mix)
        return mix, theta, s

    mix, theta, s = rayleigh_ritz(rank_tol)
    order = np.argsort(theta)[::-1][:min(top, len(theta))]
    a = mix @ s[:, order]  # coefficients of the Ritz vectors in V [N, t]
    b = blocks @ a - a * theta[order]
    c = last.T @ a
    squared = (np.einsum("nt,nm,mt->t", b, gram, b) + 2 * np.einsum("nt,nk,kt->t", b, cross, c)
               + np.einsum("kt,kl,lt->t", c, outer, c))
    values = theta[order]
    residual_norms = np.sqrt(np.maximum(squared, 0.0))
    converged = bool(np.all(residual_norms <= tol * np.maximum(np.abs(values), 1e-300)))
    span = KrylovSpan(rows, float(theta.sum()), torch.from_numpy(mix).to(rows.device, rows.dtype))
    fine_mix, nodes, fine_s = rayleigh_ritz(quadrature_rank_tol)
    weights = ((fine_s.T @ fine_mix.T @ gram[:, firsts]) ** 2).T  # [k, n]: (s_jᵀ U q_p1)²
    weights = weights / weights.sum(1, keepdims=True)
    return UnionRitz(TopEigen(values, residual_norms, int(max(lengths)), converged, tol, span), span, nodes,
                     weights)
