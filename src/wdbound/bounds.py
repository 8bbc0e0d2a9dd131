r"""Generalization-bound terms of Zhou et al. (TPAMI 2024), Section V: pure math on spectra.

Corollary 3 (the Table I quantity), with :math:`h(x) = \ln x + 1/x`:

.. math::
    x_{AdamW}(\sigma) = 2\rho b(\sqrt\sigma + \lambda)/\eta, \qquad
    x_{\ell_2}(\sigma) = 2\rho b(\sqrt\sigma + \lambda/\sqrt\sigma)/\eta,\qquad
    \mathrm{err} = \sum_i h(x(\sigma_i)) \approx d \sum_k w_k\, h(x(\max(|\theta_k|, \sigma_{floor}))).

Theorems 6/7 without :math:`Q \approx H^{-1/2}`, with :math:`Q = \mathrm{diag}(H_{ii})^{-1/2}`
and :math:`A = Q^{1/2} H Q^{1/2}` (shared/SPEC.md):

.. math::
    \mathrm{term} = -\ln\det M + \frac{\eta}{2\rho b}\mathrm{Tr}\,M + d\ln\frac{2b\rho}{\eta},\qquad
    \Phi = \sqrt{8/n}\,\sqrt{\mathrm{term} + c_0},\qquad
    c_0 = \frac{\|x_*\|^2}{2\rho} - \frac d2 + 2\ln\frac{2n}{\tau}.

Singular values below ``sigma_floor`` (and non-positive H_ii for Q) are
raised to the floor; the spectral mass (or count) affected is always reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import WdboundError


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
        checks = [(self.eta > 0, f"eta = {self.eta:g} must be > 0", "--lr"),
                  (self.lam >= 0, f"lambda = {self.lam:g} must be >= 0", "--wd"),
                  (self.b >= 1, f"b = {self.b} must be >= 1", "--batch-size"),
                  (self.n >= 1, f"n = {self.n} must be >= 1", "--n-train"),
                  (self.rho > 0, f"rho = {self.rho:g} must be > 0", "--rho"),
                  (0 < self.tau < 1, f"tau = {self.tau:g} must lie in (0, 1)", "--tau"),
                  (self.sigma_floor > 0, f"sigma floor = {self.sigma_floor:g} must be > 0", "--sigma-floor")]
        for ok, message, flag in checks:
            if not (ok and all(math.isfinite(v) for v in (self.eta, self.lam, self.rho, self.tau, self.sigma_floor))):
                raise WdboundError(message if not ok else f"non-finite input ({message.split(' ')[0]})", flag)

    def to_json(self) -> dict:
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
    raise WdboundError(f"unknown bound form {form!r}; use adamw or l2-adam", "--optimizer")


def floored(values: np.ndarray, floor: float) -> np.ndarray:
    return np.maximum(np.abs(values), floor)


def c0(p: BoundInputs) -> float:
    return p.x_norm_sq / (2 * p.rho) - p.d / 2 + 2 * math.log(2 * p.n / p.tau)


def phi(term: float, p: BoundInputs) -> float:
    """Φ = sqrt(8/n) sqrt(term + c0); NaN when term + c0 < 0 (the bound is then vacuous as printed)."""
    inner = term + c0(p)
    return math.sqrt(8 / p.n) * math.sqrt(inner) if inner >= 0 else math.nan


# ---------------------------------------------------------------- Corollary 3

@dataclass(frozen=True)
class Corollary3:
    form: str
    err_sum: float
    err_sum_stderr: float
    err_mean: float  # err_sum / d: the Table I column
    err_mean_stderr: float
    phi: float
    mass_below_floor: float  # spectral mass with |θ| < sigma_floor
    exact: bool

    def to_json(self) -> dict:
        return dict(self.__dict__)


def corollary3_from_measure(nodes: list[np.ndarray], weights: list[np.ndarray], form: str,
                            p: BoundInputs) -> Corollary3:
    """err from per-probe SLQ nodes/weights: d Σ_k w_k h(x(|θ_k|)), averaged over probes."""
    per_probe = np.array([p.d * float(np.sum(w * h(x_of_sigma(floored(t, p.sigma_floor), form, p))))
                          for t, w in zip(nodes, weights)])
    below = np.mean([float(w[np.abs(t) < p.sigma_floor].sum()) for t, w in zip(nodes, weights)])
    k = len(per_probe)
    stderr = float(per_probe.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    total = float(per_probe.mean())
    return Corollary3(form, total, stderr, total / p.d, stderr / p.d, phi(total, p), float(below), False)


def corollary3_exact(eigenvalues: np.ndarray, form: str, p: BoundInputs) -> Corollary3:
    """err from the exact eigenvalues."""
    total = float(np.sum(h(x_of_sigma(floored(eigenvalues, p.sigma_floor), form, p))))
    below = float(np.mean(np.abs(eigenvalues) < p.sigma_floor))
    return Corollary3(form, total, 0.0, total / p.d, 0.0, phi(total, p), below, True)


# ---------------------------------------------------------------- Theorems 6 and 7

@dataclass(frozen=True)
class TheoremTerm:
    form: str
    term: float
    term_stderr: float
    logdet_m: float
    trace_m: float
    phi: float
    diag_floored: int  # H_ii raised to the floor (non-positive or tiny)
    mass_below_floor: float  # spectral mass of A (AdamW) or H (l2-Adam) raised to the floor
    exact: bool

    def to_json(self) -> dict:
        return dict(self.__dict__)


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


def theorem_term(form: str, p: BoundInputs, *, sum_log_q: float, sum_logdet_ratio: float, trace_ratio: float,
                 diag_floored: int, mass_below: float, stderr: float = 0.0, exact: bool = False) -> TheoremTerm:
    """Assemble the Theorem 6/7 term from its three spectral sums.

    ``sum_logdet_ratio`` = Σ ln(a/(a+λ)) (A's eigenvalues for AdamW, H's for l2-Adam);
    ``trace_ratio`` = tr(Q^½ g(·) Q^½) with g(a) = a/(a+λ).
    """
    logdet = p.d * math.log(p.eta / (2 * p.b)) + sum_log_q + sum_logdet_ratio
    trace_m = p.eta / (2 * p.b) * trace_ratio
    term = -logdet + p.eta / (2 * p.rho * p.b) * trace_m + p.d * math.log(2 * p.b * p.rho / p.eta)
    return TheoremTerm(form, term, stderr, logdet, trace_m, phi(term, p), diag_floored, mass_below, exact)


def theorem_exact(hessian: np.ndarray, form: str, p: BoundInputs) -> TheoremTerm:
    """Theorem 6/7 term from a dense Hessian [d, d] (eigendecompositions, no sampling)."""
    diagonal = np.diag(hessian)
    lq, diag_floored = log_q(diagonal, p.sigma_floor)
    q_half = np.exp(0.5 * lq)  # Q^{1/2}
    if form == "adamw":
        matrix = q_half[:, None] * hessian * q_half[None, :]
    else:
        matrix = hessian
    values, vectors = np.linalg.eigh(matrix)
    g = ratio(values, p.lam, p.sigma_floor)
    weighted = (vectors * q_half[:, None]) ** 2  # (Q^{1/2} V)^2: tr(Q^½ V g V^T Q^½) = Σ_j g_j Σ_i q_i v_ij^2
    trace_ratio = float((weighted.sum(0) * g).sum())
    return theorem_term(form, p, sum_log_q=float(lq.sum()),
                        sum_logdet_ratio=float(logdet_ratio(values, p.lam, p.sigma_floor).sum()),
                        trace_ratio=trace_ratio, diag_floored=diag_floored,
                        mass_below=float(np.mean(np.abs(values) < p.sigma_floor)), exact=True)


# ---------------------------------------------------------------- Theorems 6 and 7 from an operator

class ScaledOperator:
    """``D H D`` for a diagonal ``D`` [d] (here D = Q^{1/2}, giving A = Q^½ H Q^½): one HVP per matvec."""

    def __init__(self, operator, scale) -> None:
        self.op = operator
        self.scale = scale.to(operator.device, operator.dtype)
        self.dim, self.dtype, self.device = operator.dim, operator.dtype, operator.device

    def matmat(self, vectors):
        return self.scale * self.op.matmat(self.scale * vectors)


def theorem_from_operator(operator, diagonal: np.ndarray, form: str, p: BoundInputs, *, probes: int, steps: int,
                          generator, density=None) -> TheoremTerm:
    """Theorem 6/7 term by SLQ: ln det via the log-ratio on A (AdamW) or H (l2-Adam) from Rademacher z,
    Tr M via Lanczos quadrature started from Q^½ z. ``density`` reuses an SLQ run of H for l2-Adam's ln det.
    The standard error combines both per-probe sums (same z for both runs)."""
    import torch

    from .estimators.hutchinson import rademacher
    from .estimators.lanczos import lanczos, slq_from_run

    lq, diag_floored = log_q(np.asarray(diagonal, dtype=np.float64), p.sigma_floor)
    q_half = torch.from_numpy(np.exp(0.5 * lq))
    target = ScaledOperator(operator, q_half) if form == "adamw" else operator
    if density is not None and form == "l2-adam":
        logdet_run = density
    else:
        z = rademacher(probes, operator.dim, generator, operator.dtype, operator.device)
        logdet_run = slq_from_run(lanczos(target, z, steps), operator.dim)
    z = logdet_run.run.starts
    trace_run = slq_from_run(lanczos(target, z * q_half.to(z.device, z.dtype), steps), operator.dim)
    logdet_samples = logdet_run.quadrature(lambda t: logdet_ratio(t, p.lam, p.sigma_floor))
    trace_samples = trace_run.quadrature(lambda t: ratio(t, p.lam, p.sigma_floor))
    nodes, weights = logdet_run.measure()
    sum_log_q = float(lq.sum())
    terms = [theorem_term(form, p, sum_log_q=sum_log_q, sum_logdet_ratio=float(a), trace_ratio=float(b),
                          diag_floored=diag_floored, mass_below=0.0).term
             for a, b in zip(logdet_samples, trace_samples)]
    k = len(terms)
    stderr = float(np.std(terms, ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    return theorem_term(form, p, sum_log_q=sum_log_q, sum_logdet_ratio=float(logdet_samples.mean()),
                        trace_ratio=float(trace_samples.mean()), diag_floored=diag_floored,
                        mass_below=float(weights[np.abs(nodes) < p.sigma_floor].sum()), stderr=stderr)
