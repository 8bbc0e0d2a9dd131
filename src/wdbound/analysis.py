"""One checkpoint's bound analysis: spectrum + Theorem 6/7 runs (cached), then every figure for any inputs.

The expensive part (HVPs) depends only on the checkpoint, the spectrum
settings, the bound form and the floor under H_ii in Q. Everything else
(ρ, τ, η, λ, b, n, the σ-floor of Corollary 3) enters through cheap formulas,
so :func:`bound_figures` re-evaluates any of them on a cached
:class:`Analysis` without a single HVP: that is what ``--sweep`` does.

Used by ``wdbound err``, ``wdbound table`` and ``wdbound check``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from . import defaults
from .bounds import (FORMS, BoundInputs, ExactTheoremParts, corollary3_exact, corollary3_from_slq,
                     corollary3_integrand, exact_theorem_parts, log_q, quadrature_change, theorem_from_exact_parts,
                     theorem_from_runs, TheoremTerm)
from .estimators.quadrature_interval import Interval, quadrature_half_width
from .cache import Cache, cache_key
from .checkpoints import Checkpoint
from .curvature import Deflation, ScaledOperator, dense_matrix, estimator_scope
from .errors import WdboundError
from .memory import MemoryPlan, allocation_phase
from .estimators.hutchinson import rademacher
from .estimators.lanczos import SLQ, hvp_precision, run_lanczos, slq_from_run, spectral_support
from .models import input_shape
from .progress import Observer
from .spectrum import (REFINE_BUDGET, Spectrum, SpectrumSettings, build_operator, compute_spectrum, expected_hvps,
                       memory_plan, spectrum_key)

SWEEPABLE = {"rho": "rho", "sigma-floor": "sigma_floor", "tau": "tau", "wd": "lam", "lr": "eta"}


@dataclass(frozen=True)
class TheoremRuns:
    """The two SLQ runs a Theorem 6/7 term needs, for one form and one floor of H_ii:
    ``logdet`` on A (AdamW) or H (l2-Adam) from Rademacher z, ``trace`` on the same matrix from Q^½ z'."""

    form: str
    floor: float
    sum_log_q: float
    diag_floored: int
    logdet: object  # wdbound.estimators.SLQ
    trace: object
    support: tuple[float, float] | None = None  # ends of the spectrum of A (AdamW) or H (l2-Adam)


def theorem_runs(operator, diagonal: np.ndarray, form: str, floor: float, *, probes: int, steps: int, generator,
                 zero_mask=None, density=None, support: tuple[float, float] | None = None,
                 memory=None, heap_reuse: bool = True) -> TheoremRuns:
    """Run the Lanczos quadratures of the Theorem term. ``zero_mask`` [d] marks exactly-zero Hessian rows: they
    are deflated (A and H are block-diagonal with a zero block there) and counted exactly. ``density``, an SLQ
    run of H, is reused as l2-Adam's ln det run, and ``support``, the ends of H's spectrum, as l2-Adam's
    support (A's are found by Lanczos). The two runs use independent probes. ``memory`` (a
    ``LanczosMemory`` of the memory plan) chooses the whole basis or the low-memory recurrence; ``heap_reuse``
    is the plan's :attr:`~wdbound.memory.MemoryPlan.heap_reuse`."""
    with estimator_scope(heap_reuse):
        return _theorem_runs(operator, diagonal, form, floor, probes=probes, steps=steps, generator=generator,
                             zero_mask=zero_mask, density=density, support=support, memory=memory)


def _theorem_runs(operator, diagonal: np.ndarray, form: str, floor: float, *, probes: int, steps: int, generator,
                  zero_mask=None, density=None, support: tuple[float, float] | None = None,
                  memory=None) -> TheoremRuns:
    """The body of :func:`theorem_runs` (NumPy's BLAS already sequential)."""
    lq, diag_floored = log_q(np.asarray(diagonal, dtype=np.float64), floor)
    q_half = torch.from_numpy(np.exp(0.5 * lq)).to(operator.device, operator.dtype)
    keep = torch.ones(operator.dim, dtype=torch.bool, device=operator.device) if zero_mask is None else ~zero_mask
    nulls = float((~keep).sum())
    target = ScaledOperator(operator, q_half) if form == "adamw" else operator

    def draw(count: int) -> torch.Tensor:
        return rademacher(count, operator.dim, generator, operator.dtype, operator.device) * keep

    if density is not None and form == "l2-adam":
        logdet = density
    else:
        logdet = slq_from_run(run_lanczos(target, draw, probes, steps, memory), operator.dim, null_weight=nulls)
    trace = slq_from_run(run_lanczos(target, lambda count: draw(count) * q_half, probes, steps, memory),
                         operator.dim, null_weight=float((q_half**2 * ~keep).sum()))
    if form == "adamw" or support is None:
        support = spectral_support(target, generator, max_steps=defaults.ENDS_MAX_STEPS,
                                   restart=memory.ends_restart if memory is not None else None).bounds()
    return TheoremRuns(form, floor, float(lq.sum()), diag_floored, logdet, trace, tuple(support))



