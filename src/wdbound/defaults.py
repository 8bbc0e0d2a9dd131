"""Every default of the tool in one place: the CLI's options, the settings dataclasses and the Python API
read them from here (each interpretation of the paper is a documented, overridable default: docs/maths.md).

>>> TAU, SIGMA_FLOOR
(0.05, 1e-06)
"""

from __future__ import annotations

import math

TAU = 0.05  # confidence: the bound holds with probability 1 - tau
SIGMA_FLOOR = 1e-6  # singular values (and H_ii of Q) below this are raised to it, and the mass is reported

# Stochastic Lanczos quadrature of `wdbound err`, `wdbound table` and the API's density: spend on
# resolution, not on probes. The interval's width at these budgets is the quadrature bracket over the mass near
# zero, which shrinks with the steps, not with the probes; a probe's own spread is small (relative standard error
# about sqrt(2/d) x the spread of the integrand) and, below SAMPLE_STDERR_MIN_PROBES probes, bounded from the same
# quadrature instead of measured (estimators/quadrature_interval.py). One probe x 1,280 steps, plus the ends of
# the spectrum (top-1, and the lower end read off the density run or <= 150 steps on -H): 1,293-1,299 HVPs for
# both bound forms on the zoo's MLPs and ViTs; measured narrower than 2 x 640 and 16 x 80 at every size tried
# (docs/intervals.md).
PROBES = 1
STEPS = 1280  # at most d (a Krylov space has at most d dimensions)
# The Theorem 6/7 runs (Lanczos on A and H started from Q^1/2 z): their probes are not plain Rademacher vectors,
# so their stderr comes from the probes' spread and needs enough of them.
THEOREM_PROBES = 16
THEOREM_STEPS = 80
# With the dense spectrum (--exact) the SLQ run is only a cross-check printed beside the exact figures: at most
# this many steps (the dense Hessian's d HVPs are the cost that matters).
EXACT_CROSSCHECK_STEPS = 80
TOP_K = 5
TOP_MAX_STEPS = 300  # the top-k Lanczos run's step cap: it can certify at most this many eigenvalues
# ... and for top-1 before a density run of at least TOP_MAX_STEPS steps (`err`, `table`): that run's own top Ritz
# value serves when its bound is smaller, so `err`'s plan is at most 60 + 1 + 1,280 + 150 + 5 = 1,496 HVPs at any d.
TOP_BESIDE_DENSITY_STEPS = 60
ENDS_MAX_STEPS = 150  # the Lanczos run on -H for the spectrum's lower end (the quadrature intervals' support)
# The trace alone (`Hessian.trace()`): a Lanczos run of TRACE_ALONE_SPAN_STEPS steps taken exactly, then deflated
# Hutchinson probes, TRACE_ALONE_PROBES first, until the standard error <= TRACE_RTOL x |trace| (at most
# TRACE_MAX_PROBES). Chosen against the exact traces and hessian-eigenthings 1.0's Hutch++ default (99 HVPs),
# float64, 20 seeds (benchmarks/peers.py --tasks trace): RMS error 4.4e-3 / 2.0e-3 / 5.3e-2 on digits-mlp / digits-cnn /
# gpt2-tiny against Hutch++'s 8.9e-3 / 2.6e-3 / 1.3e-1, in less time (docs/decisions.md, "The trace alone").
TRACE_RTOL = 0.003
TRACE_ALONE_SPAN_STEPS = 60
TRACE_ALONE_PROBES = 32
TRACE_PROBES = 8  # ... a first block of this many, then as many as its standard error says are missing
TRACE_MAX_PROBES = 128  # ... at most this many
TRACE_SPAN_STEPS = 40  # ... deflating a Krylov space of at least this many top-k Lanczos steps
RTOL = 0.01  # `err` / `table`: adaptive SLQ until each err/d interval's half-width <= rtol * err/d
REFINE_BUDGET = 0  # the adaptive SLQ adds no HVPs unless --max-hvps allows them (the plan's count is what err spends)

