r"""Generalization-bound terms of Zhou et al. (TPAMI 2024), Section V: pure math on spectra.

Corollary 3 (the Table I quantity), with :math:`h(x) = \ln x + 1/x`:

.. math::
    x_{AdamW}(\sigma) = 2\rho b(\sqrt\sigma + \lambda)/\eta, \qquad
    x_{\ell_2}(\sigma) = 2\rho b(\sqrt\sigma + \lambda/\sqrt\sigma)/\eta,\qquad
    \mathrm{err} = \sum_i h(x(\sigma_i)) \approx d \sum_k w_k\, h(x(\max(|\theta_k|, \sigma_{floor}))).

Theorems 6/7 without :math:`Q \approx H^{-1/2}`, with :math:`Q = \mathrm{diag}(H_{ii})^{-1/2}`
and :math:`A = Q^{1/2} H Q^{1/2}` (docs/maths.md):

.. math::
    \mathrm{term} = -\ln\det M + \frac{\eta}{2\rho b}\mathrm{Tr}\,M + d\ln\frac{2b\rho}{\eta},\qquad
    \Phi = \sqrt{8/n}\,\sqrt{\mathrm{term} + c_0},\qquad
    c_0 = \frac{\|x_*\|^2}{2\rho} - \frac d2 + 2\ln\frac{2n}{\tau}.

Singular values below ``sigma_floor`` (and non-positive H_ii for Q) are
raised to the floor; the spectral mass (or count) affected is always reported.

Every SLQ figure carries an interval that covers the exact value: the
Chebyshev–Markov–Stieltjes bracket of each probe's Gauss rule plus three
standard errors of the probe spread
(:mod:`wdbound.estimators.quadrature_interval`). The integrands here are
monotone between known breakpoints, which is all the bracket needs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import WdboundError
from .estimators.quadrature_interval import (RADAU_POINTS, Interval, PiecewiseMonotone, bounded_stderr,
                                             spanned_interval, trace_interval)
from .stats import mean_stderr


@dataclass(frozen=True)
class BoundInputs:
    """Everything the formulas take besides the spectrum."""

    d: int
    n: int
    b: int
    eta: float
    lam: float
    rho: float
    tau: float = 0.05
    sigma_floor: float = 1e-6
    x_norm_sq: float = 0.0  # ||x*||^2

    def validate(self) -> None:
        """Raise a one-line :class:`WdboundError` naming the input when η, b, n, ρ or the σ-floor is not > 0, λ or
        ‖x*‖² is < 0, τ is outside (0, 1) or a value is not finite.

        >>> BoundInputs(d=10, n=100, b=8, eta=1e-3, lam=0.1, rho=float("inf")).validate()
        Traceback (most recent call last):
        ...
        wdbound.errors.WdboundError: rho = inf is not finite
        """
        for name, value in (("d", self.d), ("n", self.n), ("b", self.b)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise WdboundError(f"{name} = {value!r} must be a whole number", name)
        for name, value, param in (("eta", self.eta, "eta"), ("lambda", self.lam, "lam"), ("rho", self.rho, "rho"),
                                   ("tau", self.tau, "tau"), ("sigma floor", self.sigma_floor, "sigma_floor"),
                                   ("||x*||^2", self.x_norm_sq, "x_norm_sq")):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise WdboundError(f"{name} = {value!r} must be a number", param)
        for name, value, param in (("eta", self.eta, "eta"), ("lambda", self.lam, "lam"), ("rho", self.rho, "rho"),
                                   ("tau", self.tau, "tau"), ("sigma floor", self.sigma_floor, "sigma_floor"),
                                   ("||x*||^2", self.x_norm_sq, "x_norm_sq")):
            if not math.isfinite(value):
                raise WdboundError(f"{name} = {value:g} is not finite", param)
        checks = [(self.eta > 0, f"eta = {self.eta:g} must be > 0", "eta"),
                  (self.lam >= 0, f"lambda = {self.lam:g} must be >= 0", "lam"),
                  (self.b >= 1, f"b = {self.b} must be >= 1", "b"),
                  (self.n >= 1, f"n = {self.n} must be >= 1", "n"),
                  (self.rho > 0, f"rho = {self.rho:g} must be > 0", "rho"),
                  (0 < self.tau < 1, f"tau = {self.tau:g} must lie in (0, 1)", "tau"),
                  (self.sigma_floor > 0, f"sigma floor = {self.sigma_floor:g} must be > 0", "sigma_floor"),
                  (self.x_norm_sq >= 0, f"||x*||^2 = {self.x_norm_sq:g} must be >= 0", "x_norm_sq")]
        for ok, message, param in checks:
            if not ok:
                raise WdboundError(message, param)

    def to_json(self) -> dict:
        """The inputs by name."""
        return {"d": self.d, "n": self.n, "b": self.b, "eta": self.eta, "lam": self.lam, "rho": self.rho,
                "tau": self.tau, "sigma_floor": self.sigma_floor, "x_norm_sq": self.x_norm_sq}


FORMS = ("adamw", "l2-adam")


def h(x: np.ndarray) -> np.ndarray:
    """h(x) = ln x + 1/x (minimum 1 at x = 1)."""
    return np.log(x) + 1.0 / x


def x_of_sigma(sigma: np.ndarray, form: str, p: BoundInputs) -> np.ndarray:
    """Corollary 3's x(σ) for ``form`` (σ already floored, > 0)."""
    root = np.sqrt(sigma)
    if form == "adamw":
        return 2 * p.rho * p.b * (root + p.lam) / p.eta
    if form == "l2-adam":
        return 2 * p.rho * p.b * (root + p.lam / root) / p.eta
    raise WdboundError(f"unknown bound form {form!r}; use adamw or l2-adam", "optimizer")