@dataclass
class Analysis:
    """A spectrum plus, per (form, floor), the Theorem runs and (with --exact) the exact parts."""

    spectrum: Spectrum
    runs: dict[tuple[str, float], TheoremRuns] = field(default_factory=dict)
    exact_parts: dict[tuple[str, float], ExactTheoremParts] = field(default_factory=dict)
    refinement: "Refinement | None" = None
    hvps: int = 0  # HVPs spent in this process (0 when everything came from the cache)


def default_rho(ckpt: Checkpoint) -> float:
    """The documented default prior variance: 1/sqrt(input dimension) (the paper: of order 1/sqrt(d_i))."""
    if str(ckpt.meta["arch"]).startswith("factory:"):
        raise WdboundError("the default rho is 1/sqrt(input dimension), which a model factory does not declare; "
                           "give rho", "rho")
    return 1.0 / math.sqrt(math.prod(input_shape(ckpt.meta["arch"], **(ckpt.meta.get("arch_kwargs") or {}))))


def bound_inputs(ckpt: Checkpoint, *, rho: float | None, tau: float, sigma_floor: float,
                 params: tuple[str, ...] = ()) -> BoundInputs:
    """η, λ, b, n from the checkpoint, d and ||x||² from its trainable parameters (only those matching the
    ``--params`` globs when given: the bound is then evaluated for that block of the Hessian)."""
    from .spectrum import parameter_globs

    facts = ckpt.facts()
    select = parameter_globs(tuple(params)) or (lambda _n, _p: True)
    params = [p.detach().reshape(-1).double() for n, p in ckpt.model.named_parameters()
              if p.requires_grad and select(n, p)]
    if not params:
        raise WdboundError("no trainable parameter matches the parameter globs", "params")
    x = torch.cat(params)
    inputs = BoundInputs(d=x.numel(), n=facts.n_train, b=facts.batch_size, eta=facts.eta, lam=facts.lam,
                         rho=default_rho(ckpt) if rho is None else rho, tau=tau, sigma_floor=sigma_floor,
                         x_norm_sq=float(x.square().sum()))
    inputs.validate()
    return inputs


class _Live:
    """The operator (and dense Hessian) of a checkpoint, built only when a cache miss needs them."""

    def __init__(self, ckpt: Checkpoint, settings: SpectrumSettings, spectrum: Spectrum,
                 on_hvps: Callable[[int], None] | None, refine_factor: int = 1, on_plan=None) -> None:
        self.ckpt, self.settings, self.spectrum, self.on_hvps = ckpt, settings, spectrum, on_hvps
        self._operator = spectrum.extra.get("operator")
        self._dense = spectrum.extra.get("dense")
        self._plan = spectrum.extra.get("plan")
        self.refine_factor, self.on_plan = refine_factor, on_plan
        self.hvps_before = self._operator.matvecs if self._operator is not None else 0

    @property
    def operator(self):
        """The Hessian operator (built, planned and hooked to the progress on first use)."""
        if self._operator is None:
            self._operator = build_operator(self.ckpt, self.settings)
            self._plan = memory_plan(self._operator, self.settings, self.refine_factor)
            if self.on_plan is not None:
                self.on_plan(self._plan)
            self._operator.on_matvecs = self.on_hvps
        return self._operator

    @property
    def plan(self) -> MemoryPlan | None:
        """The memory plan, when the operator has been built (for the out-of-memory message)."""
        return self._plan

    @property
    def heap_reuse(self) -> bool:
        """The plan's :attr:`~wdbound.memory.MemoryPlan.heap_reuse`; False before a plan exists (a cached
        spectrum: the operator is built only if HVPs are needed, and the budget comes first)."""
        return self._plan is not None and self._plan.heap_reuse

    @property
    def memory(self):
        """The Lanczos memory policy of the plan (building the operator if needed)."""
        self.operator  # noqa: B018 - builds the operator and its plan on a cache hit
        return self._plan.memory

    @property
    def dense(self) -> np.ndarray:
        """The dense Hessian [d, d] as float64 numpy (built on first use: d HVPs)."""
        if self._dense is None:
            with allocation_phase("building the dense Hessian", self._plan):
                self._dense = dense_matrix(self.operator).double().cpu().numpy()
        return self._dense

    def zero_mask(self) -> torch.Tensor:
        """A bool mask [d] of the deflated exactly-zero rows, on the operator's device."""
        mask = torch.zeros(self.spectrum.d, dtype=torch.bool)
        mask[torch.from_numpy(self.spectrum.zero_rows)] = True
        return mask.to(self.operator.device)

    @property
    def hvps(self) -> int:
        """HVPs spent through this object (0 when the operator was never built)."""
        return (self._operator.matvecs - self.hvps_before) if self._operator is not None else 0