# `wdbound spectrum` (no bound is computed from it): float32 HVPs (Lanczos vectors, recurrences and quadrature
# stay float64), 2 to 5 probes by the dimension x at most 40 steps, no run for the spectrum's lower end. Chosen from accuracy targets measured
# against exact spectra (docs/decisions.md, "Speed"): density W1 / lambda_max below PyHessian's default
# density, top-5 to 1e-3 (PyHessian's own tolerance, unbounded there), trace to 10 % (deflated Hutchinson, >= 8 samples).
SPECTRUM_PROBES = 5  # at most (spectrum_probes); with the exact atoms: W1 <= 5.1e-4 on 10 seeds of digits-cnn
SPECTRUM_MIN_PROBES = 2  # at least: two probes give the density and the diagonal a spread, and the trace two
# leave-one-out samples; an eigenvalue repeated twice among the top k shows twice
SPECTRUM_STEPS = 40  # at most; the single pass stops earlier once its targets are met
SPECTRUM_DTYPE = "float32"
SPECTRUM_TRACE = "deflated"
SPECTRUM_ENDS = False
# The single pass: top-k, the deflation space of the trace and the density all from the SLQ probes'
# Krylov spaces. Every SPECTRUM_CHECK_EVERY steps: stop when every top-k residual bound <= SPECTRUM_TOP_RTOL x
# |value| and the density moved by W1 <= SPECTRUM_DENSITY_TOL x lambda_max since the previous check.
SINGLE_PASS = True
SPECTRUM_TOP_RTOL = 1e-3
# The trace of `spectrum`: its standard error <= 10 % of |trace|, and at least TRACE_PROBES (8) samples. The first 8
# samples already give +/- 2.6 % on digits-cnn, +/- 1.8 % on digits-mlp and +/- 6.7 % on a trained ResNet-18 (32
# images), where a 5 % target took 24 samples (22 HVPs, 40 % of the run) and 1 % took 128; PyHessian's default
# trace carries an implied +/- 7 %, 5.6 % and 20 % on the same models (docs/decisions.md, "Speed").
# `--trace-rtol 0.003` for the target of the trace alone (`Hessian.trace()`: TRACE_RTOL).
SPECTRUM_TRACE_RTOL = 0.10
# Stop once the density moved by W1 <= this x lambda_max between two checks. Two estimates each within e of the
# true density are at most 2e apart, so 2e-3 is what an error of ~1e-3 allows: measured against the exact
# spectra (6 seeds), W1 median 9.2e-4 (max 1.1e-3) on digits-mlp in 48 HVPs (1e-3: 5.3e-4 in 118) and 4.5e-4 on
# digits-cnn either way; PyHessian's defaults on the same seeds: digits-mlp median 1.2e-3 (max 1.7e-3).
SPECTRUM_DENSITY_TOL = 2e-3
SPECTRUM_SAMPLING_TOL = 1e-3  # the probes' own share of the density's error (spectrum_probes), relative to the range
SPECTRUM_CHECK_EVERY = 2

# `wdbound table` runs the whole zoo: fewer probes and steps per checkpoint.
TABLE_PROBES = PROBES  # the same figures per checkpoint as `wdbound err`
TABLE_STEPS = None  # as err: STEPS, at most d

# A new `wdbound check` baseline.
CHECK_PROBES = 4
CHECK_STEPS = 40

# Dense / exact paths.
EXACT_MAX_DIM = 20_000  # dense float64 Hessian of 20k parameters: 3.2 GB
EXACT_AUTO_MAX_DIM = 10_000  # `--exact auto`: dense Hessian (d HVPs, 0.8 GB, eigvalsh in seconds) up to this d
DIAGONAL_EXACT_MAX_DIM = 20_000  # `--diagonal auto`: exact diagonal (d HVPs, no dense matrix) up to this d


def q_diagonal_probes(dim: int, probes: int, theorem_probes: int = THEOREM_PROBES, diagonal: str = "auto") -> int:
    """Extra Hutchinson probes `err` adds for the diagonal of Q = diag(H)^-1/2 when it is estimated (``diagonal``
    hutchinson, or auto above DIAGONAL_EXACT_MAX_DIM): enough for ``theorem_probes`` samples in all beside the
    ``probes`` SLQ ones (few long SLQ runs would otherwise leave Q to one or two samples).

    >>> q_diagonal_probes(2_410, 2), q_diagonal_probes(11_000_000, 2), q_diagonal_probes(11_000_000, 2, diagonal="exact")
    (0, 14, 0)
    """
    estimated = diagonal == "hutchinson" or (diagonal == "auto" and dim > DIAGONAL_EXACT_MAX_DIM)
    return max(0, theorem_probes - probes) if estimated else 0


def spectrum_probes(dim: int) -> int:
    r"""The SLQ probes of `wdbound spectrum` for a Hessian of ``dim`` parameters.

    The density's sampling error falls with the dimension: a Rademacher probe's spectral weights put
    :math:`\hat F(x) = z^\top P_{\lambda\le x} z / d` on the eigenvalues below x, whose variance is at most
    :math:`2F(1-F)/d \le 1/(2d)` (Hutchinson's variance for a projector); over k probes,
    :math:`E\,W_1 = \int E|\hat F - F|\,dx \le (\lambda_{max} - \lambda_{min})/\sqrt{2dk}`. The count that holds this
    below ``SPECTRUM_SAMPLING_TOL`` × the range, whatever the spectrum, kept between ``SPECTRUM_MIN_PROBES`` and
    ``SPECTRUM_PROBES``: the cap (5) decides below d = 100,000, where it is what measured enough on the zoo, and
    2 probes suffice from d = 250,000 (ResNet-18: 11 M). Fewer probes also certify top-k with fewer HVPs: the
    single pass's union then holds fewer, longer Krylov spaces (docs/decisions.md, "Speed").

    >>> spectrum_probes(2_000), spectrum_probes(150_000), spectrum_probes(11_000_000)
    (5, 4, 2)
    """
    need = math.ceil(1.0 / (2.0 * (dim + 2) * SPECTRUM_SAMPLING_TOL ** 2))
    return max(SPECTRUM_MIN_PROBES, min(SPECTRUM_PROBES, need))
