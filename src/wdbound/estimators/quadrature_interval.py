r"""Intervals for stochastic Lanczos quadrature: the Chebyshev–Markov–Stieltjes bracket plus the probe spread.

For one start vector :math:`z` the Lanczos recursion of :math:`m` steps gives
the Gauss rule (nodes :math:`\theta_1 < \dots < \theta_m`, weights
:math:`w_j`) of the spectral measure
:math:`\mu_z = \sum_i (v_i^\top z)^2/\|z\|^2\, \delta_{\lambda_i}`. Every
measure with the same first :math:`2m` moments satisfies the
Chebyshev–Markov–Stieltjes inequalities (Akhiezer 1965, Thm. 3.2.2; Golub &
Meurant, *Matrices, Moments and Quadrature*, 2010, Sec. 6.2)

.. math::
    \sum_{j<k} w_j \;\le\; \mu_z((-\infty, \theta_k)) \;\le\;
    \mu_z((-\infty, \theta_k]) \;\le\; \sum_{j\le k} w_j .

Between the distribution functions of the Gauss measure shifted one node to
the left and one node to the right, quantile coupling maps the mass
:math:`w_k` into :math:`[\theta_{k-1}, \theta_{k+1}]` (with
:math:`\theta_0 = L`, :math:`\theta_{m+1} = R` the ends of the spectrum), so for
*any* bounded :math:`f`

.. math::
    \sum_k w_k \min_{[\theta_{k-1},\theta_{k+1}]} f \;\le\; \int f\,d\mu_z \;\le\;
    \sum_k w_k \max_{[\theta_{k-1},\theta_{k+1}]} f .

The Gauss nodes are not the only points where the distribution function is pinned. For any :math:`t`, the
Gauss–Radau rule with a node fixed at :math:`t` bounds :math:`\mu_z((-\infty, t))` and
:math:`\mu_z((-\infty, t])` in the same way (:func:`radau_distribution_bounds`), and the quantile coupling
then runs over the Gauss nodes and these points together (:func:`coupled_bracket`). Up to
:data:`RADAU_POINTS` such points per probe are placed in the gaps between nodes that carry most of the bracket's
width (:func:`radau_points`): measured at d = 10^5, 64 points take 25–35 % off the width, at the cost of one
partial tridiagonal eigenproblem each (no HVP).

That is a bound, not an estimate, on the quadrature error of each probe; it
needs only the ends :math:`[L, R]` of the spectrum, and the extremes of
:math:`f` on intervals, which are cheap for a function that is monotone between
known breakpoints (:class:`PiecewiseMonotone`). A probe whose recursion broke
down spans an invariant subspace: its Gauss rule is exact and its bracket has
width zero.

With Rademacher probes, :math:`\mathrm{tr} f(H) = E_z[z^\top f(H) z]` lies
between :math:`E_z[\text{lower}_z]` and :math:`E_z[\text{upper}_z]`; the probe
means of the two brackets estimate those without bias, so

.. math::
    [\overline{\text{lower}} - c\,\mathrm{se}(\text{lower}),\;
     \overline{\text{upper}} + c\,\mathrm{se}(\text{upper})]

covers :math:`\mathrm{tr} f(H)` with the probability of a two-sided
:math:`c`-standard-error interval (:data:`STDERR_MULTIPLIER` = 3: 99.7 % for a
normal mean, 99 % for Student's t with 15 degrees of freedom).

With fewer than :data:`SAMPLE_STDERR_MIN_PROBES` probes the spread of the
probes says little about their variance (one probe: nothing), so for
(deflated) Rademacher probes the standard error comes from a bound instead
(:func:`probe_variance_bound`): :math:`\mathrm{Var}(z^\top M z) = 2\sum_{i\ne j}
M_{ij}^2 \le 2\|M - cI\|_F^2` for every :math:`c`, and
:math:`\|f(H) - cI\|_F^2 = \sum_i (f(\lambda_i) - c)^2` is itself a quadrature,
bracketed from above by the same rule. Long runs of one or two probes are then
usable: at large d a probe's spread is tiny and the steps buy resolution.

>>> import numpy as np

>>> from wdbound.estimators.lanczos import SLQ
>>> f = PiecewiseMonotone(lambda t: t**2, breakpoints=(0.0,))
>>> run = SLQ.from_tridiagonals(np.array([[1.0, 2.0]]), np.array([[1.0]]), np.array([2]), np.array([1.0]), 4)
>>> low, high = probe_brackets(run, f, support=(0.0, 4.0))
>>> bool(low[0] <= run.quadrature(f)[0] <= high[0])
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from scipy.linalg import eigh_tridiagonal

from ..stats import mean_stderr

STDERR_MULTIPLIER = 3.0
SAMPLE_STDERR_MIN_PROBES = 8  # below this many probes, Rademacher runs take their stderr from the variance bound
# Gauss–Radau refinement of each probe's bracket: at most this many extra points per probe (0: the Gauss nodes
# only), RADAU_PER_GAP in each of the widest gaps; measured in docs/intervals.md (64: 25–35 % narrower at 10^5).
RADAU_POINTS = 64
RADAU_PER_GAP = 8
RADAU_MASS_SLACK = 1e-11  # each Radau distribution bound is loosened by this much mass (the eigensolver's rounding)


@dataclass(frozen=True)
class PiecewiseMonotone:
    """A function of an eigenvalue that is monotone between consecutive ``breakpoints``.

    Its minimum and maximum over any interval are then attained at the interval's
    ends or at a breakpoint inside it, which :meth:`extremes` evaluates.
    """

    fn: Callable[[np.ndarray], np.ndarray]
    breakpoints: tuple[float, ...]

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return self.fn(t)

    def extremes(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Elementwise ``(min, max)`` of the function over ``[low_i, high_i]`` (arrays of one shape)."""
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        candidates = [low, high] + [np.clip(b, low, high) for b in self.breakpoints]
        values = self.fn(np.stack(candidates))
        return values.min(0), values.max(0)

    def variation(self, low: float, high: float) -> float:
        """The total variation of the function over ``[low, high]``: the sum of its changes between the ends and
        the breakpoints inside (it is monotone in between).

        >>> PiecewiseMonotone(lambda t: t**2, breakpoints=(0.0,)).variation(-1.0, 2.0)  # 1 down, then 4 up
        5.0
        """
        if high <= low:
            return 0.0
        points = np.array([low] + sorted(b for b in self.breakpoints if low < b < high) + [high], dtype=np.float64)
        return float(np.sum(np.abs(np.diff(self.fn(points)))))