@dataclass(frozen=True)
class Refinement:
    """What the adaptive SLQ (``--rtol``) did: the final probes and steps, its HVPs, and whether it met rtol."""

    status: str  # "met", "cap" (HVP cap hit before rtol), "off" (rtol 0), "exact" (dense spectrum used instead)
    probes: int
    steps: int
    hvps: int
    rtol: float
    worst_relative_half_width: float

    def to_json(self) -> dict:
        """The fields by name."""
        return dict(self.__dict__)


def analyse(ckpt: Checkpoint, settings: SpectrumSettings, *, forms=FORMS, floors=(1e-6,), cache: Cache | None = None,
            on_hvps: Callable[[int], None] | None = None,
            targets: tuple[tuple[str, BoundInputs], ...] = (), on_plan=None) -> Analysis:
    """Spectrum and Theorem runs for every form and floor; each piece is cached as soon as it is finished,
    so an interrupted run keeps what it completed. ``targets`` are the (form, inputs) whose err/d intervals
    ``settings.rtol`` must reach (adaptive SLQ; see :func:`refine`). With the dense spectrum (``exact``) the
    Theorem terms come from eigendecompositions and no Theorem SLQ run is made. ``on_plan`` receives the
    memory plan before the first HVP."""
    factor = REFINE_BUDGET if targets and settings.rtol > 0 and not settings.exact else 1
    spectrum = compute_spectrum(ckpt, settings, on_hvps, cache, on_plan=on_plan, refine_factor=factor)
    live = _Live(ckpt, settings, spectrum, on_hvps, factor, on_plan)
    fresh_hvps = 0 if spectrum.cached else spectrum.hvps
    base = spectrum_key(ckpt, settings)
    with allocation_phase("the adaptive SLQ refinement", lambda: live.plan):
        spectrum, refinement = refine(spectrum, live, settings, targets, cache, base)
    analysis = Analysis(spectrum, refinement=refinement)
    for form in forms:
        if form not in FORMS:
            raise WdboundError(f"unknown bound form {form!r}; use adamw or l2-adam", "optimizer")
        for floor in floors:
            if settings.exact:
                analysis.exact_parts[(form, floor)] = _exact_parts(live, cache, base, form, floor)
                continue
            key = cache_key("theorem", base, form, float(floor))
            runs = cache.load(key, lambda meta, arrays: TheoremRuns(
                form, floor, meta["sum_log_q"], meta["diag_floored"], SLQ.from_arrays("logdet", arrays, spectrum.d),
                SLQ.from_arrays("trace", arrays, spectrum.d), tuple(meta["support"]))) if cache is not None else None
            if runs is None:
                generator = torch.Generator().manual_seed(_derived_seed(settings.seed, form, floor))
                diagonal = spectrum.exact_diagonal if spectrum.exact_diagonal is not None else spectrum.diagonal.estimate
                with allocation_phase(f"the Theorem 6/7 Lanczos runs ({form})", lambda: live.plan):
                    runs = theorem_runs(live.operator, diagonal, form, floor, probes=settings.theorem_probes,
                                        steps=settings.theorem_steps, generator=generator, zero_mask=live.zero_mask(),
                                        density=spectrum.slq if reuses_density(settings) else None,
                                        support=spectrum.support.bounds(),
                                        memory=live.memory, heap_reuse=live.heap_reuse)
                if cache is not None:
                    cache.put(key, {"sum_log_q": runs.sum_log_q, "diag_floored": runs.diag_floored,
                                    "support": list(runs.support)},
                              {**runs.logdet.to_arrays("logdet"), **runs.trace.to_arrays("trace")})
            analysis.runs[(form, floor)] = runs
    analysis.hvps = fresh_hvps + live.hvps
    return analysis


def _worst(density: SLQ, support, targets, shift_directions: int) -> tuple[float, float, float]:
    """(worst relative half-width, its quadrature part, its probe part) over the targets' err/d intervals."""
    worst = (0.0, 0.0, 0.0)
    for form, inputs in targets:
        interval = corollary3_from_slq(density, form, inputs, support, shift_directions).err_mean_interval
        relative = interval.relative_half_width()
        if relative >= worst[0]:
            quad = quadrature_half_width(density, corollary3_integrand(form, inputs), support) / inputs.d
            worst = (relative, quad, max(interval.half_width - quad, 0.0))
    return worst