def floored(values: np.ndarray, floor: float) -> np.ndarray:
    """max(|values|, floor): the singular values the formulas use."""
    return np.maximum(np.abs(values), floor)


def c0(p: BoundInputs) -> float:
    """c0 = ||x*||²/(2ρ) − d/2 + 2 ln(2n/τ), the constant under Φ's square root."""
    return p.x_norm_sq / (2 * p.rho) - p.d / 2 + 2 * math.log(2 * p.n / p.tau)


def phi(term: float, p: BoundInputs) -> float:
    """Φ = sqrt(8/n) sqrt(term + c0); NaN when term + c0 < 0 (the bound is then vacuous as printed)."""
    inner = term + c0(p)
    return math.sqrt(8 / p.n) * math.sqrt(inner) if inner >= 0 else math.nan


# ---------------------------------------------------------------- Corollary 3

@dataclass(frozen=True)
class Corollary3:
    """err of Corollary 3 for one form: the sum over d, the mean err/d (Table I), Φ, and the mass raised to the floor."""

    form: str
    err_sum: float
    err_sum_stderr: float
    err_mean: float  # err_sum / d: the Table I column
    err_mean_stderr: float
    phi: float
    mass_below_floor: float  # spectral mass with |θ| <= sigma_floor (raised to the floor)
    exact: bool
    err_mean_interval: Interval | None = None  # covers the exact err/d (SLQ only; exact values are points)
    mass_below_floor_interval: Interval | None = None  # covers the exact mass with |σ| <= floor (SLQ only)


def _signed(values) -> tuple[float, ...]:
    """Breakpoints in σ of a function of |σ|: 0 and each positive value with both signs."""
    positive = sorted({float(v) for v in values if v > 0 and math.isfinite(v)})
    return tuple([-v for v in reversed(positive)] + [0.0] + positive)


def x_equals_one(form: str, p: BoundInputs) -> list[float]:
    """The σ > 0 where x(σ) = 1, i.e. where h(x(σ)) turns (h has its minimum at x = 1)."""
    c = 2 * p.rho * p.b / p.eta
    if form == "adamw":  # c(√σ + λ) = 1
        root = 1 / c - p.lam
        return [root**2] if root > 0 else []
    disc = 1 - 4 * c * c * p.lam  # c(u + λ/u) = 1 with u = √σ: c u² − u + cλ = 0
    if disc < 0:
        return []
    return [((1 + sign * math.sqrt(disc)) / (2 * c)) ** 2 for sign in (1, -1) if (1 + sign * math.sqrt(disc)) > 0]


def corollary3_integrand(form: str, p: BoundInputs) -> PiecewiseMonotone:
    """σ ↦ h(x(max(|σ|, floor))): the per-eigenvalue term of Corollary 3's err.

    Monotone between the breakpoints 0, ±floor, ±λ (where x_l2Adam turns) and ±σ with x(σ) = 1.
    """
    turns = [p.sigma_floor] + ([p.lam] if form == "l2-adam" else []) + x_equals_one(form, p)
    return PiecewiseMonotone(lambda t: h(x_of_sigma(floored(t, p.sigma_floor), form, p)), _signed(turns))


