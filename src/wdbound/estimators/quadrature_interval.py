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
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..stats import mean_stderr

STDERR_MULTIPLIER = 3.0


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


def probe_brackets(run, f: PiecewiseMonotone, support: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe ``(lower, upper)`` bounds on ``z^T f(H) z`` from the Gauss rule of an SLQ run.

    ``support`` = ``(L, R)`` must contain every eigenvalue of the operator the run
    used. The deflated null part (``run.null_weight``) enters exactly.
    """
    low_end, high_end = float(support[0]), float(support[1])
    null = run.null_weight * float(f(np.zeros(1))[0]) if run.null_weight else 0.0
    lower, upper = [], []
    for p, (n2, w, t) in enumerate(zip(run.norms_sq, run.weights, run.nodes)):
        if run.exact_probe(p):
            value = n2 * float(np.sum(w * f(t))) + null
            lower.append(value)
            upper.append(value)
            continue
        left = np.concatenate([[min(low_end, t[0])], t[:-1]])
        right = np.concatenate([t[1:], [max(high_end, t[-1])]])
        fmin, fmax = f.extremes(left, right)
        lower.append(n2 * float(np.sum(w * fmin)) + null)
        upper.append(n2 * float(np.sum(w * fmax)) + null)
    return np.array(lower), np.array(upper)


def trace_interval(run, f: PiecewiseMonotone, support: tuple[float, float],
                   multiplier: float = STDERR_MULTIPLIER) -> Interval:
    """``tr f(H)``: the Gauss estimate and an interval from the probe brackets ± ``multiplier`` stderr each.

    A stderr of zero spread (all probes equal) adds nothing; one probe gives an infinite interval.
    """
    estimate = float(np.mean(run.quadrature(f)))
    lower, upper = probe_brackets(run, f, support)
    low_mean, low_se = mean_stderr(lower, math.inf)
    high_mean, high_se = mean_stderr(upper, math.inf)
    low, high = low_mean - multiplier * low_se, high_mean + multiplier * high_se
    return Interval(estimate, min(low, estimate), max(high, estimate))


def quadrature_half_width(run, f: PiecewiseMonotone, support: tuple[float, float]) -> float:
    """Mean half-width of the per-probe brackets: the part of the interval more Lanczos steps would shrink."""
    lower, upper = probe_brackets(run, f, support)
    return float(np.mean(upper - lower)) / 2