def refine(spectrum: Spectrum, live: _Live, settings: SpectrumSettings, targets, cache: Cache | None,
           base: str) -> tuple[Spectrum, Refinement]:
    """Adaptive SLQ: while some target's err/d interval is wider than ``rtol`` (relative half-width), double
    the Lanczos steps when the quadrature bracket dominates the width, else double the probes; stop at
    ``settings.refine_cap()`` HVPs for the refinement and say so. Fresh probes each round (seeded); the result is cached
    under the targets' inputs."""
    with estimator_scope(live.heap_reuse):
        return _refine(spectrum, live, settings, targets, cache, base)


def _refine(spectrum: Spectrum, live: _Live, settings: SpectrumSettings, targets, cache: Cache | None,
            base: str) -> tuple[Spectrum, Refinement]:
    """The body of :func:`refine` (NumPy's BLAS already sequential)."""
    settings = settings.for_dim(spectrum.d)
    if settings.exact or not targets or spectrum.support is None:
        return spectrum, Refinement("exact" if settings.exact else "off", settings.probes, settings.steps, 0,
                                    settings.rtol, 0.0)
    slq, support = spectrum.slq, spectrum.support.bounds()
    worst = _worst(slq, support, targets, spectrum.shift_directions)
    if settings.rtol <= 0 or worst[0] <= settings.rtol or settings.refine_cap() <= 0:
        status = "met" if 0 < settings.rtol and worst[0] <= settings.rtol else "off"
        return spectrum, Refinement(status, settings.probes, settings.steps, 0, settings.rtol, worst[0])
    key = cache_key("refined", base, [(form, inputs.to_json()) for form, inputs in targets])
    hit = cache.load(key, lambda meta, arrays: (replace(spectrum, slq=SLQ.from_arrays("slq", arrays, spectrum.d)),
                                                Refinement(**meta))) if cache is not None else None
    if hit is not None:
        return hit
    generator = torch.Generator().manual_seed(_derived_seed(settings.seed, "refine", settings.rtol))
    # The density run's own deflation (with its top Ritz vectors, if it had them); from a cache only the null
    # directions are known, and fresh runs without the Ritz vectors cannot be pooled with probes that had them.
    deflation = spectrum.extra.get("deflation") or Deflation.from_json(spectrum.deflation, live.zero_mask())
    pool = deflation.ritz is not None or not slq.atom_count
    dim, nulls = spectrum.d, deflation.null_count
    probes, steps, spent, status = settings.probes, settings.steps, 0, "cap"
    while True:
        longer = worst[1] >= worst[2] and steps < dim - nulls
        new_steps = min(2 * steps, dim) if longer else steps
        count = probes if longer or pool else 2 * probes  # more probes: pooled with the old, or all afresh
        cost = count * new_steps  # longer: every probe again with more steps; else as many new probes
        if spent + cost > settings.refine_cap():
            break
        def draw(count: int) -> torch.Tensor:
            return deflation.project(rademacher(count, dim, generator, live.operator.dtype, live.operator.device))

        run = run_lanczos(deflation.operator(live.operator), draw, count, new_steps, live.memory)
        fresh = slq_from_run(run, dim, null_weight=nulls, space_dim=dim - nulls,
                             precision=hvp_precision(live.operator), ritz=deflation.ritz)
        slq = fresh if longer or not pool else SLQ.concatenate([slq, fresh])
        probes, steps, spent = len(slq.nodes), new_steps, spent + cost
        worst = _worst(slq, support, targets, spectrum.shift_directions)
        if worst[0] <= settings.rtol:
            status = "met"
            break
    refinement = Refinement(status, probes, steps, spent, settings.rtol, worst[0])
    if cache is not None:
        cache.put(key, refinement.to_json(), slq.to_arrays("slq"))
    return replace(spectrum, slq=slq), refinement


def _exact_parts(live: _Live, cache: Cache | None, base: str, form: str, floor: float) -> ExactTheoremParts:
    key = cache_key("theorem-exact", base, form, float(floor))
    hit = cache.load(key, lambda meta, arrays: ExactTheoremParts(
        form, floor, arrays["values"], arrays["q_weights"], meta["sum_log_q"], meta["diag_floored"])) \
        if cache is not None else None
    if hit is not None:
        return hit
    parts = exact_theorem_parts(live.dense, form, floor)
    if cache is not None:
        cache.put(key, {"sum_log_q": parts.sum_log_q, "diag_floored": parts.diag_floored},
                  {"values": parts.values, "q_weights": parts.q_weights})
    return parts