@dataclass(frozen=True)
class Interval:
    """An estimate with an interval ``[low, high]`` that covers the exact value (see the module docstring)."""

    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """(high − low) / 2."""
        return 0.5 * (self.high - self.low)

    def relative_half_width(self) -> float:
        """Half-width over |estimate| (inf for a zero estimate with a non-zero width)."""
        if self.high == self.low:
            return 0.0
        return self.half_width / abs(self.estimate) if self.estimate else math.inf

    def affine(self, scale: float, shift: float = 0.0) -> "Interval":
        """``scale * x + shift`` applied to the estimate and both ends (ends swap for a negative scale)."""
        a, b = scale * self.low + shift, scale * self.high + shift
        return Interval(scale * self.estimate + shift, min(a, b), max(a, b))

    def contains(self, value: float, slack: float = 0.0) -> bool:
        """low − slack <= value <= high + slack."""
        return self.low - slack <= value <= self.high + slack

    def to_json(self) -> list[float]:
        """[low, high]."""
        return [self.low, self.high]

    @classmethod
    def point(cls, value: float) -> "Interval":
        """An exact value: an interval of width zero."""
        return cls(value, value, value)


def atom_slack(run, f: PiecewiseMonotone, support: tuple[float, float]) -> float:
    r"""How far ``tr f(H)`` can be from ``tr f(H_⊥) + Σ_i f(θ_i)`` when the run's probes and products were
    projected off k top Ritz vectors (:class:`~wdbound.estimators.lanczos.RitzDeflation`, whose docstring
    proves it): :math:`k\,V(f; [L, R]) + \sum_i V(f; [\theta_i - r_i, R])`. Zero without such atoms."""
    if not run.atom_count:
        return 0.0
    low, high = float(support[0]), float(support[1])
    tops = sum(f.variation(min(t - r, high), high) for t, r in zip(run.atoms, run.atom_rounding))
    return run.atom_count * f.variation(low, high) + tops


