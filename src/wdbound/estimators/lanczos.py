r"""Lanczos with full re-orthogonalisation: stochastic Lanczos quadrature and top eigenvalues.

For a start vector :math:`q_1 = z/\|z\|`, m steps build an orthonormal basis
:math:`Q_m` of the Krylov space and a tridiagonal :math:`T_m = Q_m^\top H Q_m`.
With :math:`T_m = U \Theta U^\top`, the Ritz values :math:`\theta_j` and
weights :math:`w_j = U_{1j}^2` give the Gauss quadrature
:math:`z^\top f(H) z \approx \|z\|^2 \sum_j w_j f(\theta_j)` (Golub & Meurant
1997), exact for polynomials of degree < 2m. Averaged over Rademacher probes
(:math:`\|z\|^2 = d`) this is stochastic Lanczos quadrature (Ubaru, Chen &
Saad 2017; Ghorbani, Krishnan & Xiao 2019): the spectral measure
:math:`\mu \approx \frac1k\sum_p\sum_j w_{pj}\,\delta_{\theta_{pj}}` and
:math:`\mathrm{tr} f(H) \approx d \int f\,d\mu`.

All k probes advance together, one batched ``matmat`` per step.
Re-orthogonalisation is done twice per step against the whole basis
("twice is enough", Parlett 1998), as batched matrix products.
A probe whose new residual norm :math:`\beta` falls below
``breakdown_tol`` times the running norm estimate has found an invariant
subspace: its recursion stops there and its quadrature is exact.

>>> import torch
>>> from wdbound.curvature import DenseOperator
>>> H = torch.diag(torch.tensor([1.0, 1.0, 2.0, 5.0], dtype=torch.float64))
>>> run = slq(DenseOperator(H), probes=2, steps=10, generator=torch.Generator().manual_seed(0))
>>> run.lengths.tolist()  # breakdown after the 3 distinct eigenvalues
[3, 3]
>>> round(float(run.quadrature(lambda t: t).mean()), 10)  # z^T H z = tr(H) for diagonal H
9.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from ..stats import gaussian_smooth, mean_stderr
from .hutchinson import HutchinsonSums, rademacher, row_dots
from .krylov_trace import KrylovSpan, LanczosRelation

VECTOR_DTYPE = torch.float64  # Lanczos vectors, recurrences and quadrature: float64 even when the HVPs are float32
ATOM_RTOL = 1e-3  # a Ritz pair whose residual bound is <= this x its own |theta| is an exact atom (exact_atoms)
ATOM_REST_FLOOR = 0.5  # ... unless a probe's start has less than this share of its expected mass off the atoms


@dataclass(frozen=True)
class LanczosRun:
    """The tridiagonal of each probe's Lanczos recursion."""

    alphas: np.ndarray  # [k, m]
    betas: np.ndarray  # [k, m-1]
    lengths: np.ndarray  # [k] steps actually taken (< m after breakdown)
    norms: np.ndarray  # [k] ||z|| of each start vector
    first_products: torch.Tensor | None  # [k, d] H z (the first matvec, free for Hutchinson); None when low-memory
    starts: torch.Tensor | None  # [k, d] the start vectors z; None when low-memory
    basis: torch.Tensor | None = None  # [k, m, d] when kept
    products: "HutchinsonSums | None" = None  # running z ⊙ Hz sums of a low-memory run (starts not kept)
    reorth: str = "full"  # "full" (against the whole basis) or "local" (three-term recurrence, see lanczos_blocks)
    residuals: torch.Tensor | None = None  # [k, d] each probe's last residual β_m q_{m+1} (kept with the basis)

    def tridiagonal(self, probe: int) -> np.ndarray:
        """The tridiagonal [n, n] of probe ``probe`` (n its length)."""
        n = int(self.lengths[probe])
        return tridiagonal(self.alphas[probe, :n], self.betas[probe, :n - 1])


def tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """The symmetric tridiagonal matrix [n, n] with diagonal ``alphas`` [n] and off-diagonal ``betas`` [n-1].

    >>> tridiagonal(np.array([1.0, 2.0]), np.array([0.5])).tolist()
    [[1.0, 0.5], [0.5, 2.0]]
    """
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


def pad_columns(a: np.ndarray, cols: int) -> np.ndarray:
    """``a`` [k, c] padded with zero columns to [k, cols] (tridiagonals of different lengths, stacked)."""
    return np.pad(a, ((0, 0), (0, cols - a.shape[1])))