def _derived_seed(seed: int, form: str, floor: float) -> int:
    """Independent, reproducible probes for each Theorem run."""
    return int(cache_key("seed", seed, form, float(floor))[:12], 16)


@dataclass(frozen=True)
class NearZero:
    """How the near-null spectrum was handled (counts out of d): exactly-zero rows and logit-shift directions
    deflated (exact zeros), the rest of |λ| < floor raised to the floor."""

    deflated_zero_rows: int
    deflated_logit_shift: int
    raised_to_floor: int
    below_floor_total: int

    @classmethod
    def of(cls, eigenvalues: np.ndarray, floor: float, zero_rows: int, logit_shift: int = 0) -> "NearZero":
        """The split of the exact ``eigenvalues`` below ``floor``."""
        below = int((np.abs(eigenvalues) < floor).sum())
        return cls(int(zero_rows), int(logit_shift), max(below - int(zero_rows) - int(logit_shift), 0), below)

    def to_json(self) -> dict:
        """The four counts by name."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class TheoremFigures:
    """The Theorem 6/7 term of one form (Q = diag(H)^-1/2) and what went into it."""

    term: float
    term_stderr: float
    interval: Interval | None  # covers the term for the Q used (SLQ); a point when exact
    phi: float
    logdet_m: float
    trace_m: float
    diag_floored: int  # H_ii raised to the floor
    mass_below_floor: float
    q_source: str  # "exact diagonal" or the Hutchinson diagonal it used

    @classmethod
    def of(cls, term: TheoremTerm, q_source: str) -> "TheoremFigures":
        """From the assembled term of :mod:`wdbound.bounds`."""
        return cls(term.term, term.term_stderr, term.interval, term.phi, term.logdet_m, term.trace_m,
                   term.diag_floored, term.mass_below_floor, q_source)

    def to_json(self) -> dict:
        """The ``theorem_*`` keys of ``wdbound err --json``."""
        return {"theorem_term": self.term, "theorem_term_stderr": self.term_stderr,
                "theorem_term_interval": self.interval.to_json() if self.interval else None,
                "theorem_phi": self.phi, "theorem_logdet_m": self.logdet_m, "theorem_trace_m": self.trace_m,
                "theorem_diag_floored": self.diag_floored, "theorem_mass_below_floor": self.mass_below_floor,
                "q_source": self.q_source}


@dataclass(frozen=True)
class BoundFigures:
    """Every figure of one bound form for one set of inputs (the JSON of ``wdbound err`` per form).

    ``method`` says where the headline figures come from: ``exact`` (the dense spectrum; intervals are
    points, and the SLQ figures of the same run are kept in ``slq`` as a cross-check) or ``slq`` (estimate
    with an interval that covers the exact value)."""

    form: str
    method: str  # "exact" or "slq"
    err_sum: float
    err_sum_stderr: float
    err_mean: float  # err/d: the Table I column
    err_mean_stderr: float
    err_mean_interval: Interval | None
    err_mean_quadrature_change: float  # |err/d(m steps) - err/d(m/2 steps)| on the same probes (0 when exact)
    phi: float
    mass_below_floor: float
    zero_rows: int
    logit_shift: int | None = None  # SLQ: logit-shift directions deflated from the probes
    probes: int | None = None  # SLQ: probes and steps of the (possibly refined) run
    steps: int | None = None
    near_zero: NearZero | None = None  # exact: how the near-null spectrum was handled
    theorem: TheoremFigures | None = None  # absent when only Corollary 3 was asked for (the table)
    slq: "BoundFigures | None" = None  # exact: the SLQ figures of the same run
    mass_below_floor_interval: Interval | None = None  # SLQ: covers the exact mass with |σ| <= floor

    @property
    def interval(self) -> tuple[float, float]:
        """``(low, high)`` of err/d (a point for exact figures)."""
        if self.err_mean_interval is None:
            return self.err_mean, self.err_mean
        return self.err_mean_interval.low, self.err_mean_interval.high

    def to_json(self, method: bool = True) -> dict:
        """The figures by name (the schema of ``wdbound err --json`` per form; ``method=False`` leaves the
        ``method`` key out, as in the nested ``slq`` cross-check)."""
        out = {"method": self.method} if method else {}
        out.update({"err_sum": self.err_sum, "err_sum_stderr": self.err_sum_stderr, "err_mean": self.err_mean,
                    "err_mean_stderr": self.err_mean_stderr,
                    "err_mean_interval": self.err_mean_interval.to_json() if self.err_mean_interval else None,
                    "err_mean_quadrature_change": self.err_mean_quadrature_change, "phi": self.phi,
                    "mass_below_floor": self.mass_below_floor, "zero_rows": self.zero_rows})
        if self.method == "slq":
            out.update({"logit_shift": self.logit_shift, "probes": self.probes, "steps": self.steps,
                        "mass_below_floor_interval": (self.mass_below_floor_interval.to_json()
                                                      if self.mass_below_floor_interval else None)})
        if self.near_zero is not None:
            out["near_zero"] = self.near_zero.to_json()
        if self.theorem is not None:
            out.update(self.theorem.to_json())
        if self.method == "exact":
            out["exact"] = {k: out[k] for k in ("err_sum", "err_mean", "phi", "mass_below_floor")}
            if self.theorem is not None:
                out["exact"].update(theorem_term=self.theorem.term, theorem_phi=self.theorem.phi,
                                    theorem_diag_floored=self.theorem.diag_floored)
            out["slq"] = self.slq.to_json(method=False) if self.slq is not None else None
        return out


def bound_figures(analysis: Analysis, form: str, inputs: BoundInputs) -> BoundFigures:
    """Every figure of one bound form for ``inputs`` (no HVPs): exact from the dense spectrum when the
    analysis has it (with the SLQ figures as a cross-check), else SLQ with intervals."""
    spectrum = analysis.spectrum
    slq = _slq_figures(analysis, form, inputs)
    if spectrum.exact_eigenvalues is None:
        return slq
    cor = corollary3_exact(spectrum.exact_eigenvalues, form, inputs)
    theorem = None
    if (form, inputs.sigma_floor) in analysis.exact_parts:
        theorem = TheoremFigures.of(theorem_from_exact_parts(analysis.exact_parts[(form, inputs.sigma_floor)], inputs),
                                    "exact diagonal")
    return BoundFigures(form, "exact", cor.err_sum, 0.0, cor.err_mean, 0.0, cor.err_mean_interval, 0.0, cor.phi,
                        cor.mass_below_floor, int(len(spectrum.zero_rows)),
                        near_zero=NearZero.of(spectrum.exact_eigenvalues, inputs.sigma_floor, len(spectrum.zero_rows),
                                              spectrum.shift_directions),
                        theorem=theorem, slq=slq)


def _slq_figures(analysis: Analysis, form: str, inputs: BoundInputs) -> BoundFigures:
    spectrum = analysis.spectrum
    runs = analysis.runs.get((form, inputs.sigma_floor))
    support = spectrum.support.bounds() if spectrum.support is not None else None
    cor = corollary3_from_slq(spectrum.slq, form, inputs, support, spectrum.shift_directions)
    theorem = None
    if runs is not None:  # the Theorem 6/7 term (absent when only Corollary 3 was asked for, e.g. the table)
        q_source = ("exact diagonal" if spectrum.exact_diagonal is not None else
                    f"Hutchinson diagonal ({spectrum.diagonal.probes} probes; the interval holds for this Q)")
        theorem = TheoremFigures.of(theorem_from_runs(runs, inputs), q_source)
    return BoundFigures(form, "slq", cor.err_sum, cor.err_sum_stderr, cor.err_mean, cor.err_mean_stderr,
                        cor.err_mean_interval, quadrature_change(spectrum.slq, form, inputs), cor.phi,
                        cor.mass_below_floor, int(len(spectrum.zero_rows)), logit_shift=spectrum.shift_directions,
                        probes=int(len(spectrum.slq.nodes)), steps=int(spectrum.slq.alphas.shape[1]), theorem=theorem,
                        mass_below_floor_interval=cor.mass_below_floor_interval)


def reuses_density(settings: SpectrumSettings) -> bool:
    """Whether l2-Adam's ln det run is the density run itself: only when that run has at least the Theorem
    runs' probes (the Theorem intervals take their stderr from the probes' spread)."""
    return (settings.probes or 0) >= settings.theorem_probes


def planned_hvps(settings: SpectrumSettings, dim: int, forms=(), floors=()) -> int:
    """An upper estimate of the HVPs of :func:`analyse` for the progress bar: the spectrum's
    (:func:`wdbound.spectrum.expected_hvps`) plus, per floor, the Theorem runs of ``forms`` (two SLQ runs for
    AdamW; for l2-Adam one, or two when its ln det cannot reuse the density run); none with ``exact`` (the
    Theorem terms then come from the dense Hessian the spectrum built)."""
    if settings.exact:
        return expected_hvps(settings, dim)
    runs_per_floor = sum(2 if form == "adamw" or not reuses_density(settings) else 1 for form in forms)
    # AdamW's A = Q^1/2 H Q^1/2 has ends of its own: a Lanczos run of at most ENDS_MAX_STEPS per floor.
    ends = sum(1 for form in forms if form == "adamw") * len(floors) * min(defaults.ENDS_MAX_STEPS, dim)
    return expected_hvps(settings, dim) + ends + (runs_per_floor * len(floors) * settings.theorem_probes
                                                  * min(settings.theorem_steps, dim))


THEOREM_MODES = ("auto", "on", "off")


def resolve_theorem(mode: str, exact: bool) -> bool:
    """Whether ``err`` computes the Theorem 6/7 terms: ``on``, ``off``, or ``auto``: with the dense spectrum
    (they then cost no HVP: eigendecompositions of the dense Hessian), not otherwise (their Lanczos runs and
    Q's diagonal would cost several times err/d's HVPs; the output says how many).

    >>> resolve_theorem("auto", True), resolve_theorem("auto", False), resolve_theorem("on", False)
    (True, False, True)
    """
    if mode not in THEOREM_MODES:
        raise WdboundError(f"unknown theorem mode {mode!r}; use auto, on or off", "theorem")
    return mode == "on" or (mode == "auto" and exact)


def theorem_extra_hvps(settings: SpectrumSettings, dim: int, forms=(), floors=(1e-6,)) -> int:
    """The HVPs the Theorem 6/7 terms of ``forms`` would add to an SLQ ``err`` (their Lanczos runs at every
    floor, and Q's diagonal: exact, d HVPs, under ``--diagonal auto`` up to DIAGONAL_EXACT_MAX_DIM, else the
    extra Hutchinson probes); 0 with the dense spectrum."""
    if settings.exact or not forms:
        return 0
    with_theorem = replace(settings, diagonal="auto")
    diagonal = dim if with_theorem.exact_diagonal_for(dim) else defaults.q_diagonal_probes(
        dim, settings.probes or 0, settings.theorem_probes, "auto")
    return planned_hvps(settings, dim, forms, floors) - planned_hvps(settings, dim) + diagonal


@dataclass(frozen=True)
class Evaluation:
    """One checkpoint analysed: the spectrum work (:class:`Analysis`) and the figures of each asked bound form
    for ``inputs``. Shared by ``wdbound err``, ``table`` and ``check``."""

    analysis: Analysis
    inputs: BoundInputs
    figures: dict[str, BoundFigures]

    @property
    def spectrum(self) -> Spectrum:
        """The spectrum (refined by the adaptive SLQ when it ran)."""
        return self.analysis.spectrum

    def figures_for(self, inputs: BoundInputs) -> dict[str, BoundFigures]:
        """The figures of the same forms for other inputs (a sweep; no HVPs)."""
        return {form: bound_figures(self.analysis, form, inputs) for form in self.figures}


def evaluate(ckpt: Checkpoint, settings: SpectrumSettings, inputs: BoundInputs, forms=(), *, theorem: bool = True,
             floors=None, cache: Cache | None = None, observer: Observer | None = None,
             label: str = "") -> Evaluation:
    """Analyse ``ckpt`` and compute the figures of ``forms`` for ``inputs``.

    Parameters
    ----------
    forms:
        Bound forms (``adamw``, ``l2-adam``) whose figures are wanted; their err/d intervals are the targets of
        the adaptive SLQ (``settings.rtol``).
    theorem:
        Also the Theorem 6/7 terms (Lanczos runs on A and H, or exact eigendecompositions).
    floors:
        σ-floors of Q to prepare Theorem runs for (a σ-floor sweep); default ``[inputs.sigma_floor]``.
    observer:
        Receives the memory plan, the planned and spent HVPs (task ``label``).
    """
    from .models import count_parameters

    observer = observer or Observer()
    floors = sorted(set(floors)) if floors else [inputs.sigma_floor]
    theorem_forms = list(forms) if theorem else []
    observer.start(label, planned_hvps(settings, count_parameters(ckpt.model), theorem_forms, floors))
    analysis = analyse(ckpt, settings, forms=theorem_forms, floors=floors, cache=cache, on_hvps=observer.hvps,
                       targets=tuple((form, inputs) for form in forms), on_plan=observer.plan)
    observer.done(analysis.hvps)
    return Evaluation(analysis, inputs, {form: bound_figures(analysis, form, inputs) for form in forms})


ERR_NOTE = ("each form uses this checkpoint's own Hessian, eta and lambda; evaluating the form of an optimizer that "
            "did not train it is a counterfactual comparison")
INTERVAL_NOTE = "CMS bracket of each probe's Gauss rule + 3 stderr of the probe spread (docs/intervals.md)"


@dataclass(frozen=True)
class SweepRow:
    """The figures of every form with one swept input changed (``err --sweep``)."""

    value: float
    figures: dict[str, BoundFigures]

    def to_json(self) -> dict:
        """``{"value", <form>: figures}``."""
        return {"value": self.value, **{form: f.to_json() for form, f in self.figures.items()}}


@dataclass(frozen=True)
class ErrReport:
    """``wdbound err``: the bound figures of each form on one checkpoint, with their inputs and sweeps."""

    checkpoint: str
    trained_with: str | None  # the optimizer recorded in the checkpoint
    own_form: str | None  # the bound form of that optimizer (None outside the papers' forms)
    lam_reading: str | None  # how the checkpoint's lambda was read (AdamS: the effective decay)
    evaluation: Evaluation
    sweeps: dict[str, list[SweepRow]] = field(default_factory=dict)
    theorem_extra_hvps: int = 0  # what the Theorem terms would have added when they were not computed

    @property
    def forms(self) -> list[str]:
        """The bound forms evaluated."""
        return list(self.evaluation.figures)

    @property
    def figures(self) -> dict[str, BoundFigures]:
        """The figures per form for the run's inputs."""
        return self.evaluation.figures

    def to_json(self) -> dict:
        """The JSON of ``wdbound err --json``."""
        spectrum, refinement = self.evaluation.spectrum, self.evaluation.analysis.refinement
        out = {"checkpoint": self.checkpoint, "trained_with": self.trained_with, "own_form": self.own_form,
               "lam_reading": self.lam_reading, "note": ERR_NOTE}
        out.update({form: figures.to_json() for form, figures in self.figures.items()})
        out["inputs"] = {**self.evaluation.inputs.to_json(), "spectrum": spectrum.provenance,
                         "spectrum_cached": spectrum.cached,
                         "support": spectrum.support.to_json() if spectrum.support else None,
                         "interval": INTERVAL_NOTE}
        out["refinement"] = refinement.to_json() if refinement else None
        computed = all(f.theorem is not None for f in self.figures.values())
        out["theorem"] = {"computed": computed, "extra_hvps": None if computed else self.theorem_extra_hvps,
                          "note": None if computed else "not computed (--theorem auto without the dense spectrum); "
                          "--theorem on computes them for at most extra_hvps more HVPs"}
        if self.sweeps:
            out["sweeps"] = {name: [row.to_json() for row in rows] for name, rows in self.sweeps.items()}
        return out