def floor_indicator(sigma_floor: float) -> PiecewiseMonotone:
    """σ ↦ 1 where |σ| <= ``sigma_floor``, else 0: its trace over d is the spectral mass raised to the floor.

    The set is closed, so the function is monotone on each closed piece between its breakpoints ±floor (its
    extremes over an interval are then at the interval's ends and the breakpoints inside, as
    :class:`~wdbound.estimators.quadrature_interval.PiecewiseMonotone` needs).

    >>> f = floor_indicator(1e-6)
    >>> f(np.array([-1e-6, 0.0, 5e-7, 2e-6])).tolist(), f.extremes(np.array([-1.0]), np.array([1.0]))
    ([1.0, 1.0, 1.0, 0.0], (array([0.]), array([1.])))
    """
    return PiecewiseMonotone(lambda t: (np.abs(t) <= sigma_floor).astype(np.float64),
                             (-float(sigma_floor), float(sigma_floor)))


def mass_below_floor_interval(density, sigma_floor: float, support: tuple[float, float],
                              shift_directions: int | None = 0, radau_points: int = RADAU_POINTS) -> Interval:
    """An interval that covers the spectral mass with |σ| <= ``sigma_floor`` (a share of d, zero rows
    included), from the same SLQ run, ends and probe error as err/d's interval, clipped to [share of the
    deflated zero rows, 1] (each zero row is an exact zero eigenvalue). The Gauss rule alone cannot place the
    mass near zero: its point estimate is only the nodes' weight there."""
    f = floor_indicator(sigma_floor)
    bound = bounded_stderr(density, f, support, shift_directions)
    mass = trace_interval(density, f, support, shift_directions=shift_directions, stderr=bound,
                          points=radau_points).affine(1 / density.dim)
    known = float(density.null_weight) / density.dim
    estimate = min(max(mass.estimate, known), 1.0)
    return Interval(estimate, min(max(mass.low, known), estimate), max(min(mass.high, 1.0), estimate))


def corollary3_from_slq(density, form: str, p: BoundInputs, support: tuple[float, float] | None = None,
                        shift_directions: int | None = 0, radau_points: int = RADAU_POINTS) -> Corollary3:
    """err from an SLQ run of H (``wdbound.estimators.SLQ``): per probe ``Σ_k w_k h(x(|θ_k|))`` scaled to d
    (plus the deflated zero rows as exact zeros), averaged over probes; stderr from the probe spread (below
    SAMPLE_STDERR_MIN_PROBES probes with ``support``: from the variance bound, as in the interval).
    With the spectrum's ends ``support`` = (L, R), also the interval of err/d; its probe part for the deflated
    Rademacher probes of the density run (``shift_directions`` logit-shift directions projected off; None: use
    only the probes' spread) is :func:`~wdbound.estimators.quadrature_interval.trace_interval`'s. A probe
    whose Krylov space is the whole deflated space gives err from all the eigenvalues, with no probe error
    (:func:`~wdbound.estimators.quadrature_interval.spanned_interval`). ``radau_points``: the Radau points per
    probe that refine each probe's bracket (:func:`~wdbound.estimators.quadrature_interval.probe_bracket`)."""
    f = corollary3_integrand(form, p)
    spanned = spanned_interval(density, f) if shift_directions is not None else None
    total, stderr = (spanned.estimate, 0.0) if spanned is not None else mean_stderr(density.quadrature(f))
    bound = bounded_stderr(density, f, support, shift_directions) if support is not None else None
    stderr = stderr if bound is None else bound
    eigenvalues = density.spanned_eigenvalues() if spanned is not None else None
    if eigenvalues is not None:  # every eigenvalue known: the mass below the floor is a count
        below = (float(np.sum(np.abs(eigenvalues) <= p.sigma_floor)) + density.null_weight) / density.dim
    else:
        nodes, weights = density.measure()
        below = float(weights[np.abs(nodes) <= p.sigma_floor].sum())
    interval = (trace_interval(density, f, support, shift_directions=shift_directions, stderr=bound,
                               points=radau_points).affine(1 / p.d)
                if support is not None else None)
    mass = (mass_below_floor_interval(density, p.sigma_floor, support, shift_directions, radau_points)
            if support is not None else None)
    return Corollary3(form, total, stderr, total / p.d, stderr / p.d, phi(total, p), below, False, interval, mass)