def _starts(operator, starts: torch.Tensor, steps: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(steps capped at d, the start vectors as float64 on the operator's device, their norms [k]); a run
    of no step or a zero start vector is a ValueError."""
    steps = int(min(steps, starts.shape[1]))
    if steps < 1:
        raise ValueError(f"Lanczos needs at least one step, got {steps}")
    starts = starts.to(operator.device, VECTOR_DTYPE)
    norms = starts.norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError("a Lanczos start vector is zero")
    return steps, starts, norms


def lanczos(operator, starts: torch.Tensor, steps: int, *, keep_basis: bool = False,
            breakdown_tol: float | None = None, stop: Callable[[LanczosRun], bool] | None = None,
            check_every: int = 10) -> LanczosRun:
    """Run ``steps`` Lanczos steps from each row of ``starts`` [k, d], together, with full
    re-orthogonalisation (memory: the whole basis, k·m·d floats; see :func:`lanczos_blocks` for the
    low-memory recurrence). Vectors and recurrences are float64 (``VECTOR_DTYPE``) whatever the
    operator's precision: a float32 HVP sees its input cast down and its output cast up.

    ``keep_basis`` also keeps each probe's last residual (``residuals``: what
    :func:`~wdbound.estimators.union_ritz.union_ritz` needs). ``stop``: every ``check_every`` steps the run so far
    (basis kept) is passed to it, and the run ends there when it returns True (an accuracy target instead of
    a fixed step count).

    On a large model the vector work of a step is a visible share of it (an 11 M-parameter float64 vector is
    90 MB): the recurrence runs in place on the running vectors, the basis is allocated but not zeroed (only
    the rows a probe wrote are read; a probe that breaks down has the rest of its rows zeroed then), and each
    probe's residual is copied out only where it is read (at a check, at the end, at a breakdown)."""
    k, d = starts.shape
    dtype, device = VECTOR_DTYPE, operator.device
    breakdown_tol = _breakdown_tol(operator, breakdown_tol)
    steps, starts, norms = _starts(operator, starts, steps)
    basis = torch.empty(k, steps, d, dtype=dtype, device=device)
    alphas = torch.zeros(k, steps, dtype=torch.float64)
    betas = torch.zeros(k, max(steps - 1, 0), dtype=torch.float64)
    lengths = torch.full((k,), steps, dtype=torch.long)
    active = torch.ones(k, dtype=torch.bool)
    scale = torch.zeros(k, dtype=torch.float64)
    q = starts / norms[:, None]
    q_prev = torch.zeros_like(q)
    beta_prev = torch.zeros(k, dtype=torch.float64)
    first_products = None
    residuals = torch.zeros(k, d, dtype=dtype, device=device) if keep_basis or stop is not None else None
    for j in range(steps):
        idx = active.nonzero().squeeze(1)
        every = len(idx) == k  # all probes running: views instead of gathered copies
        rows = idx.tolist()
        current = q if every else q[idx]
        basis[idx, j] = current
        w = _apply(operator, current)
        if j == 0:
            first_products = w * norms[:, None]
        alpha = row_dots(w, current).double().cpu()
        for r, p in enumerate(rows):  # w -= alpha q + beta_prev q_prev, in place
            w[r].add_(current[r], alpha=-float(alpha[r]))
            if j:
                w[r].add_(q_prev[p], alpha=-float(beta_prev[p]))
        span = basis[:, : j + 1] if every else basis[idx, : j + 1]  # [a, j+1, d] (a view while all run)
        reorthogonalise(span, w, inplace=True)
        beta = w.norm(dim=1).double().cpu()
        alphas[idx, j] = alpha
        scale[idx] = torch.maximum(scale[idx], alpha.abs() + beta)
        last = j == steps - 1
        check = stop is not None and not last and (j + 1) % check_every == 0
        if residuals is not None and (last or check):
            residuals[idx] = w
        if last:
            break
        if check:
            partial = _partial_run(alphas, betas, torch.where(active, j + 1, lengths), norms, first_products,
                                   starts, basis, residuals, j + 1)  # lengths: j + 1, or where a probe broke
            if stop(partial):
                return partial
        betas[idx, j] = beta
        broke = beta <= breakdown_tol * scale[idx]
        for r in broke.nonzero().squeeze(1).tolist():  # an invariant subspace: its residual and length are final
            p = rows[r]
            lengths[p] = j + 1
            active[p] = False
            basis[p, j + 1:].zero_()  # rows past its length read as zeros (the union's blocks)
            if residuals is not None:
                residuals[p] = w[r]
        if not bool(active.any()):
            break
        for r, p in enumerate(rows):
            if not bool(broke[r]):
                q_prev[p].copy_(q[p])
                torch.div(w[r], float(beta[r]), out=q[p])
                beta_prev[p] = beta[r]
    return LanczosRun(alphas.numpy(), betas.numpy(), lengths.numpy(), norms.double().cpu().numpy(),
                      first_products, starts, basis if keep_basis else None, residuals=residuals)


def reorthogonalise(span: torch.Tensor, w: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``w`` [a, d] with its components along each row's basis ``span`` [a, j, d] removed: classical
    Gram-Schmidt, repeated only when the first pass cancelled most of ``w`` (the DGKS criterion, Daniel,
    Gragg, Kaufman & Stewart 1976: a norm below 1/sqrt(2) of what it was). "Twice is enough" (Parlett 1998,
    sec. 6.9); a second pass when the first changed little only reads the whole basis again, which on an
    11 M-parameter model costs as much memory traffic as the pass itself. ``inplace``: ``w`` itself is
    updated (no [a, d] temporaries) and returned."""
    if not inplace:
        w = w.clone()

    def gram_schmidt() -> None:  # w -= span^T (span w), row by row of the batch, written into w
        # (wᵀ spanᵀ) [a, 1, j]: a row-vector product runs on every core where span @ w [a, j, 1] ran on one
        # (ResNet-18, two probes of 12 rows of 11.2 M: 0.086 against 0.16 s)
        coefficients = torch.bmm(w.unsqueeze(1), span.transpose(1, 2))
        w.unsqueeze(1).baddbmm_(coefficients, span, alpha=-1.0)

    before = w.norm(dim=1)
    gram_schmidt()
    if bool((w.norm(dim=1) < before / math.sqrt(2)).any()):
        gram_schmidt()
    return w


def _partial_run(alphas, betas, lengths, norms, first_products, starts, basis, residuals, steps: int) -> LanczosRun:
    """The run after its first ``steps`` steps (views of the running arrays; the basis and residuals kept).
    Residuals of probes still running are their current ``β q_{next}``: the Lanczos relation holds at ``steps``."""
    return LanczosRun(alphas[:, :steps].numpy().copy(), betas[:, :max(steps - 1, 0)].numpy().copy(),
                      lengths.numpy().copy(), norms.double().cpu().numpy(),
                      first_products, starts, basis[:, :steps], residuals=residuals.clone())


def _apply(operator, vectors: torch.Tensor) -> torch.Tensor:
    """``H V`` with V in ``VECTOR_DTYPE``: cast to the operator's precision for the product, back for the recurrence."""
    return operator.matmat(vectors.to(operator.dtype)).to(vectors.dtype)


def _breakdown_tol(operator, breakdown_tol: float | None) -> float:
    if breakdown_tol is not None:
        return breakdown_tol
    eps = torch.finfo(operator.dtype).eps  # the HVP's precision decides what counts as a zero residual
    return 100 * eps if operator.dtype == torch.float64 else 1e3 * eps


def lanczos_blocks(operator, draw: Callable[[int], torch.Tensor], probes: int, steps: int, *, block: int,
                   breakdown_tol: float | None = None) -> LanczosRun:
    r"""Low-memory SLQ: ``probes`` start vectors drawn ``block`` at a time by ``draw(count) -> [count, d]``,
    each advanced by the three-term recurrence with local re-orthogonalisation only (against the two
    previous vectors). Memory: about four vectors of d per probe in the block, whatever ``steps``; the
    start vectors are not kept, their ``z ⊙ Hz`` is folded into ``products`` for Hutchinson.

    Without full re-orthogonalisation the Lanczos vectors lose orthogonality once Ritz values converge
    and "ghost" copies of converged eigenvalues appear, but the Gauss quadrature of the finite-precision
    recursion stays accurate: Greenbaum (1989) shows it is the exact recursion of a nearby matrix whose
    eigenvalues lie in tiny intervals around H's, and Knizhnerman (1996) and Chen, Trogdon & Ubaru (ICML
    2021, "Analysis of stochastic Lanczos quadrature for spectrum approximation", Sec. 5) carry this to
    SLQ: the ghosts split the weight of a converged eigenvalue, they do not add weight. The price is in
    the nodes, not in the quadratures: measured on the zoo in ``docs/low-memory.md``.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    runs, sums = [], HutchinsonSums()
    done = 0
    while done < probes:
        count = min(block, probes - done)
        runs.append(_three_term(operator, draw(count), steps, _breakdown_tol(operator, breakdown_tol), sums))
        done += count
    width = max(r[0].shape[1] for r in runs)
    alphas = np.concatenate([pad_columns(r[0], width) for r in runs])
    betas = np.concatenate([pad_columns(r[1], max(width - 1, 0)) for r in runs])
    return LanczosRun(alphas, betas, np.concatenate([r[2] for r in runs]), np.concatenate([r[3] for r in runs]),
                      None, None, None, sums, "local")


def _three_term(operator, starts: torch.Tensor, steps: int, breakdown_tol: float, sums: HutchinsonSums):
    k, d = starts.shape
    dtype, device = VECTOR_DTYPE, operator.device
    steps, starts, norms = _starts(operator, starts, steps)
    alphas = np.zeros((k, steps))
    betas = np.zeros((k, max(steps - 1, 0)))
    lengths = np.full(k, steps, dtype=np.int64)
    scale = np.zeros(k)
    q = starts / norms[:, None]
    q_prev = torch.zeros_like(q)
    beta_prev = torch.zeros(k, dtype=dtype, device=device)
    active = np.ones(k, dtype=bool)
    for j in range(steps):
        idx = torch.from_numpy(np.flatnonzero(active)).to(device)
        rows = np.flatnonzero(active)
        w = _apply(operator, q[idx])
        if j == 0:
            sums.add(starts, w * norms[:, None])
            del starts
        alpha = (w * q[idx]).sum(1)
        w = w - alpha[:, None] * q[idx] - beta_prev[idx, None] * q_prev[idx]
        correction = (w * q[idx]).sum(1)  # local re-orthogonalisation against q_j (Paige 1976)
        w = w - correction[:, None] * q[idx]
        alpha = alpha + correction
        beta = w.norm(dim=1)
        a, b = alpha.double().cpu().numpy(), beta.double().cpu().numpy()
        alphas[rows, j] = a
        scale[rows] = np.maximum(scale[rows], np.abs(a) + b)
        if j == steps - 1:
            break
        betas[rows, j] = b
        broke = b <= breakdown_tol * scale[rows]
        lengths[rows[broke]] = j + 1
        active[rows[broke]] = False
        if not active.any():
            break
        keep = torch.from_numpy(~broke).to(device)
        q_prev[idx] = q[idx]
        q[idx[keep]] = w[keep] / beta[keep, None]
        beta_prev[idx] = beta
    return alphas, betas, lengths, norms.double().cpu().numpy()


@dataclass(frozen=True)
class SLQ:
    """Stochastic Lanczos quadrature: per-probe tridiagonals, Ritz values (nodes) and weights.

    ``null_weight`` is the part of ``E[z^T f(H) z]`` that lives on a known exact
    null space removed before the run (the exactly-zero Hessian rows, see
    ``wdbound.curvature.zero_rows``): it contributes ``null_weight * f(0)`` to
    every quadrature and an atom at 0 of mass ``null_weight / dim`` to the
    measure. Zero when nothing was deflated.

    ``atoms`` are the Ritz values of top Ritz vectors the probes and products were projected off
    (:class:`RitzDeflation`; ``atom_rounding`` the rounding allowed on each): each adds ``f(θ_i)`` to every quadrature
    and an atom of mass ``1 / dim`` to the measure; the intervals widen by
    :func:`~wdbound.estimators.quadrature_interval.atom_slack`. None when none were.
    """

    nodes: list[np.ndarray]  # k arrays of <= m Ritz values, ascending
    weights: list[np.ndarray]  # k arrays summing to 1
    dim: int
    norms_sq: np.ndarray  # [k] ||z||^2 (= d for Rademacher probes on the whole space)
    lengths: np.ndarray  # [k]
    alphas: np.ndarray  # [k, m] tridiagonal diagonals (padded past each length)
    betas: np.ndarray  # [k, m-1] off-diagonals
    null_weight: float = 0.0
    run: LanczosRun | None = None  # the live run (absent when loaded from a cache)
    complete: np.ndarray | None = None  # [k] bool: the probe's Krylov space is invariant (its Gauss rule is exact)
    rule: str = "probe"  # "probe": each probe's own Gauss rule; "union": shared nodes of the union of the spaces
    spans: np.ndarray | None = None  # [k] bool: the probe's Krylov space is the whole deflated space (see below)
    span_slack: float = 0.0  # absolute error allowed on each Ritz value of a spanning probe (the HVPs' precision)
    atoms: np.ndarray | None = None  # Ritz values of deflated top Ritz vectors (RitzDeflation), or None
    atom_rounding: np.ndarray | None = None  # the rounding allowed on each (RitzDeflation.rounding)
    rademacher_starts: bool = False  # the starts are (projected) Rademacher vectors: E (z·u)² = 1 on the space they span

    @property
    def atom_count(self) -> int:
        """How many top Ritz vectors were deflated (0: none)."""
        return 0 if self.atoms is None else int(len(self.atoms))

    def atom_part(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        """``Σ_i f(θ_i)`` over the deflated top Ritz values (0 without them)."""
        return float(np.sum(f(self.atoms))) if self.atom_count else 0.0

    @property
    def space_dim(self) -> float:
        """The dimension of the space the probes live in: ``dim`` minus the deflated null and top directions."""
        return float(self.dim) - float(self.null_weight) - self.atom_count

    def with_union_rule(self, nodes: np.ndarray, weights: np.ndarray) -> "SLQ":
        """The same probes with the union quadrature (:mod:`~wdbound.estimators.union_ritz`): every probe
        on the shared ``nodes`` [n] with its row of ``weights`` [k, n]. The tridiagonals stay (err's
        quadrature intervals and :meth:`truncated` use each probe's own rule)."""
        nodes = np.asarray(nodes, dtype=np.float64)
        return replace(self, nodes=[nodes] * len(self.lengths), weights=[np.asarray(w, dtype=np.float64)
                                                                          for w in weights], rule="union")

    def spanning_probe(self) -> int | None:
        """A probe whose Krylov space is the whole space its deflated probes live in, or None.

        Set only for (projected) Rademacher probes of a full re-orthogonalisation run
        (:func:`slq_from_run`'s ``space_dim`` n) that became invariant after at least n steps: its Ritz values
        with weight are then *all* the eigenvalues of the deflated operator, each once (a Krylov space of
        dimension n needs n distinct eigenvalues), and ``tr f(H) = Σ_j f(θ_j) + null_weight · f(0)`` with no
        probe error. Rounding can carry such a run a few steps past n; those steps add Ritz values the start
        vector has no weight on (below :data:`SPURIOUS_WEIGHT`), and the probe counts as spanning only when
        exactly that many such values appear (:meth:`spanned_eigenvalues` drops them)."""
        if self.spans is None or not bool(np.any(self.spans)):
            return None
        return int(np.flatnonzero(self.spans)[0])

    def spanned_eigenvalues(self) -> np.ndarray | None:
        """Every eigenvalue of the deflated operator (ascending), from a :meth:`spanning_probe`'s own Gauss
        rule without its weightless Ritz values; None without one. Computed once per SLQ (err's estimate,
        interval and mass below the floor all read it)."""
        return self._spanned

    @cached_property
    def _spanned(self) -> np.ndarray | None:
        p = self.spanning_probe()
        if p is None:
            return None
        n = int(self.lengths[p])
        theta, weights = ((self.nodes[p], self.weights[p]) if self.rule == "probe"  # the union rule replaced them
                          else _gauss_rule(self.alphas[p], self.betas[p], n))
        extra = n - int(round(self.space_dim))
        return np.sort(theta[np.argsort(weights, kind="stable")[extra:]])

    @cached_property
    def radau_cache(self) -> dict[tuple[int, float], tuple[float, float]]:
        """Distribution bounds at extra points, ``(probe, t) -> (below, up_to)``, as
        :func:`~wdbound.estimators.quadrature_interval.radau_distribution_bounds` computed them: they depend on
        the probe's tridiagonal only, so every integrand bracketed on this run reuses them."""
        return {}

    def exact_probe(self, probe: int) -> bool:
        """Whether probe ``probe``'s recursion broke down (or spanned the space): its quadrature is then exact."""
        return bool(self.complete[probe]) if self.complete is not None else False

    @classmethod
    def from_tridiagonals(cls, alphas: np.ndarray, betas: np.ndarray, lengths: np.ndarray, norms_sq: np.ndarray,
                          dim: int, null_weight: float = 0.0, run: LanczosRun | None = None,
                          complete: np.ndarray | None = None, spans: np.ndarray | None = None,
                          span_slack: float = 0.0, atoms: np.ndarray | None = None,
                          atom_rounding: np.ndarray | None = None, rademacher_starts: bool = False) -> "SLQ":
        """Nodes and weights from the tridiagonals. ``complete`` defaults to "stopped before the padded width
        ``alphas.shape[1]`` (a breakdown) or reached ``dim`` steps"; ``spans``: see :meth:`spanning_probe`."""
        lengths = np.asarray(lengths)
        if complete is None:
            complete = (lengths < np.asarray(alphas).shape[1]) | (lengths >= dim)
        nodes, weights = [], []
        for p, n in enumerate(np.asarray(lengths, dtype=np.int64)):
            theta, weight = _gauss_rule(alphas[p], betas[p], int(n))
            nodes.append(theta)
            weights.append(weight)
        return cls(nodes, weights, dim, np.asarray(norms_sq, dtype=np.float64), lengths, alphas, betas,
                   float(null_weight), run, np.asarray(complete, dtype=bool),
                   spans=None if spans is None else np.asarray(spans, dtype=bool), span_slack=float(span_slack),
                   atoms=None if atoms is None else np.asarray(atoms, dtype=np.float64),
                   atom_rounding=None if atoms is None else np.asarray(atom_rounding, dtype=np.float64),
                   rademacher_starts=rademacher_starts)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The probes' tridiagonals and flags as named arrays (the cache's layout; :meth:`from_arrays` reads it)."""
        out = {f"{prefix}_alphas": self.alphas, f"{prefix}_betas": self.betas, f"{prefix}_lengths": self.lengths,
               f"{prefix}_norms_sq": self.norms_sq, f"{prefix}_null": np.array(self.null_weight),
               f"{prefix}_complete": self.complete}
        if self.spans is not None:
            out[f"{prefix}_spans"] = self.spans
            out[f"{prefix}_span_slack"] = np.array(self.span_slack)
        if self.atoms is not None:
            out[f"{prefix}_atoms"] = self.atoms
            out[f"{prefix}_atom_rounding"] = self.atom_rounding
        if self.rademacher_starts:
            out[f"{prefix}_rademacher"] = np.array(True)
        return out

    @classmethod
    def from_arrays(cls, prefix: str, arrays: dict[str, np.ndarray], dim: int,
                    null_weight: float | None = None) -> "SLQ":
        """The SLQ :meth:`to_arrays` wrote (``null_weight`` for entries that kept it elsewhere)."""
        null = float(arrays[f"{prefix}_null"]) if f"{prefix}_null" in arrays else float(null_weight or 0.0)
        slack = arrays.get(f"{prefix}_span_slack")
        return cls.from_tridiagonals(arrays[f"{prefix}_alphas"], arrays[f"{prefix}_betas"],
                                     arrays[f"{prefix}_lengths"], arrays[f"{prefix}_norms_sq"], dim, null,
                                     complete=arrays[f"{prefix}_complete"], spans=arrays.get(f"{prefix}_spans"),
                                     span_slack=0.0 if slack is None else float(slack),
                                     atoms=arrays.get(f"{prefix}_atoms"),
                                     atom_rounding=arrays.get(f"{prefix}_atom_rounding"),
                                     rademacher_starts=bool(arrays.get(f"{prefix}_rademacher", False)))

    def truncated(self, steps: int) -> "SLQ":
        """The same probes with only their first ``steps`` Lanczos steps (a free convergence check:
        the Gauss rule of m/2 steps against that of m steps)."""
        lengths = np.minimum(self.lengths, steps)
        complete = self.complete & (self.lengths <= steps) if self.complete is not None else None
        spans = self.spans & (self.lengths <= steps) if self.spans is not None else None
        return SLQ.from_tridiagonals(self.alphas, self.betas, lengths, self.norms_sq, self.dim, self.null_weight,
                                     complete=complete if complete is not None else np.zeros(len(lengths), bool),
                                     spans=spans, span_slack=self.span_slack, atoms=self.atoms,
                                     atom_rounding=self.atom_rounding, rademacher_starts=self.rademacher_starts)

    @classmethod
    def concatenate(cls, runs: list["SLQ"]) -> "SLQ":
        """One SLQ of all probes of several runs on the same operator (more probes, possibly longer ones) and the
        same deflation (a ValueError otherwise)."""
        width = max(r.alphas.shape[1] for r in runs)
        first = runs[0]
        if any(r.atom_count != first.atom_count or (r.atom_count and not np.array_equal(r.atoms, first.atoms))
               for r in runs):
            raise ValueError("SLQ runs with different deflated top Ritz vectors cannot be pooled")
        spans = (np.concatenate([r.spans if r.spans is not None else np.zeros(len(r.lengths), bool) for r in runs])
                 if any(r.spans is not None for r in runs) else None)
        return cls.from_tridiagonals(np.concatenate([pad_columns(r.alphas, width) for r in runs]),
                                     np.concatenate([pad_columns(r.betas, max(width - 1, 0)) for r in runs]),
                                     np.concatenate([r.lengths for r in runs]),
                                     np.concatenate([r.norms_sq for r in runs]), first.dim, first.null_weight,
                                     complete=np.concatenate([r.complete for r in runs]), spans=spans,
                                     span_slack=max(r.span_slack for r in runs), atoms=first.atoms,
                                     atom_rounding=first.atom_rounding,
                                     rademacher_starts=all(r.rademacher_starts for r in runs))

    def quadrature(self, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Per-probe estimates of ``z^T f(H) z`` (mean: tr f(H)): ``||z||^2 Σ_j w_j f(θ_j)`` plus the null part
        and the deflated top Ritz values' ``Σ_i f(θ_i)``."""
        null = (self.null_weight * float(f(np.zeros(1))[0]) if self.null_weight else 0.0) + self.atom_part(f)
        return np.array([n2 * float(np.sum(w * f(t))) + null
                         for n2, w, t in zip(self.norms_sq, self.weights, self.nodes)])

    def trace_of(self, f: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
        """``tr f(H)`` and its standard error over probes."""
        return mean_stderr(self.quadrature(f))

    def measure(self) -> tuple[np.ndarray, np.ndarray]:
        """The averaged spectral measure: all nodes and their weights (weights sum to 1; the deflated
        null space is one atom at 0).

        With a :meth:`spanning_probe` the measure is exact: every eigenvalue of the deflated operator once,
        each of mass 1/d, not the probes' random weights :math:`(z^\\top u_j)^2/d` on them (which put the
        measure of even a run that spans the space a W1 of ~7e-4 λmax from the spectrum on digits-cnn)."""
        spanned = self.spanned_eigenvalues()
        if spanned is not None:
            nodes, weights = spanned, np.full(len(spanned), 1.0 / self.dim)
        else:
            rules = self._deflated_rules if self.rademacher_starts and self.rule == "probe" else \
                list(zip(self.nodes, self.weights))
            nodes = np.concatenate([t for t, _ in rules])
            weights = np.concatenate([w * n2 for (_, w), n2 in zip(rules, self.norms_sq)]) / (len(rules) * self.dim)
        if self.null_weight:
            nodes, weights = np.append(nodes, 0.0), np.append(weights, self.null_weight / self.dim)
        if self.atom_count:
            nodes, weights = np.append(nodes, self.atoms), np.append(weights, np.full(self.atom_count, 1 / self.dim))
        return nodes, weights / weights.sum()

    @cached_property
    def _deflated_rules(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each probe's rule for :meth:`measure` with its converged Ritz pairs as exact atoms
        (:func:`converged_ritz_rule`): the probe's own Gauss rule where nothing converged."""
        return [converged_ritz_rule(self.alphas[p], self.betas[p], int(n), float(n2)) or (t, w)
                for p, (n, n2, t, w) in enumerate(zip(self.lengths, self.norms_sq, self.nodes, self.weights))]

    def density(self, grid: np.ndarray, width: float) -> np.ndarray:
        """Gaussian-smoothed spectral density on ``grid`` (integrates to ~1)."""
        nodes, weights = self.measure()
        return gaussian_smooth(grid, nodes, weights, width)


def deflate_rows(weights: np.ndarray, atoms: np.ndarray, norms_sq: np.ndarray) -> tuple[np.ndarray, int]:
    r"""Quadrature weights [k, n] (each row a probe's, summing to 1) with the nodes ``atoms`` [n] (bool: converged
    Ritz pairs) as exact atoms, and how many atoms.

    Probe p's estimate of :math:`\mathrm{tr} f(H)` becomes :math:`\sum_{j\in A} f(\theta_j) + (\|z_p\|^2 -
    |A|) \sum_{j\notin A} \tilde w_{pj} f(\theta_j)`, with :math:`\tilde w_{pj}` its weights off the atoms
    renormalised: each converged eigenvalue gets exactly its mass 1/d instead of a random weight
    :math:`(z_p^\top y_j)^2/d` (relative spread :math:`\sqrt{2}` for one probe), and only the unresolved rest is
    estimated by the probes. The outlying eigenvalues are the ones that converge first, and a random weight on an
    eigenvalue far from the bulk is what moves the density most (in W1), so this removes the largest part of SLQ's
    error at no HVP (a deflated SLQ; Lin, Saad & Yang, SIAM Rev. 58, 2016, sec. 5). ``norms_sq`` [k]: the probes'
    :math:`\|z_p\|^2` (Rademacher starts: :math:`E (z^\top u)^2 = 1`).

    Left undeflated (the weights as given, 0 atoms) when a probe's start has less than ATOM_REST_FLOOR of its
    expected share :math:`1 - |A|/\|z_p\|^2` off the atoms: its start then lies mostly in the converged space,
    which happens when H has few distinct eigenvalues of a multiplicity the Krylov spaces have not found in full
    (the atoms would undercount them).

    >>> w, count = deflate_rows(np.array([[0.5, 0.3, 0.2]]), np.array([False, False, True]), np.array([4.0]))
    >>> [round(float(x), 4) for x in w[0]], count  # the atom gets 1/4; the rest keeps its 5:3 split of 3/4
    ([0.4688, 0.2812, 0.25], 1)
    """
    count = int(atoms.sum())
    norms_sq = np.asarray(norms_sq, dtype=np.float64)[:, None]
    rest = weights[:, ~atoms]
    rest_mass = rest.sum(1, keepdims=True)
    share = np.clip(1.0 - count / norms_sq, 0.0, 1.0)
    if count == 0 or np.any(rest_mass < ATOM_REST_FLOOR * share):
        return weights, 0
    out = np.empty_like(weights)
    out[:, atoms] = 1.0 / norms_sq
    out[:, ~atoms] = rest / rest_mass * share
    return out / out.sum(1, keepdims=True), count


def exact_atoms(theta: np.ndarray, residuals: np.ndarray, rtol: float = ATOM_RTOL,
                isolated: bool = True) -> np.ndarray:
    """[n] bool: the Ritz values ``theta`` (ascending) that are exact atoms of the density: residual bound at most
    ``rtol`` × |θ| (relative to itself: a long run resolves a bulk of tiny eigenvalues near 0 to within a small
    fraction of λmax without resolving how many there are) and, ``isolated``, at most half the gap to the next
    Ritz values: for the Ritz values of one start vector, which meets each eigenvalue once, so that no other
    Ritz value, nor a copy a three-term recurrence makes once orthogonality is lost (a ghost), claims the same
    eigenvalue. The union of several probes' spaces has orthonormal Ritz vectors: c pairs there certify c
    eigenvalues with multiplicity, and equal Ritz values are a repeated eigenvalue (``isolated=False``).

    >>> theta, residuals = np.array([0.0, 1e-4, 1.0, 2.0, 2.0 + 1e-9]), np.array([1e-9, 1e-6, 1e-6, 1e-9, 1e-9])
    >>> exact_atoms(theta, residuals), exact_atoms(theta, residuals, isolated=False)
    (array([False, False,  True, False, False]), array([False, False,  True,  True,  True]))
    """
    if not len(theta):
        return np.zeros(0, dtype=bool)
    converged = residuals <= rtol * np.abs(theta)
    if not isolated:
        return converged
    gaps = np.minimum(np.r_[np.inf, np.diff(theta)], np.r_[np.diff(theta), np.inf])
    return converged & (residuals <= gaps / 2)


def converged_ritz_rule(alphas: np.ndarray, betas: np.ndarray, n: int, norm_sq: float,
                        rtol: float = ATOM_RTOL) -> tuple[np.ndarray, np.ndarray] | None:
    r"""One Rademacher probe's quadrature rule with its isolated converged Ritz pairs as exact atoms
    (:func:`deflate_rows`), or None when there are none (or the probe has fewer than 3 steps).

    The rule is the Gauss rule of the probe's leading ``n − 1`` steps, whose next off-diagonal β is known: Ritz
    value :math:`\theta_i` has residual :math:`r_i = \beta |s_{n-1,i}|`, and an eigenvalue lies within
    :math:`r_i` of it; the atoms are :func:`exact_atoms`, isolated. Measured on digits-mlp (1 probe × 1,280 steps,
    d = 2,410, 5 seeds): 1,082 of 1,279 Ritz values are atoms and the W1 of the measure from the exact spectrum
    falls from 8.7e-4 to 1.1e-5 λmax.

    >>> from wdbound.curvature import DenseOperator
    >>> ev = np.r_[np.linspace(0.0, 1.0, 200), 5.0, 9.0]
    >>> z = torch.from_numpy(np.random.default_rng(0).choice([-1.0, 1.0], size=(1, 202)))
    >>> run = lanczos(DenseOperator(torch.from_numpy(np.diag(ev))), z, 30)
    >>> nodes, weights = converged_ritz_rule(run.alphas[0], run.betas[0], 30, 202.0)
    >>> [round(float(w * 202), 6) for w in weights[nodes > 4]]  # 5 and 9 each get exactly 1/d
    [1.0, 1.0]
    """
    if n < 3:
        return None
    theta, weights, residuals = leading_ritz(alphas, betas, n)
    rows, count = deflate_rows(weights[None], exact_atoms(theta, residuals, rtol), np.array([norm_sq]))
    return (theta, rows[0]) if count else None


def leading_ritz(alphas: np.ndarray, betas: np.ndarray, n: int,
                 index: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Ritz values (ascending) of one probe's leading ``n − 1`` steps, whose next off-diagonal β is known,
    with their Gauss weights (first components squared) and residual bounds ``β |s_last|`` (n >= 3). All of
    them, or only the one at ``index`` (ascending order)."""
    from scipy.linalg import eigh_tridiagonal

    a, b = np.asarray(alphas[:n - 1], dtype=np.float64), np.asarray(betas[:n - 2], dtype=np.float64)
    theta, vectors = (eigh_tridiagonal(a, b) if index is None else
                      eigh_tridiagonal(a, b, select="i", select_range=(index, index), lapack_driver="stebz"))
    return theta, vectors[0] ** 2, abs(float(betas[n - 2])) * np.abs(vectors[-1])


def slq(operator, probes: int, steps: int, generator: torch.Generator) -> SLQ:
    """SLQ with ``probes`` Rademacher start vectors and ``steps`` Lanczos steps each."""
    z = rademacher(probes, operator.dim, generator, operator.dtype, operator.device)
    return slq_from_run(lanczos(operator, z, steps), operator.dim)


def _gauss_rule(alphas: np.ndarray, betas: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of the Gauss rule of the first ``n`` steps of one tridiagonal."""
    theta, vectors = np.linalg.eigh(tridiagonal(alphas[:n], betas[: n - 1]))
    return theta, vectors[0] ** 2


SPURIOUS_WEIGHT = 1e-24  # a Ritz value with less weight than this after the space is full is rounding, not spectrum


def slq_from_run(run: LanczosRun, dim: int, null_weight: float = 0.0, space_dim: int | None = None,
                 precision: float | None = None, ritz: "RitzDeflation | None" = None) -> SLQ:
    """The SLQ of a finished run. A low-memory (three-term) run counts as exact only where it broke down.

    ``space_dim``: the dimension of the space the start vectors were projected on, when they are (projected)
    Rademacher vectors (``dim`` minus the deflated directions); :meth:`SLQ.measure` then gives converged Ritz
    pairs their exact mass (:attr:`SLQ.rademacher_starts`). A full re-orthogonalisation probe whose Krylov
    space filled it spans it (:meth:`SLQ.spanning_probe`); each of its Ritz values is then an eigenvalue to
    within ``span_slack`` = sqrt(n) · ``precision`` · ‖T‖ (``precision``: the relative size of an HVP's
    rounding, the breakdown tolerance of the run; ‖T‖ by Gershgorin). ``ritz``: the top Ritz vectors the run's
    probes and products were projected off (their values become :attr:`SLQ.atoms`; such a run never counts as
    spanning: its eigenvalues are those of a compression, not of H)."""
    complete = None if run.reorth == "full" else run.lengths < run.alphas.shape[1]
    slq = SLQ.from_tridiagonals(run.alphas, run.betas, run.lengths, run.norms**2, dim, null_weight, run,
                                complete=complete, atoms=None if ritz is None else ritz.values,
                                atom_rounding=None if ritz is None else ritz.rounding)
    if space_dim is None:
        return slq
    slq = replace(slq, rademacher_starts=True)
    if run.reorth != "full" or ritz is not None:
        return slq
    lengths, invariant = np.asarray(run.lengths), np.asarray(run.lengths) < run.alphas.shape[1]
    spans = np.array([(n == space_dim or (n > space_dim and stopped))
                      and int(np.sum(w < SPURIOUS_WEIGHT)) == n - space_dim
                      for n, stopped, w in zip(lengths, invariant, slq.weights)], dtype=bool)
    slack = 0.0
    if spans.any():
        betas = np.abs(pad_columns(run.betas, run.alphas.shape[1]))
        gershgorin = np.abs(run.alphas) + betas + np.pad(betas[:, :-1], ((0, 0), (1, 0)))
        slack = math.sqrt(space_dim) * float(precision or 0.0) * float(gershgorin.max())
    return replace(slq, spans=spans, span_slack=slack)


def hvp_precision(operator) -> float:
    """The relative size below which a Lanczos residual counts as zero for ``operator``'s HVPs (its default
    breakdown tolerance: 100 eps in float64, 1,000 eps in float32)."""
    return _breakdown_tol(operator, None)


@dataclass(frozen=True)
class LanczosMemory:
    """How the Lanczos runs of one analysis may use memory (chosen by :mod:`wdbound.memory`).

    ``full_basis_bytes``: an SLQ run keeps its whole basis (full re-orthogonalisation) when k·m·d float64
    values fit in it, else it runs :func:`lanczos_blocks` with ``probe_block`` probes at a time.
    ``restart``: None keeps every Lanczos vector of the top-eigenvalue and spectrum-end runs (at most
    ``max_steps``); an integer caps that basis by thick restarts (:func:`top_eigenvalues`); ``ends_restart``
    is the same cap for the runs that find the spectrum's ends (:func:`spectral_support`).
    """

    full_basis_bytes: float = math.inf
    probe_block: int = 16
    restart: int | None = None
    ends_restart: int | None = None
    ritz: bool = False  # a low-memory density run may project off the top-k run's Ritz vectors (RitzDeflation)

    def full(self, probes: int, steps: int, dim: int) -> bool:
        """The default policy: whole bases, no restarts."""
        return probes * min(steps, dim) * dim * VECTOR_DTYPE.itemsize <= self.full_basis_bytes


FULL_MEMORY = LanczosMemory()


def run_lanczos(operator, draw: Callable[[int], torch.Tensor], probes: int, steps: int,
                memory: LanczosMemory | None = None) -> LanczosRun:
    """SLQ's Lanczos runs under a memory policy: the whole basis (full re-orthogonalisation) when it fits,
    else :func:`lanczos_blocks`. ``draw(count)`` gives the next ``count`` start vectors ``[count, d]``."""
    memory = memory or FULL_MEMORY
    if memory.full(probes, steps, operator.dim):
        return lanczos(operator, draw(probes), steps)
    return lanczos_blocks(operator, draw, probes, steps, block=memory.probe_block)


GAP_SEPARATION = 10.0  # error_bounds: the gap refines a residual bound only when it is this many times larger


def error_bounds(theta: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    r"""Error bound of each Ritz value: :math:`\min(r_i,\ r_i^2/\delta_i)`.

    ``theta`` [n] are all the Ritz values of one Rayleigh–Ritz projection and ``residuals`` [n] their
    residual norms :math:`r_i = \|Hy_i - \theta_i y_i\|`. For a symmetric matrix, :math:`r_i` bounds the distance
    from :math:`\theta_i` to an eigenvalue (Parlett 1998, Thm 4.5.1), and when the other eigenvalues are at least
    :math:`\delta_i` away from :math:`\theta_i` the gap theorem tightens it to :math:`r_i^2/\delta_i` (Parlett
    1998, Thm 11.7.1; Kato–Temple). The gap is estimated, as Lanczos codes do (Parlett 1998, sec. 13.2), from
    the other Ritz values widened by their own residuals, :math:`\delta_i = \min_{j\ne i}|\theta_i-\theta_j| - r_j`:
    each of them has an eigenvalue within :math:`r_j`. That estimate cannot see an eigenvalue the space has not
    found yet: a Ritz value that still blends two eigenvalues has a large residual, so the gap is used only when
    it is ``GAP_SEPARATION`` (10) times the residual; a cluster or an early, unresolved Ritz value keeps the plain
    residual bound. Measured on outlier-plus-bulk matrices (tests/test_union_ritz.py): while a run is still
    short, an eigenvalue the space has not found can put a Ritz value up to twice its refined bound away (16 of
    2,940 values, 1 to 3 probes of 3 to 12 steps); at the point where a run certifies its top 5 to 1e-3, none of
    160 runs (1 to 5 probes, 40 seeds) was off the true top 5 by more than 1e-3 (worst 4.3e-4), with 22-28 %
    fewer HVPs than the residuals alone.

    >>> error_bounds(np.array([10.0, 5.0, 0.0]), np.array([0.1, 0.1, 0.1])).round(5).tolist()
    [0.00204, 0.00204, 0.00204]
    >>> error_bounds(np.array([10.0, 9.95]), np.array([0.1, 0.01])).tolist()  # overlapping: the residuals
    [0.1, 0.01]
    """
    theta, residuals = np.asarray(theta, dtype=np.float64), np.asarray(residuals, dtype=np.float64)
    if theta.shape != residuals.shape or theta.ndim != 1:
        raise ValueError(f"theta {theta.shape} and residuals {residuals.shape} must be the same 1-D shape")
    if len(theta) < 2:
        return residuals.copy()
    gaps = np.abs(theta[:, None] - theta[None, :]) - residuals[None, :]
    np.fill_diagonal(gaps, np.inf)
    gap = gaps.min(1)
    separated = gap > GAP_SEPARATION * residuals
    refined = np.where(separated, residuals ** 2 / np.where(separated, gap, 1.0), residuals)
    return np.minimum(residuals, refined)


@dataclass(frozen=True)
class TopEigen:
    """Largest eigenvalues by Lanczos, each with its residual bound and its error bound |θ - λ| <= bound
    (:func:`error_bounds`: the residual, tightened by the gap to the other Ritz values)."""

    values: np.ndarray  # [top] descending
    residuals: np.ndarray  # [top] residual norms |β_m u_m|: each bounds the distance to an eigenvalue
    bounds: np.ndarray  # [top] error bounds, at most the residuals (error_bounds); what `converged` tests
    steps: int
    converged: bool
    tol: float
    span: KrylovSpan | None = field(default=None, repr=False, compare=False)  # the run's basis (never cached)

    def to_json(self) -> dict:
        """Values, residual and error bounds, steps, convergence and tolerance."""
        return {"values": self.values.tolist(), "residuals": self.residuals.tolist(), "bounds": self.bounds.tolist(),
                "steps": self.steps, "converged": self.converged, "tol": self.tol}

    def __repr__(self) -> str:
        values = ", ".join(f"{v:.6g}" for v in self.values)
        return (f"TopEigen([{values}], max error bound {float(np.max(self.bounds)):.1e}, {self.steps} Lanczos steps, "
                f"{'converged' if self.converged else 'NOT converged'})")


class RitzDeflation:
    r"""Top Ritz pairs of a top-eigenvalue run, removed from an SLQ run and added back as atoms.

    The rows of ``vectors`` [k, d] are orthonormal (float64, on the operator's device); ``values`` [k] are
    their Ritz values and ``rounding`` [k] the error the HVPs' precision allows on each. An SLQ run then uses
    probes and products projected off them (:meth:`project`): it sees the compression :math:`H_\perp` of H to their
    orthogonal complement, whose spectrum has no top outliers left. A three-term (low-memory) run loses
    orthogonality when Ritz values converge, and the top outliers converge first: removed, they no longer
    send ghost copies through the run, and its nodes stay in the bulk (docs/intervals.md measures it).

    The trace is then :math:`\mathrm{tr} f(H) = \mathrm{tr} f(H_\perp) + \sum_i f(\theta_i) + \delta`
    for **any** orthonormal rows, with :math:`|\delta|` at most
    :math:`k\,V(f; [L, R]) + \sum_i V(f; [\theta_i - r_i, R])` (:math:`V`: total variation, :math:`[L, R]`
    the spectrum's support, :math:`r_i` the rounding). Cauchy interlacing gives it: the compression's
    eigenvalues satisfy :math:`\lambda_{j+k} \le \mu_j \le \lambda_j`, each gap between consecutive
    eigenvalues of H lies in at most k of the intervals :math:`[\lambda_{j+k}, \lambda_j]`, and the Ritz values
    of any k orthonormal vectors lie below the eigenvalues of the same rank (:math:`\theta_i \le \lambda_i \le
    R`). The values need only that: they are the run's Ritz values, taken before the vectors are projected off
    the null directions and orthonormalised again (which moves them by the square of the vectors' tiny null
    components).
    :func:`~wdbound.estimators.quadrature_interval.atom_slack` computes it. It is a k/d share of f's
    variation: negligible at the dimensions where the three-term recurrence runs (d of 10^5 and more). The
    vectors need not be eigenvectors for the bound to hold; the nearer they are, the fewer outliers the
    compression keeps.

    >>> H = torch.diag(torch.tensor([5.0, 1.0, 0.5, 0.0], dtype=torch.float64))
    >>> span = KrylovSpan(torch.eye(4, dtype=torch.float64)[:2], 6.0, projected=np.diag([5.0, 1.0]), residual=0.3)
    >>> top = TopEigen(np.array([5.0]), np.zeros(1), np.zeros(1), 2, True, 1e-9, span)
    >>> ritz = RitzDeflation.from_top(top)  # both kept vectors
    >>> ritz.values.tolist(), ritz.project(torch.ones(1, 4, dtype=torch.float64)).tolist()
    ([5.0, 1.0], [[0.0, 0.0, 1.0, 1.0]])
    >>> RitzDeflation.from_top(top, tol=0.1).values.tolist()  # e2's Ritz pair has residual 0.3: not converged
    [5.0]
    """

    def __init__(self, vectors: torch.Tensor, values: np.ndarray, rounding: np.ndarray) -> None:
        self.vectors = vectors
        self.values = np.asarray(values, dtype=np.float64)
        self.rounding = np.asarray(rounding, dtype=np.float64)

    @property
    def count(self) -> int:
        """k: how many directions are deflated."""
        return int(len(self.values))

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """Rows ``vectors`` [b, d] with their components along the deflated directions removed, computed in
        float64 and returned in the rows' dtype (a float32 HVP's product is cast up for it: no second copy of
        the k vectors)."""
        wide = vectors.to(self.vectors.dtype)
        out = wide - (wide @ self.vectors.T) @ self.vectors
        return out.to(vectors.dtype)

    @classmethod
    def from_top(cls, top: TopEigen, project: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 precision: float = 0.0, tol: float = math.inf,
                 max_count: int | None = None) -> "RitzDeflation | None":
        """The Ritz pairs of ``top``'s run (its basis ``top.span`` with the projected matrix and last β), largest
        first: by default every vector the run kept at its end (the wanted top-k, and the largest others a
        thick restart keeps with them), else those whose residual norm is within ``tol`` × their value.
        Deflating the kept vectors that have not converged costs nothing (the bound holds for any orthonormal
        rows) and removes most of their outliers' weight too (docs/intervals.md measures both choices).
        ``project`` (the null-space deflation) is applied before the vectors are orthonormalised, so they lie in
        the space the SLQ probes live in. ``precision``: the HVPs' relative rounding
        (:func:`hvp_precision`); each value may be off by sqrt(n) · precision · ‖T‖. None when the run kept no
        basis, nothing qualifies, or more than ``max_count`` qualify (checked before any vector is built)."""
        span = top.span
        if span is None or span.projected is None or span.residual is None or span.mix is not None:
            return None
        theta, vectors = np.linalg.eigh(span.projected)
        residuals = np.abs(span.residual * vectors[-1])
        keep = np.flatnonzero(residuals <= tol * np.maximum(np.abs(theta), 1e-300))
        keep = keep[np.argsort(theta[keep])[::-1]]
        if not len(keep) or (max_count is not None and len(keep) > max_count):
            return None
        basis = span.basis
        coefficients = torch.from_numpy(vectors[:, keep].T.copy()).to(basis.device, basis.dtype)
        ritz = (coefficients @ basis).to(VECTOR_DTYPE)  # [k, d]
        if project is not None:
            ritz = project(ritz)
        for i in range(len(ritz)):  # Gram-Schmidt in place, twice (no [d, k] copies of a QR)
            for _ in range(2):
                if i:
                    ritz[i] -= (ritz[:i] @ ritz[i]) @ ritz[:i]
                ritz[i] /= ritz[i].norm()
        rounding = math.sqrt(len(theta)) * precision * float(np.abs(span.projected).sum(1).max())
        return cls(ritz, theta[keep], np.full(len(keep), rounding))


def within(bounds: np.ndarray, values: np.ndarray, tol: float, atol: float = 0.0) -> bool:
    """Whether every error bound is at most ``tol`` × |value| (or ``atol``)."""
    return bool(np.all(bounds <= np.maximum(tol * np.maximum(np.abs(values), 1e-300), atol)))


def top_eigenvalues(operator, top: int, generator: torch.Generator, *, tol: float | None = None,
                    max_steps: int = 300, check_every: int = 5, atol: float = 0.0,
                    restart: int | None = None, min_steps: int = 0, refined: bool = True) -> TopEigen:
    """The ``top`` largest eigenvalues (algebraic), by Lanczos from one Gaussian start vector.

    Stops once every wanted Ritz value's error bound is at most ``tol |θ_i|``: the residual
    ``|β_m u_{m,i}|``, which for a symmetric matrix bounds the distance to an eigenvalue, tightened by
    the gap to the other Ritz values (:func:`error_bounds`; ``refined=False``: the residual alone, for a
    caller that widens the value by it). Default ``tol``: 1e-9 in float64, 1e-4 in float32; ``atol`` accepts a
    residual below it whatever the relative one. A single start vector
    finds each distinct eigenvalue once: an exactly repeated top eigenvalue is
    reported once. ``max_steps`` caps the HVPs; ``min_steps`` goes on past convergence to that many steps
    (a larger Krylov space for :mod:`~wdbound.estimators.krylov_trace`; the values only get more accurate;
    with ``restart``, at most ``restart`` steps: the span cannot grow beyond the kept vectors).

    ``restart`` (an integer >= top + 2) keeps at most that many Lanczos vectors: when the basis is full,
    the ``top`` wanted Ritz vectors and as many more of the largest are kept and the run goes on from the
    residual, the thick-restart Lanczos of Wu & Simon (SIAM J. Matrix Anal. Appl. 22, 2000). The residual
    bound certifies the values exactly as without restarts. None keeps every vector (up to ``max_steps``).
    """
    dim = operator.dim
    top = min(top, dim)
    if tol is None:
        tol = 1e-9 if operator.dtype == torch.float64 else 1e-4
    max_steps = min(max_steps, dim)
    z = torch.randn(1, dim, generator=generator, dtype=torch.float64).to(operator.device, VECTOR_DTYPE)
    min_steps = min(min_steps, max_steps)
    if restart is not None and restart < max_steps:
        size = max(int(restart), top + 2)
        # A restarted basis holds at most `size` vectors: going past them for min_steps would only add restarts
        # (and their [size/2, d] temporaries) without a larger span.
        return _thick_restart(operator, top, z[0], tol, atol, max_steps, size, check_every, min(min_steps, size),
                              refined)
    state = _Incremental(operator, z[0])
    while True:
        state.step()
        m = state.m
        if state.broke or m >= max_steps or (m >= top + 2 and m % check_every == 0):
            values, residuals, bounds = state.ritz(top)
            ok = within(bounds if refined else residuals, values, tol, atol)
            if (ok and m >= min_steps) or state.broke or m >= max_steps:
                projected = tridiagonal(np.asarray(state.alphas), np.asarray(state.betas[:m - 1]))
                span = KrylovSpan(state.basis[:m], float(np.sum(state.alphas)), projected=projected,
                                  residual=float(state.last_beta), relation=state.relation(projected))
                return TopEigen(values, residuals, bounds, m, ok or state.broke, tol, span)


def _thick_restart(operator, top: int, start: torch.Tensor, tol: float, atol: float, max_steps: int, size: int,
                   check_every: int, min_steps: int = 0, refined: bool = True) -> TopEigen:
    """Thick-restart Lanczos (Wu & Simon 2000) with at most ``size`` vectors of d; see :func:`top_eigenvalues`.

    The projected matrix ``T = Vᵀ H V`` is kept dense (it is an arrowhead plus a tridiagonal after a
    restart); full re-orthogonalisation against the current ``size`` vectors gives its new column, and
    ``H V = V T + w e_nᵀ`` holds throughout, so ``|β y_{n,i}|`` bounds each Ritz value's error.
    """
    dim = operator.dim
    basis = torch.zeros(size, dim, dtype=VECTOR_DTYPE, device=operator.device)
    projected = np.zeros((size, size))
    q = start / start.norm()
    n = matvecs = 0
    scale = 0.0
    eps = torch.finfo(operator.dtype).eps
    keep_count = min(size - 1, max(top + 1, (size + top) // 2))
    while True:
        basis[n] = q
        w = _apply(operator, q[None])[0]
        matvecs += 1
        span = basis[: n + 1]
        h = span @ w
        w = w - span.T @ h
        again = span @ w
        w = w - span.T @ again
        column = (h + again).double().cpu().numpy()
        projected[: n + 1, n] = column
        projected[n, : n + 1] = column
        beta = float(w.norm())
        n += 1
        scale = max(scale, float(np.abs(column).sum()) + beta)
        broke = beta <= 100 * eps * scale or n >= dim
        if broke or matvecs >= max_steps or n == size or (n >= top + 2 and matvecs % check_every == 0):
            theta, vectors = np.linalg.eigh(projected[:n, :n])
            order = np.argsort(theta)[::-1]
            residuals = np.abs((0.0 if broke else beta) * vectors[n - 1, order])
            values = theta[order[:top]]
            bounds = error_bounds(theta[order], residuals)[:top]
            ok = within(bounds if refined else residuals[:top], values, tol, atol)
            if (ok and matvecs >= min_steps) or broke or matvecs >= max_steps:
                reduced = projected[:n, :n].copy()
                coupling = np.zeros((n, 1))
                coupling[n - 1, 0] = 0.0 if broke else 1.0  # H Vᵀ = Vᵀ T + w e_nᵀ
                span = KrylovSpan(basis[:n], float(np.trace(reduced)), projected=reduced,
                                  residual=0.0 if broke else beta,
                                  relation=LanczosRelation(reduced, w[None], coupling, reduced))
                return TopEigen(values, residuals[:top], bounds, matvecs, ok or broke, tol, span)
            if n == size:
                kept = order[:keep_count]
                ritz = torch.from_numpy(vectors[:, kept].T.copy()).to(basis.device, basis.dtype)
                basis[:keep_count] = ritz @ basis[:n]
                projected[:] = 0.0
                projected[np.arange(keep_count), np.arange(keep_count)] = theta[kept]
                n = keep_count
        q = w / beta


class _Incremental:
    """Single-vector Lanczos, one step at a time, with full re-orthogonalisation (every vector kept).

    The basis lives in one buffer grown by half its size when full (amortised O(m·d) copying, where stacking
    a list at every step copied O(m²·d): 28 GB over a 25-step run on ResNet-18); :attr:`basis` is a view."""

    GROWTH = 1.5

    def __init__(self, operator, start: torch.Tensor) -> None:
        self.op = operator
        self._store = torch.empty(min(operator.dim, 16), start.shape[0], dtype=start.dtype, device=start.device)
        self._store[0] = start / start.norm()
        self._count = 1
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.broke = False
        self.scale = 0.0

    @property
    def basis(self) -> torch.Tensor:
        """The Lanczos vectors so far [n, d] (a view of the buffer)."""
        return self._store[:self._count]

    def _append(self, vector: torch.Tensor) -> None:
        if self._count == self._store.shape[0]:
            size = min(self.op.dim, max(self._count + 1, int(self.GROWTH * self._count)))
            grown = torch.empty(size, self._store.shape[1], dtype=self._store.dtype, device=self._store.device)
            grown[:self._count] = self._store[:self._count]
            self._store = grown
        self._store[self._count] = vector
        self._count += 1

    @property
    def m(self) -> int:
        return len(self.alphas)

    def relation(self, projected: np.ndarray) -> LanczosRelation:
        """``H Qᵀ = Qᵀ T + β q_{m+1} e_mᵀ`` of the basis so far (``projected``: its T), the next vector read in
        place (a zero coupling after a breakdown)."""
        m = self.m
        coupling = np.zeros((m, 1))
        if self.broke or self._count <= m:
            return LanczosRelation(projected, self._store[:0], coupling[:, :0], projected)
        coupling[m - 1, 0] = self.last_beta
        return LanczosRelation(projected, self._store[m:m + 1], coupling, projected)

    def step(self) -> None:
        """One HVP and the recurrence, in place on the fresh product (no d-sized temporaries: on ResNet-18 each
        one is a page-faulted 90 MB)."""
        basis = self.basis
        q = basis[-1]
        w = _apply(self.op, q[None])[0]
        if w.data_ptr() == q.data_ptr():  # an operator that hands back its input (the identity)
            w = w.clone()
        alpha = float(w @ q)
        w.add_(q, alpha=-alpha)
        if self.betas:
            w.add_(basis[-2], alpha=-self.betas[-1])
        reorthogonalise(basis[None], w[None], inplace=True)
        beta = float(w.norm())
        self.alphas.append(alpha)
        self.scale = max(self.scale, abs(alpha) + beta)
        eps = torch.finfo(self.op.dtype).eps
        if beta <= 100 * eps * self.scale or self._count >= self.op.dim:
            self.broke = True
            self.last_beta = 0.0
            return
        self.last_beta = beta
        self.betas.append(beta)
        self._append(w.div_(beta))

    def ritz(self, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``top`` largest Ritz values, their residual norms and error bounds (:func:`error_bounds`)."""
        m = self.m
        theta, vectors = np.linalg.eigh(tridiagonal(np.asarray(self.alphas), np.asarray(self.betas[: m - 1])))
        order = np.argsort(theta)[::-1]
        residuals = np.abs(self.last_beta * vectors[-1, order])
        return theta[order[:top]], residuals[:top], error_bounds(theta[order], residuals)[:top]


class _Negated:
    """``-H`` behind the operator interface (the smallest eigenvalue of H is the largest of -H)."""

    def __init__(self, operator) -> None:
        self.op, self.dim, self.dtype, self.device = operator, operator.dim, operator.dtype, operator.device

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        return -self.op.matmat(vectors)


@dataclass(frozen=True)
class Support:
    """``[low, high]`` containing the spectrum: the extreme Ritz values widened by their residual bounds."""

    low: float
    high: float
    steps: int  # Lanczos steps spent on the two ends
    low_from: str = "lanczos on -H"  # or "density run": its own converged bottom Ritz value (density_low_end)

    def to_json(self) -> dict:
        """The ends and how they were found."""
        return {"low": self.low, "high": self.high, "steps": self.steps, "low_from": self.low_from}

    def bounds(self) -> tuple[float, float]:
        """(L, R): an interval containing every eigenvalue."""
        return self.low, self.high


def spectral_support(operator, generator: torch.Generator, top: TopEigen | None = None, *,
                     rtol: float = 1e-4, max_steps: int = 150, restart: int | None = None,
                     low: float | None = None) -> Support:
    """Ends of the spectrum for the quadrature intervals (``wdbound.estimators.quadrature_interval``).

    Each end is a Lanczos Ritz value from a random start, minus (bottom) or plus (top) its
    residual, the residual driven below ``rtol`` times the spectral radius (``restart``: at most that
    many Lanczos vectors, see :func:`top_eigenvalues`). The extreme Ritz
    values converge first (Kaniel–Paige), and a random start misses an extreme eigenvector with
    probability zero; ``top`` reuses a finished top-eigenvalue run. ``low``: a bottom end found already
    (:func:`density_low_end`), so no run on ``-H`` is made.
    """
    if top is None:
        top = top_eigenvalues(operator, 1, generator, tol=rtol, max_steps=max_steps, restart=restart, refined=False)
    high = float(top.values[0] + top.residuals[0])
    if low is not None:
        return Support(min(low, high), high, int(top.steps), "density run")
    bottom = top_eigenvalues(_Negated(operator), 1, generator, tol=rtol, atol=rtol * abs(high),
                             max_steps=max_steps, restart=restart, refined=False)
    low = float(-(bottom.values[0] + bottom.residuals[0]))
    return Support(min(low, high), high, int(top.steps + bottom.steps))


def _extreme_ritz(run: "SLQ", p: int, top: bool) -> tuple[float, float, float, int] | None:
    """Probe ``p``'s largest (``top``) or smallest Ritz value of its leading ``n − 1`` steps (whose next β is
    known), its residual ``β |s_last|``, ‖T‖ by Gershgorin (the scale of the HVPs' rounding) and ``n``; None
    below 3 steps."""
    n = int(run.lengths[p])
    if n < 3:
        return None
    value, _, residual = leading_ritz(run.alphas[p], run.betas[p], n, index=n - 2 if top else 0)
    a, b = np.abs(run.alphas[p, :n - 1]), np.abs(run.betas[p, :n - 2])
    norm = float(np.max(a + np.r_[b, 0.0] + np.r_[0.0, b]))
    return float(value[0]), float(residual[0]), norm, n


def density_top(run: "SLQ", precision: float, tol: float) -> TopEigen | None:
    """The largest eigenvalue as the density run has found it itself (no HVP), or None (no probe has 3 steps).

    For each probe, the largest Ritz value θ of its leading ``n − 1`` steps (whose next off-diagonal β is
    known) has residual ``r = β |s_last|``, widened by ``sqrt(n) · precision · ‖T‖`` (the HVPs' rounding): an
    eigenvalue lies within ``r`` of θ, and θ is at most λmax (a Ritz value). The probe with the largest θ gives
    the value; ``converged`` when its ``r <= tol · |θ|``. A run of 1,280 steps (``err``'s density) certifies
    λmax at least as well as a top-1 run of a few hundred steps from another start: :func:`sharper_top` keeps
    whichever bound is smaller. The run's operator is the one its probes saw (null directions projected off:
    exact eigenvectors of eigenvalue 0, so λmax > 0 is unchanged).

    >>> import numpy as np
    >>> from wdbound.curvature import DenseOperator
    >>> op = DenseOperator(torch.from_numpy(np.diag(np.linspace(-1.0, 4.0, 30))))
    >>> top = density_top(slq_from_run(lanczos(op, torch.ones(1, 30, dtype=torch.float64), 30), 30), 0.0, 1e-6)
    >>> bool(abs(top.values[0] - 4.0) <= top.residuals[0] + 1e-12), top.converged
    (True, True)
    """
    best = None
    for p in range(len(run.lengths)):
        found = _extreme_ritz(run, p, top=True)
        if found is not None and (best is None or found[0] > best[0]):
            value, residual, rounding, n = found
            best = (value, residual + math.sqrt(n) * precision * rounding, n - 1)
    if best is None:
        return None
    value, reach, steps = best
    return TopEigen(np.array([value]), np.array([reach]), np.array([reach]), steps,
                    within(np.array([reach]), np.array([value]), tol), tol)


def sharper_top(top: TopEigen, other: TopEigen | None) -> TopEigen:
    """``other``'s top-1 in place of ``top``'s when its error bound is smaller (``top``'s Krylov basis kept for
    the deflated trace); ``top`` itself for top-k with k > 1 (a single density probe's Ritz values repeat a
    converged eigenvalue once orthogonality is lost) or when ``other`` is None.

    >>> a = TopEigen(np.array([2.0]), np.array([1e-3]), np.array([1e-3]), 60, False, 1e-9)
    >>> b = TopEigen(np.array([2.0004]), np.array([1e-12]), np.array([1e-12]), 1279, True, 1e-9)
    >>> sharper_top(a, b).steps, sharper_top(b, a).steps, sharper_top(a, None).steps
    (1279, 1279, 60)
    """
    if other is None or len(top.values) != 1 or float(other.bounds[0]) >= float(top.bounds[0]):
        return top
    return replace(other, span=top.span)


def density_low_end(run: "SLQ", high: float, precision: float, rtol: float = 1e-4) -> float | None:
    """The bottom end of the spectrum the density run has found itself, or None (then :func:`spectral_support`
    makes its run on ``-H``).

    For each probe, the smallest Ritz value θ of its leading ``n − 1`` steps (whose next off-diagonal β is
    known) has residual ``r = β |s_last|``: an eigenvalue lies within ``r`` of θ. When ``r <= rtol · |high|``
    (the criterion of the run on ``-H``), ``θ − r − sqrt(n) · precision · ‖T‖`` (the HVPs' rounding) is that
    probe's end; the result is the lowest over such probes, None when no probe converged there (fewer than 3
    steps, or a short run). After the defaults' 1,280 steps the residuals on the zoo are ~1e-48 (docs/intervals.md).
    The run's operator is the one its probes saw (null directions and deflated Ritz vectors projected off),
    whose spectrum is what the run's quadrature brackets.

    >>> import numpy as np
    >>> H = np.diag(np.linspace(-1.0, 4.0, 30))
    >>> from wdbound.curvature import DenseOperator
    >>> op = DenseOperator(torch.from_numpy(H))
    >>> slq = slq_from_run(lanczos(op, torch.ones(1, 30, dtype=torch.float64), 30), 30)
    >>> low = density_low_end(slq, 4.0, 0.0)  # at most -1, the smallest eigenvalue, and within its residual
    >>> bool(-1.0 - 1e-6 <= low <= -1.0)
    True
    """
    ends = []
    for p in range(len(run.lengths)):
        found = _extreme_ritz(run, p, top=False)
        if found is not None and found[1] <= rtol * abs(high):
            value, reach, norm, n = found
            ends.append(value - reach - math.sqrt(n) * precision * norm)
    return min(ends) if ends else None