def evaluate_err(ckpt: Checkpoint, settings: SpectrumSettings, inputs: BoundInputs, forms=FORMS, *,
                 sweeps: list[tuple[str, list[float]]] = (), cache: Cache | None = None,
                 observer: Observer | None = None, label: str = "", theorem: bool = True) -> ErrReport:
    """Corollary 3 and the Theorem 6/7 terms of ``forms`` on ``ckpt`` (``wdbound err``), re-evaluated for every
    value of each sweep (``(name, values)`` from :func:`parse_sweep`; only a σ-floor sweep needs new Lanczos
    runs, prepared here in the same analysis)."""
    from .optim import bound_form

    for form in forms:
        if form not in FORMS:
            raise WdboundError(f"unknown bound form {form!r}; use adamw or l2-adam", "optimizer")
    sweep_sets = {name: list(zip(values, sweep_inputs(inputs, name, values))) for name, values in sweeps}
    floors = {inputs.sigma_floor, *(p.sigma_floor for pairs in sweep_sets.values() for _, p in pairs)}
    evaluation = evaluate(ckpt, settings, inputs, forms, floors=floors, cache=cache, observer=observer, label=label,
                          theorem=theorem)
    trained_with = ckpt.optimizer_name
    extra = 0 if theorem else theorem_extra_hvps(settings, inputs.d, forms, sorted(floors))
    return ErrReport(str(ckpt.path), trained_with, bound_form(str(trained_with)),
                     (ckpt.meta.get("train") or {}).get("lam_reading"), evaluation,
                     {name: [SweepRow(value, evaluation.figures_for(p)) for value, p in pairs]
                      for name, pairs in sweep_sets.items()}, extra)


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """``rho=0.01,0.1,1`` -> ("rho", [0.01, 0.1, 1.0])."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or name not in SWEEPABLE:
        raise WdboundError(f"sweep {text!r}: use NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}",
                           "sweep")
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise WdboundError(f"sweep {text!r}: values must be numbers separated by commas", "sweep") from None
    if not values:
        raise WdboundError(f"sweep {text!r} lists no values", "sweep")
    return name, values


def sweep_inputs(inputs: BoundInputs, name: str, values: list[float]) -> list[BoundInputs]:
    """``inputs`` with the swept field (``rho``, ``sigma-floor``, ``tau``, ``wd``, ``lr``) set to each value in turn; each is validated."""
    out = []
    for value in values:
        changed = replace(inputs, **{SWEEPABLE[name]: value})
        changed.validate()
        out.append(changed)
    return out