def quadrature_change(density, form: str, p: BoundInputs) -> float:
    """|err_mean(m steps) − err_mean(m/2 steps)| on the same probes: how far the Gauss rule is from
    converged for this h (the probe stderr does not see this bias)."""
    steps = int(np.max(density.lengths))
    if steps < 4:
        return math.nan
    f = corollary3_integrand(form, p)
    full = float(np.mean(density.quadrature(f)))
    half = float(np.mean(density.truncated(steps // 2).quadrature(f)))
    return abs(full - half) / p.d


def corollary3_exact(eigenvalues: np.ndarray, form: str, p: BoundInputs) -> Corollary3:
    """err from the exact eigenvalues."""
    total = float(np.sum(h(x_of_sigma(floored(eigenvalues, p.sigma_floor), form, p))))
    below = float(np.mean(np.abs(eigenvalues) <= p.sigma_floor))
    return Corollary3(form, total, 0.0, total / p.d, 0.0, phi(total, p), below, True, Interval.point(total / p.d))


# ---------------------------------------------------------------- Theorems 6 and 7

@dataclass(frozen=True)
class TheoremTerm:
    """The Theorem 6/7 term of one form: −ln det M + η/(2ρb) Tr M + d ln(2bρ/η), its parts and Φ."""

    form: str
    term: float
    term_stderr: float
    logdet_m: float
    trace_m: float
    phi: float
    diag_floored: int  # H_ii raised to the floor (non-positive or tiny)
    mass_below_floor: float  # spectral mass of A (AdamW) or H (l2-Adam) raised to the floor
    exact: bool
    interval: Interval | None = None  # covers the term for the Q used (SLQ); a point when exact


def log_q(diagonal: np.ndarray, floor: float) -> tuple[np.ndarray, int]:
    """ln Q_ii = -½ ln max(H_ii, floor), and how many H_ii were raised to the floor."""
    clipped = np.maximum(diagonal, floor)
    return -0.5 * np.log(clipped), int((diagonal < floor).sum())


def logdet_ratio(values: np.ndarray, lam: float, floor: float) -> np.ndarray:
    """ln(a/(a+λ)) for floored |a|."""
    a = floored(values, floor)
    return np.log(a) - np.log(a + lam)


def ratio(values: np.ndarray, lam: float, floor: float) -> np.ndarray:
    """a/(a+λ) for floored |a| (the function whose Q-weighted trace is Tr M)."""
    a = floored(values, floor)
    return a / (a + lam)


def logdet_integrand(lam: float, floor: float) -> PiecewiseMonotone:
    """ln(a/(a+λ)) of |a| floored: monotone in |a|."""
    return PiecewiseMonotone(lambda t: logdet_ratio(t, lam, floor), _signed([floor]))


def ratio_integrand(lam: float, floor: float) -> PiecewiseMonotone:
    """a/(a+λ) of |a| floored: monotone in |a|."""
    return PiecewiseMonotone(lambda t: ratio(t, lam, floor), _signed([floor]))


def _term_of(p: BoundInputs, sum_log_q: float, sum_logdet_ratio: float,
             trace_ratio: float) -> tuple[float, float, float]:
    """(term, ln det M, Tr M) from the three spectral sums."""
    logdet = p.d * math.log(p.eta / (2 * p.b)) + sum_log_q + sum_logdet_ratio
    trace_m = p.eta / (2 * p.b) * trace_ratio
    return -logdet + p.eta / (2 * p.rho * p.b) * trace_m + p.d * math.log(2 * p.b * p.rho / p.eta), logdet, trace_m


def theorem_term(form: str, p: BoundInputs, *, sum_log_q: float, sum_logdet_ratio: float, trace_ratio: float,
                 diag_floored: int, mass_below: float, stderr: float = 0.0, exact: bool = False,
                 logdet_interval: Interval | None = None, trace_interval_: Interval | None = None) -> TheoremTerm:
    """Assemble the Theorem 6/7 term from its three spectral sums.

    ``sum_logdet_ratio`` = Σ ln(a/(a+λ)) (A's eigenvalues for AdamW, H's for l2-Adam);
    ``trace_ratio`` = tr(Q^½ g(·) Q^½) with g(a) = a/(a+λ). The term falls with the first and rises
    with the second, so their intervals give the term's.
    """
    term, logdet, trace_m = _term_of(p, sum_log_q, sum_logdet_ratio, trace_ratio)
    if exact:
        interval = Interval.point(term)
    elif logdet_interval is not None and trace_interval_ is not None:
        interval = Interval(term, _term_of(p, sum_log_q, logdet_interval.high, trace_interval_.low)[0],
                            _term_of(p, sum_log_q, logdet_interval.low, trace_interval_.high)[0])
    else:
        interval = None
    return TheoremTerm(form, term, stderr, logdet, trace_m, phi(term, p), diag_floored, mass_below, exact, interval)


@dataclass(frozen=True)
class ExactTheoremParts:
    """The eigendecomposition a Theorem 6/7 term needs, for one form and one floor of H_ii (no sampling)."""

    form: str
    floor: float
    values: np.ndarray  # eigenvalues of A = Q^½HQ^½ (AdamW) or H (l2-Adam)
    q_weights: np.ndarray  # Σ_i q_i v_ij² per eigenvector j: tr(Q^½ g(·) Q^½) = Σ_j g(a_j) q_weights_j
    sum_log_q: float
    diag_floored: int


def exact_theorem_parts(hessian: np.ndarray, form: str, floor: float) -> ExactTheoremParts:
    """The eigendecompositions a Theorem term needs from a dense Hessian [d, d]: A = Q^½HQ^½ (AdamW) or H (l2-Adam), with Q from the floored diagonal."""
    lq, diag_floored = log_q(np.diag(hessian), floor)
    q_half = np.exp(0.5 * lq)  # Q^{1/2}
    matrix = q_half[:, None] * hessian * q_half[None, :] if form == "adamw" else hessian
    values, vectors = np.linalg.eigh(matrix)
    return ExactTheoremParts(form, floor, values, ((vectors * q_half[:, None]) ** 2).sum(0), float(lq.sum()),
                             diag_floored)


def theorem_from_exact_parts(parts: ExactTheoremParts, p: BoundInputs) -> TheoremTerm:
    """The exact Theorem 6/7 term for ``p`` (the parts' floor must be ``p.sigma_floor``)."""
    _check_floor(parts.floor, p)
    values = parts.values
    return theorem_term(parts.form, p, sum_log_q=parts.sum_log_q,
                        sum_logdet_ratio=float(logdet_ratio(values, p.lam, p.sigma_floor).sum()),
                        trace_ratio=float((parts.q_weights * ratio(values, p.lam, p.sigma_floor)).sum()),
                        diag_floored=parts.diag_floored, mass_below=float(np.mean(np.abs(values) < p.sigma_floor)),
                        exact=True)


def theorem_exact(hessian: np.ndarray, form: str, p: BoundInputs) -> TheoremTerm:
    """Theorem 6/7 term from a dense Hessian [d, d] (eigendecompositions, no sampling)."""
    return theorem_from_exact_parts(exact_theorem_parts(hessian, form, p.sigma_floor), p)


def _check_floor(floor: float, p: BoundInputs) -> None:
    if floor != p.sigma_floor:
        raise ValueError(f"parts were computed with floor {floor:g}, inputs ask for {p.sigma_floor:g}")


def theorem_from_runs(runs, p: BoundInputs) -> TheoremTerm:
    """Assemble the term from a ``wdbound.analysis.TheoremRuns`` (two SLQ runs, the spectrum ends, ΣlnQ_ii);
    the stderr combines both runs' probe spreads (independent probes)."""
    _check_floor(runs.floor, p)
    f_logdet, f_trace = logdet_integrand(p.lam, p.sigma_floor), ratio_integrand(p.lam, p.sigma_floor)
    logdet, logdet_se = mean_stderr(runs.logdet.quadrature(f_logdet))
    trace, trace_se = mean_stderr(runs.trace.quadrature(f_trace))
    stderr = math.hypot(logdet_se, p.eta / (2 * p.rho * p.b) * p.eta / (2 * p.b) * trace_se)
    nodes, weights = runs.logdet.measure()
    intervals = {}
    if runs.support is not None:
        intervals = {"logdet_interval": trace_interval(runs.logdet, f_logdet, runs.support),
                     "trace_interval_": trace_interval(runs.trace, f_trace, runs.support)}
    return theorem_term(runs.form, p, sum_log_q=runs.sum_log_q, sum_logdet_ratio=logdet, trace_ratio=trace,
                        diag_floored=runs.diag_floored, mass_below=float(weights[np.abs(nodes) < p.sigma_floor].sum()),
                        stderr=stderr, **intervals)