def probe_brackets(run, f: PiecewiseMonotone, support: tuple[float, float],
                   points: int = RADAU_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe ``(lower, upper)`` bounds on ``z^T f(H) z`` from the Gauss rule of an SLQ run, refined at up to
    ``points`` Radau points per probe (:func:`probe_bracket`).

    ``support`` = ``(L, R)`` must contain every eigenvalue of the operator the run
    used. The deflated null part (``run.null_weight``) enters exactly; deflated top Ritz values
    (``run.atoms``) enter with :func:`atom_slack` on each side.
    """
    null = (run.null_weight * float(f(np.zeros(1))[0]) if run.null_weight else 0.0) + run.atom_part(f)
    slack = atom_slack(run, f, support)
    lower, upper = [], []
    for p, (n2, w, t) in enumerate(zip(run.norms_sq, run.weights, run.nodes)):
        if run.exact_probe(p):
            value = n2 * float(np.sum(w * f(t))) + null
            lower.append(value - slack)
            upper.append(value + slack)
            continue
        low, high = probe_bracket(run, p, f, support, points)
        lower.append(n2 * low + null - slack)
        upper.append(n2 * high + null + slack)
    return np.array(lower), np.array(upper)


def probe_bracket(run, probe: int, f: PiecewiseMonotone, support: tuple[float, float],
                  points: int = RADAU_POINTS) -> tuple[float, float]:
    """``(lower, upper)`` on ``∫ f dμ_z`` (unit mass) for one probe: the quantile coupling over its Gauss nodes
    and up to ``points`` Radau points (:func:`radau_points`; none for a union rule, whose nodes are not the
    probe's own, or a run of fewer than 3 steps). With no points it is ``Σ_k w_k [min, max]`` of ``f`` over the
    cells ``[θ_{k-1}, θ_{k+1}]``."""
    w, t = run.weights[probe], run.nodes[probe]
    n = int(run.lengths[probe])
    cumulative = np.cumsum(w)
    xs, below, up_to = t, cumulative - w, cumulative
    cells = _cells(run, probe, support)
    if points > 0 and run.rule == "probe" and n >= 3:
        extra = []
        for x in radau_points(run, probe, f, support, points, cells):
            key = (probe, float(x))
            if key not in run.radau_cache:
                run.radau_cache[key] = radau_distribution_bounds(run.alphas[probe], run.betas[probe], n, x, t)
            if run.radau_cache[key] is not None:
                extra.append((x, *run.radau_cache[key]))
        if extra:
            e = np.array(extra)
            xs = np.concatenate([t, e[:, 0]])
            below = np.concatenate([below, np.maximum(e[:, 1] - RADAU_MASS_SLACK, 0.0)])
            up_to = np.concatenate([up_to, np.minimum(e[:, 2] + RADAU_MASS_SLACK, 1.0)])
            order = np.argsort(xs, kind="stable")
            xs, below, up_to = xs[order], below[order], up_to[order]
    left, right = cells
    return coupled_bracket(xs, below, up_to, f, (float(left[0]), float(right[-1])))


def last_pivot(alphas: np.ndarray, betas: np.ndarray, k: int, t: float) -> float | None:
    r"""The last pivot of the :math:`LDL^T` factorisation of :math:`T_k - tI` (:math:`T_k`: the leading
    :math:`k \times k` block of the tridiagonal ``alphas``, ``betas``), i.e.
    :math:`1 / [(T_k - tI)^{-1}]_{kk}`; None where it is zero or not finite (``t`` an eigenvalue of
    :math:`T_k`). An intermediate zero pivot gives an infinite next one and the recurrence goes on from it
    (the Sturm-sequence convention), which is the right limit.

    >>> import numpy as np
    >>> a, b = np.array([2.0, 3.0, 1.0]), np.array([1.0, 0.5])
    >>> T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    >>> bool(np.isclose(last_pivot(a, b, 3, 0.7), 1 / np.linalg.inv(T - 0.7 * np.eye(3))[2, 2]))
    True
    >>> last_pivot(np.array([1.0]), np.array([]), 1, 1.0) is None
    True
    """
    pivot = np.float64(alphas[0]) - t
    with np.errstate(divide="ignore"):
        for i in range(1, k):
            pivot = alphas[i] - t - betas[i - 1] ** 2 / pivot
    return float(pivot) if np.isfinite(pivot) and pivot != 0.0 else None


def radau_distribution_bounds(alphas: np.ndarray, betas: np.ndarray, n: int, t: float,
                              nodes: np.ndarray) -> tuple[float, float] | None:
    r"""``(below, up_to)`` with :math:`\text{below} \le \mu((-\infty, t))` and
    :math:`\mu((-\infty, t]) \le \text{up\_to}` for every measure :math:`\mu` whose first :math:`2n-2`
    moments are those of the Lanczos tridiagonal (``alphas``, ``betas``: one probe, ``n`` steps, its Gauss
    ``nodes`` ascending); None where ``t`` is a node or the construction breaks down.

    The :math:`n`-point Gauss–Radau rule with a node fixed at :math:`t` is the Gauss rule of :math:`T_n` with
    its last diagonal entry replaced by :math:`t + \beta_{n-1}^2 [(T_{n-1} - tI)^{-1}]_{n-1,n-1}` (Golub 1973;
    Golub & Meurant 2010, Sec. 6.2), exact to degree :math:`2n-2`. Through :math:`t` it is the principal
    representation of those moments, so the Chebyshev–Markov–Stieltjes inequalities hold at :math:`t`: the
    rule's mass below :math:`t` and up to :math:`t` (Akhiezer 1965, Thm. 3.2.2). The modification is rank one
    in the last entry, so the nodes interlace with the Gauss nodes: :math:`t` is the Radau node of index
    ``#(nodes < t)``, less one when the entry was raised; only the eigenvectors on the smaller side of it are
    computed (bisection and inverse iteration on that index range).

    >>> import numpy as np
    >>> from wdbound.estimators.lanczos import _gauss_rule
    >>> a, b = np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0])   # the measure of diag(-√2, 0, √2) from e_1
    >>> nodes, _ = _gauss_rule(a, b, 3)
    >>> below, up_to = radau_distribution_bounds(a, b, 3, 0.5, nodes)
    >>> bool(below <= 0.75 <= up_to)  # μ((-∞, 0.5]): 1/4 at -√2 and 1/2 at 0
    True
    >>> theta, vectors = np.linalg.eigh(np.diag([0, 0, 0.5 + 1 / 1.5]) + np.diag(b, 1) + np.diag(b, -1))
    >>> np.allclose([below, up_to], [vectors[0, 0] ** 2, vectors[0, 0] ** 2 + vectors[0, 1] ** 2])  # dense Radau
    True
    """
    a = np.array(alphas[:n], dtype=np.float64)
    b = np.array(betas[:n - 1], dtype=np.float64)
    pivot = last_pivot(a, b, n - 1, t)
    if pivot is None:
        return None
    shift = t + b[n - 2] ** 2 / pivot - a[n - 1]
    a[n - 1] += shift
    j = int(np.searchsorted(nodes, t))
    if (j < n and nodes[j] == t) or not np.isfinite(a[n - 1]) or shift == 0.0:
        return None
    index = j - 1 if shift > 0 else j  # a raised (lowered) entry moves each node up (down) within its gap
    low_side = index <= (n - 1) // 2
    values, vectors = eigh_tridiagonal(a, b, select="i", select_range=(0, index) if low_side else (index, n - 1),
                                       lapack_driver="stebz")
    k = index if low_side else 0  # the fixed node's position among the computed ones
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))) if n > 1 else 0.0, abs(t), 1e-300)
    if k >= len(values) or abs(values[k] - t) > 1e-8 * scale:
        return None
    weights = vectors[0] ** 2
    if low_side:
        below = float(np.sum(weights[:k]))
        return below, below + float(weights[k])
    above = float(np.sum(weights[1:]))
    return 1.0 - above - float(weights[0]), 1.0 - above


def radau_points(run, probe: int, f: PiecewiseMonotone, support: tuple[float, float],
                 points: int = RADAU_POINTS, cells: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Where :func:`probe_bracket` reads Radau bounds for ``f``: :data:`RADAU_PER_GAP` points in each of the
    ``points // RADAU_PER_GAP`` gaps between consecutive nodes (the support's ends included) that the widest
    cells ``[θ_{k-1}, θ_{k+1}]`` cover (width ``w_k · (max f − min f)``), spaced evenly in
    ``asinh(x / s)`` (``s``: ``f``'s smallest non-zero breakpoint, e.g. the floor: even in log |x| far from
    zero, linear near it), plus ``f``'s breakpoints inside those gaps. Points on a node are dropped.
    ``cells``: the probe's :func:`_cells`, when the caller has them."""
    t, w = run.nodes[probe], run.weights[probe]
    left, right = cells if cells is not None else _cells(run, probe, support)
    fmin, fmax = f.extremes(left, right)
    width = w * (fmax - fmin)
    xs = np.concatenate([[left[0]], t, [right[-1]]])
    gaps = np.zeros(len(xs) - 1)
    gaps[:-1] += width
    gaps[1:] += width
    scales = [abs(b) for b in f.breakpoints if b != 0.0]
    s = min(scales) if scales else max(abs(float(xs[-1]) - float(xs[0])), 1e-300) * 1e-9
    chosen = []
    for g in np.argsort(gaps, kind="stable")[::-1][:max(points // RADAU_PER_GAP, 1)]:
        lo, hi = float(xs[g]), float(xs[g + 1])
        if not gaps[g] > 0.0 or hi <= lo:
            continue
        u = np.linspace(math.asinh(lo / s), math.asinh(hi / s), RADAU_PER_GAP + 2)[1:-1]
        chosen.extend(s * np.sinh(u))
        chosen.extend(bp for bp in f.breakpoints if lo < bp < hi)
    chosen = np.unique(np.array(chosen, dtype=np.float64))
    return chosen[~np.isin(chosen, t)]


def coupled_bracket(xs: np.ndarray, below: np.ndarray, up_to: np.ndarray, f: PiecewiseMonotone,
                    support: tuple[float, float]) -> tuple[float, float]:
    r"""Bounds on ``∫ f dμ`` for every probability measure on ``support`` = ``[L, R]`` with
    ``μ((−∞, x_i)) ≥ below_i`` and ``μ((−∞, x_i]) ≤ up_to_i`` at the ascending points ``xs``.

    Then :math:`D(x) = \max_{x_i \le x} \text{below}_i \le F(x) \le U(x) = \min_{x_i \ge x} \text{up\_to}_i`,
    so the quantile :math:`F^{-1}(q)` lies in :math:`[x_{i-1}, x_{i'}]` with :math:`i` the first point where
    :math:`U \ge q` and :math:`i'` the first where :math:`D \ge q` (``L`` and ``R`` past the ends), and
    :math:`\int f\,d\mu = \int_0^1 f(F^{-1}(q))\,dq` lies between the integrals of ``f``'s minimum and maximum
    over those ranges; both are step functions of ``q``.

    >>> f = PiecewiseMonotone(lambda t: t, breakpoints=())
    >>> coupled_bracket(np.array([1.0]), np.array([0.0]), np.array([1.0]), f, (0.0, 2.0))  # one node, mass 1
    (0.0, 2.0)
    """
    lower_cdf = np.maximum.accumulate(below)
    upper_cdf = np.minimum.accumulate(up_to[::-1])[::-1]
    qs = np.unique(np.clip(np.concatenate([[0.0, 1.0], lower_cdf, upper_cdf]), 0.0, 1.0))
    mid, mass = 0.5 * (qs[1:] + qs[:-1]), np.diff(qs)
    first_upper = np.searchsorted(upper_cdf, mid, side="left")
    first_lower = np.searchsorted(lower_cdf, mid, side="left")
    low = np.where(first_upper > 0, xs[np.maximum(first_upper - 1, 0)], support[0])
    high = np.where(first_lower < len(xs), xs[np.minimum(first_lower, len(xs) - 1)], support[1])
    fmin, fmax = f.extremes(np.minimum(low, high), np.maximum(low, high))
    return float(np.sum(mass * fmin)), float(np.sum(mass * fmax))


def _cells(run, probe: int, support: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The CMS cells ``[θ_{k-1}, θ_{k+1}]`` of probe ``probe``'s Gauss nodes (ends: the spectrum's support)."""
    t = run.nodes[probe]
    left = np.concatenate([[min(float(support[0]), t[0])], t[:-1]])
    right = np.concatenate([t[1:], [max(float(support[1]), t[-1])]])
    return left, right


def spanned_interval(run, f: PiecewiseMonotone) -> Interval | None:
    """``tr f(H)`` when a probe's Krylov space is the whole deflated space (:meth:`SLQ.spanning_probe`), else
    None. Its Ritz values are then every eigenvalue of the deflated operator, each within ``run.span_slack`` of
    one: the estimate is ``Σ_j f(θ_j) + null_weight · f(0)`` and the interval takes each term's extremes over
    ``[θ_j − slack, θ_j + slack]``. No probe error: the trace is read off the eigenvalues, not sampled.

    >>> import numpy as np
    >>> from wdbound.estimators.lanczos import SLQ
    >>> run = SLQ.from_tridiagonals(np.array([[1.0, 3.0]]), np.array([[1.0]]), np.array([2]), np.array([2.0]), 3,
    ...                             null_weight=1.0, spans=np.array([True]))
    >>> interval = spanned_interval(run, PiecewiseMonotone(lambda t: t + 1.0, breakpoints=()))
    >>> round(interval.estimate, 12)  # Σ (θ_j + 1) = tr T + 2 = 6, plus the null dimension's f(0) = 1
    7.0
    """
    eigenvalues = run.spanned_eigenvalues()
    if eigenvalues is None:
        return None
    null = run.null_weight * float(f(np.zeros(1))[0]) if run.null_weight else 0.0
    fmin, fmax = f.extremes(eigenvalues - run.span_slack, eigenvalues + run.span_slack)
    return Interval(float(np.sum(f(eigenvalues))) + null, float(np.sum(fmin)) + null, float(np.sum(fmax)) + null)


def probe_variance_bound(run, f: PiecewiseMonotone, support: tuple[float, float], shift_directions: int = 0) -> float:
    r"""An upper bound on the variance of one probe's ``z^T f(H) z`` for (deflated) Rademacher probes.

    The run's probes are :math:`z' = Pz`, :math:`z` Rademacher and :math:`P` the projection off the exact null
    space (coordinate zero rows and ``shift_directions`` logit-shift directions, each a centring over the
    classes). :math:`M = P f(H) P` has the eigenvalues :math:`f(\lambda_i)` on the range of :math:`P`
    (:math:`n = d - \text{null}` of them) and 0 on its null space, and a zero row on every zero-row
    coordinate. The off-diagonal part does not see :math:`cI`, and :math:`(M - cI)_{ii} = -c` on the zero rows,
    so for every :math:`c`

    .. math::
        \mathrm{Var}(z^\top M z) = 2\sum_{i\ne j} M_{ij}^2 \le 2\left(\|M - cI\|_F^2 - c^2 n_{\text{zero}}\right)
        = 2\left(n\int (f - c)^2\,d\mu + c^2\,\text{shift\_directions}\right),

    with :math:`\mu` the spectral measure of the deflated operator; the integral is bracketed from above per
    probe by the CMS cells and averaged over probes (each probe's measure estimates :math:`\mu`). The
    :math:`c^2` term is real variance, not slack: :math:`\|Pz\|^2` itself varies with :math:`z` once the
    classes are centred. Minimised over :math:`c` on a grid. Deflated top Ritz vectors (``run.atoms``) are k
    more directions of the same kind as the logit shift: :math:`n` drops by k and the :math:`c^2` term counts them.
    """
    n_range = max(run.space_dim, 0.0)
    shift_directions = shift_directions + run.atom_count
    cells = [(run.weights[p], *f.extremes(*_cells(run, p, support))) for p in range(len(run.nodes))]
    centre = float(np.mean([np.sum(w * f(t)) for w, t in zip(run.weights, run.nodes)]))
    best = math.inf
    for c in np.linspace(0.0, 1.0, 51) * centre:
        # max over a cell of (f - c)^2 is at the cell's f-extreme farthest from c
        second = np.mean([float(np.sum(w * np.maximum((lo - c) ** 2, (hi - c) ** 2))) for w, lo, hi in cells])
        best = min(best, 2.0 * (n_range * second + c * c * shift_directions))
    return best


def bounded_stderr(run, f: PiecewiseMonotone, support: tuple[float, float],
                   shift_directions: int | None) -> float | None:
    """The standard error of the probe mean from :func:`probe_variance_bound`, when it replaces the probes'
    spread: deflated Rademacher probes (``shift_directions`` not None) and fewer than
    ``SAMPLE_STDERR_MIN_PROBES`` of them; else None."""
    probes = len(run.nodes)
    if shift_directions is None or probes >= SAMPLE_STDERR_MIN_PROBES:
        return None
    if run.spanning_probe() is not None:
        return 0.0
    return math.sqrt(probe_variance_bound(run, f, support, shift_directions) / probes)


def trace_interval(run, f: PiecewiseMonotone, support: tuple[float, float],
                   multiplier: float = STDERR_MULTIPLIER, shift_directions: int | None = None,
                   stderr: float | None = None, points: int = RADAU_POINTS) -> Interval:
    """``tr f(H)``: the Gauss estimate and an interval from the probe brackets ± ``multiplier`` stderr each.

    ``shift_directions`` (None: the probes are not deflated Rademacher vectors, e.g. ``Q^½ z``) says how many
    logit-shift directions the probes were projected off; with fewer than ``SAMPLE_STDERR_MIN_PROBES`` probes
    the stderr is then :func:`bounded_stderr` (or ``stderr``, when the caller computed it already), else the
    probes' spread. A stderr of zero spread (all probes equal) adds nothing; one probe without the bound gives
    an infinite interval. Deflated Rademacher probes of which one spans the whole deflated space give the
    trace from its Ritz values (:func:`spanned_interval`). ``points``: Radau points per probe
    (:func:`probe_bracket`).
    """
    spanned = spanned_interval(run, f) if shift_directions is not None else None
    if spanned is not None:
        return spanned
    estimate = float(np.mean(run.quadrature(f)))
    lower, upper = probe_brackets(run, f, support, points)
    low_mean, low_se = mean_stderr(lower, math.inf)
    high_mean, high_se = mean_stderr(upper, math.inf)
    bound = stderr if stderr is not None else bounded_stderr(run, f, support, shift_directions)
    if bound is not None:
        low_se = high_se = bound
    low, high = low_mean - multiplier * low_se, high_mean + multiplier * high_se
    return Interval(estimate, min(low, estimate), max(high, estimate))


def quadrature_half_width(run, f: PiecewiseMonotone, support: tuple[float, float]) -> float:
    """Mean half-width of the per-probe brackets: the part of the interval more Lanczos steps would shrink."""
    lower, upper = probe_brackets(run, f, support)
    return float(np.mean(upper - lower)) / 2


def monotone_parts(f: PiecewiseMonotone, origin: float) -> tuple[PiecewiseMonotone, PiecewiseMonotone]:
    r"""Two non-decreasing functions ``(P, N)`` with :math:`f(t) = f(\mathrm{origin}) + P(t) - N(t)` for
    :math:`t \ge` ``origin``: P the rises of f between ``origin`` and t, N its falls (the Jordan decomposition of a
    piecewise-monotone function, summed exactly over its monotone pieces).

    >>> f = PiecewiseMonotone(lambda t: (t - 1.0) ** 2, breakpoints=(1.0,))
    >>> P, N = monotone_parts(f, 0.0)
    >>> t = np.array([0.0, 0.5, 1.0, 3.0])
    >>> (f(np.zeros(1)) + P(t) - N(t)).tolist(), P(t).tolist(), N(t).tolist()
    ([1.0, 0.25, 0.0, 4.0], [0.0, 0.0, 0.0, 4.0], [0.0, 0.75, 1.0, 1.0])
    """
    nodes = np.array([origin] + sorted(b for b in f.breakpoints if b > origin), dtype=np.float64)
    values = f(nodes)
    steps = np.diff(values)
    rises = np.concatenate([[0.0], np.cumsum(np.maximum(steps, 0.0))])
    falls = np.concatenate([[0.0], np.cumsum(np.maximum(-steps, 0.0))])

    def part(sign: float, before: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def fn(t):
            t = np.maximum(np.asarray(t, dtype=np.float64), origin)
            piece = np.searchsorted(nodes, t, side="right") - 1
            return before[piece] + np.maximum(sign * (f(t) - values[piece]), 0.0)
        return fn

    return (PiecewiseMonotone(part(1.0, rises), f.breakpoints), PiecewiseMonotone(part(-1.0, falls), f.breakpoints))


def perturbed_interval(run, f: PiecewiseMonotone, support: tuple[float, float], eps: float,
                       shift_directions: int | None = 0, points: int = RADAU_POINTS) -> Interval:
    r"""``tr f(H)`` when the run's products were those of :math:`\tilde H = H + E` with :math:`\|E\| \le`
    ``eps`` (an approximate HVP, e.g. a finite difference): an interval that covers :math:`\mathrm{tr} f(H)`.

    By Weyl's inequality each eigenvalue of H lies within ``eps`` of one of :math:`\tilde H`'s, in order. With
    :func:`monotone_parts` :math:`f = f(o) + P - N` (P, N non-decreasing, o below the widened support),
    :math:`\sum_i P(\lambda_i) \le \mathrm{tr}\,P(\tilde H + \epsilon I)` and
    :math:`\sum_i N(\lambda_i) \ge \mathrm{tr}\,N(\tilde H - \epsilon I)` (and the other way round for the
    lower end). :math:`\tilde H \pm \epsilon I` has the run's Lanczos vectors with every α shifted by
    :math:`\pm\epsilon`, so each of the four traces is :func:`trace_interval` of a shifted copy of the run on the
    support widened by ``eps``: the interval is ``d f(o)`` + the upper (lower) end of P's shifted up (down)
    − the lower (upper) end of N's shifted down (up). The estimate is the unshifted run's Gauss estimate.
    Each of the two ends uses two intervals at the run's multiplier (a union of two tail events).
    A deflated null part (``run.null_weight``: exactly-zero rows, where E is 0 too, since the approximate
    product is exactly 0 there) is not shifted: each trace adds it at 0, as :func:`trace_interval` does.

    >>> import torch
    >>> from wdbound.curvature import DenseOperator
    >>> from wdbound.estimators.lanczos import lanczos, slq_from_run
    >>> ev = np.linspace(-1.0, 4.0, 30)
    >>> run = slq_from_run(lanczos(DenseOperator(torch.diag(torch.from_numpy(ev + 1e-3))),
    ...                            torch.ones(1, 30, dtype=torch.float64), 30), 30)  # H~ = H + 1e-3 I
    >>> f = PiecewiseMonotone(lambda t: (t - 1.0) ** 2, breakpoints=(1.0,))
    >>> box = perturbed_interval(run, f, (-1.0 + 1e-3, 4.0 + 1e-3), 1e-3)
    >>> plain = trace_interval(run, f, (-1.0 + 1e-3, 4.0 + 1e-3), shift_directions=0)  # H~'s own, not H's
    >>> bool(box.low <= float(np.sum((ev - 1.0) ** 2)) <= box.high), bool(box.half_width > plain.half_width)
    (True, True)
    """
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps = {eps} must be finite and >= 0")
    if run.atom_count:
        raise ValueError("a run with deflated Ritz atoms: their eigenvalues are not shifted by E")
    low, high = float(support[0]) - eps, float(support[1]) + eps
    origin = low - 1.0 - abs(low)
    P, N = monotone_parts(f, origin)

    def shifted(delta: float):
        return replace(run, alphas=np.asarray(run.alphas, dtype=np.float64) + delta,
                       nodes=[np.asarray(n, dtype=np.float64) + delta for n in run.nodes], run=None)

    up, down = shifted(eps), shifted(-eps)
    p_up, p_down = (trace_interval(r, P, (low, high), shift_directions=shift_directions, points=points)
                    for r in (up, down))
    n_up, n_down = (trace_interval(r, N, (low, high), shift_directions=shift_directions, points=points)
                    for r in (up, down))
    base = run.dim * float(f(np.array([origin]))[0])
    estimate = float(np.mean(run.quadrature(f)))
    lower, upper = base + p_down.low - n_up.high, base + p_up.high - n_down.low
    return Interval(estimate, min(lower, estimate), max(upper, estimate))
