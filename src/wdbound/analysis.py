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

from .bounds import (FORMS, BoundInputs, ExactTheoremParts, TheoremRuns, corollary3_exact, corollary3_from_slq,
                     corollary3_integrand, exact_theorem_parts, quadrature_change, theorem_from_exact_parts,
                     theorem_from_runs, theorem_runs)
from .estimators.quadrature_interval import quadrature_half_width
from .cache import Cache, cache_key
from .checkpoints import Checkpoint
from .curvature import Deflation, dense_matrix
from .errors import WdboundError
from .estimators.lanczos import SLQ
from .models import input_shape
from .spectrum import (REFINE_BUDGET, Spectrum, SpectrumSettings, build_operator, compute_spectrum, memory_plan,
                       spectrum_key)

SWEEPABLE = {"rho": "rho", "sigma-floor": "sigma_floor", "tau": "tau", "wd": "lam", "lr": "eta"}


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
                           "pass --rho", "--rho")
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
        raise WdboundError("no trainable parameter matches --params", "--params")
    x = torch.cat(params)
    inputs = BoundInputs(d=x.numel(), n=facts.n_train, b=facts.batch_size, eta=facts.eta, lam=facts.lam,
                         rho=default_rho(ckpt) if rho is None else rho, tau=tau, sigma_floor=sigma_floor,
                         x_norm_sq=float(x.square().sum()))
    inputs.validate()
    return inputs


def _slq_arrays(prefix: str, run: SLQ) -> dict[str, np.ndarray]:
    return {f"{prefix}_alphas": run.alphas, f"{prefix}_betas": run.betas, f"{prefix}_lengths": run.lengths,
            f"{prefix}_norms_sq": run.norms_sq, f"{prefix}_null": np.array(run.null_weight),
            f"{prefix}_complete": run.complete}


def _slq_from(prefix: str, arrays: dict[str, np.ndarray], dim: int) -> SLQ:
    return SLQ.from_tridiagonals(arrays[f"{prefix}_alphas"], arrays[f"{prefix}_betas"], arrays[f"{prefix}_lengths"],
                                 arrays[f"{prefix}_norms_sq"], dim, float(arrays[f"{prefix}_null"]),
                                 complete=arrays[f"{prefix}_complete"])


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
        if self._operator is None:
            self._operator = build_operator(self.ckpt, self.settings)
            self._plan = memory_plan(self._operator, self.settings, self.refine_factor)
            if self.on_plan is not None:
                self.on_plan(self._plan)
            self._operator.on_matvecs = self.on_hvps
        return self._operator

    @property
    def memory(self):
        """The Lanczos memory policy of the plan (building the operator if needed)."""
        self.operator  # noqa: B018 - builds the operator and its plan on a cache hit
        return self._plan.memory

    @property
    def dense(self) -> np.ndarray:
        if self._dense is None:
            self._dense = dense_matrix(self.operator).double().cpu().numpy()
        return self._dense

    def zero_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.spectrum.d, dtype=torch.bool)
        mask[torch.from_numpy(self.spectrum.zero_rows)] = True
        return mask.to(self.operator.device)

    @property
    def hvps(self) -> int:
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
    live = _Live(ckpt, settings, spectrum, on_hvps)
    fresh_hvps = 0 if spectrum.cached else spectrum.hvps
    base = spectrum_key(ckpt, settings)
    spectrum, refinement = refine(spectrum, live, settings, targets, cache, base)
    analysis = Analysis(spectrum, refinement=refinement)
    for form in forms:
        if form not in FORMS:
            raise WdboundError(f"unknown bound form {form!r}; use adamw or l2-adam", "--optimizer")
        for floor in floors:
            if settings.exact:
                analysis.exact_parts[(form, floor)] = _exact_parts(live, cache, base, form, floor)
                continue
            key = cache_key("theorem", base, form, float(floor))
            runs = cache.load(key, lambda meta, arrays: TheoremRuns(
                form, floor, meta["sum_log_q"], meta["diag_floored"], _slq_from("logdet", arrays, spectrum.d),
                _slq_from("trace", arrays, spectrum.d), tuple(meta["support"]))) if cache is not None else None
            if runs is None:
                generator = torch.Generator().manual_seed(_derived_seed(settings.seed, form, floor))
                diagonal = spectrum.exact_diagonal if spectrum.exact_diagonal is not None else spectrum.diagonal.estimate
                runs = theorem_runs(live.operator, diagonal, form, floor, probes=settings.probes,
                                    steps=settings.steps, generator=generator, zero_mask=live.zero_mask(),
                                    density=spectrum.slq, support=spectrum.support.bounds(),
                                    memory=live.memory)
                if cache is not None:
                    cache.put(key, {"sum_log_q": runs.sum_log_q, "diag_floored": runs.diag_floored,
                                    "support": list(runs.support)},
                              {**_slq_arrays("logdet", runs.logdet), **_slq_arrays("trace", runs.trace)})
            analysis.runs[(form, floor)] = runs
    analysis.hvps = fresh_hvps + live.hvps
    return analysis


def _worst(density: SLQ, support, targets) -> tuple[float, float, float]:
    """(worst relative half-width, its quadrature part, its probe part) over the targets' err/d intervals."""
    worst = (0.0, 0.0, 0.0)
    for form, inputs in targets:
        interval = corollary3_from_slq(density, form, inputs, support).err_mean_interval
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
    if settings.exact or not targets or spectrum.support is None:
        return spectrum, Refinement("exact" if settings.exact else "off", settings.probes, settings.steps, 0,
                                    settings.rtol, 0.0)
    slq, support = spectrum.slq, spectrum.support.bounds()
    worst = _worst(slq, support, targets)
    if settings.rtol <= 0 or worst[0] <= settings.rtol:
        status = "off" if settings.rtol <= 0 else "met"
        return spectrum, Refinement(status, settings.probes, settings.steps, 0, settings.rtol, worst[0])
    key = cache_key("refined", base, [(form, inputs.to_json()) for form, inputs in targets])
    hit = cache.load(key, lambda meta, arrays: (replace(spectrum, slq=_slq_from("slq", arrays, spectrum.d)),
                                                Refinement(**meta))) if cache is not None else None
    if hit is not None:
        return hit
    from .estimators.hutchinson import rademacher
    from .estimators.lanczos import run_lanczos, slq_from_run

    generator = torch.Generator().manual_seed(_derived_seed(settings.seed, "refine", settings.rtol))
    deflation = Deflation.from_json(spectrum.deflation, live.zero_mask())
    dim, nulls = spectrum.d, deflation.null_count
    probes, steps, spent, status = settings.probes, settings.steps, 0, "cap"
    while True:
        longer = worst[1] >= worst[2] and steps < dim - nulls
        new_steps = min(2 * steps, dim) if longer else steps
        cost = probes * new_steps  # longer: every probe again with more steps; else as many new probes
        if spent + cost > settings.refine_cap():
            break
        def draw(count: int) -> torch.Tensor:
            return deflation.project(rademacher(count, dim, generator, live.operator.dtype, live.operator.device))

        fresh = slq_from_run(run_lanczos(live.operator, draw, probes, new_steps, live.memory), dim,
                             null_weight=nulls)
        slq = fresh if longer else SLQ.concatenate([slq, fresh])
        probes, steps, spent = len(slq.nodes), new_steps, spent + cost
        worst = _worst(slq, support, targets)
        if worst[0] <= settings.rtol:
            status = "met"
            break
    refinement = Refinement(status, probes, steps, spent, settings.rtol, worst[0])
    if cache is not None:
        cache.put(key, refinement.to_json(), _slq_arrays("slq", slq))
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


def bound_figures(analysis: Analysis, form: str, inputs: BoundInputs) -> dict:
    """Every figure of one bound form for ``inputs`` (no HVPs). Keys are the JSON schema of ``wdbound err``.

    ``method`` says where the headline figures come from: ``exact`` (the dense spectrum; intervals are
    points) or ``slq`` (estimate with an interval that covers the exact value). With the dense spectrum
    the SLQ figures of the same run are kept under ``slq`` as a cross-check, and the exact ones also
    under ``exact``."""
    spectrum = analysis.spectrum
    slq = _slq_figures(analysis, form, inputs)
    if spectrum.exact_eigenvalues is None:
        return {"method": "slq", **slq}
    cor = corollary3_exact(spectrum.exact_eigenvalues, form, inputs)
    entry = {"method": "exact", "err_sum": cor.err_sum, "err_sum_stderr": 0.0, "err_mean": cor.err_mean,
             "err_mean_stderr": 0.0, "err_mean_interval": cor.err_mean_interval.to_json(),
             "err_mean_quadrature_change": 0.0, "phi": cor.phi, "mass_below_floor": cor.mass_below_floor,
             "zero_rows": int(len(spectrum.zero_rows)),
             "near_zero": near_zero_split(spectrum.exact_eigenvalues, inputs.sigma_floor,
                                          len(spectrum.zero_rows), spectrum.shift_directions)}
    if (form, inputs.sigma_floor) in analysis.exact_parts:
        thm = theorem_from_exact_parts(analysis.exact_parts[(form, inputs.sigma_floor)], inputs)
        entry.update({"theorem_term": thm.term, "theorem_term_stderr": 0.0,
                      "theorem_term_interval": thm.interval.to_json(), "theorem_phi": thm.phi,
                      "theorem_logdet_m": thm.logdet_m, "theorem_trace_m": thm.trace_m,
                      "theorem_diag_floored": thm.diag_floored, "theorem_mass_below_floor": thm.mass_below_floor,
                      "q_source": "exact diagonal"})
    entry["exact"] = {k: entry[k] for k in ("err_sum", "err_mean", "phi", "mass_below_floor") if k in entry}
    if "theorem_term" in entry:
        entry["exact"].update(theorem_term=entry["theorem_term"], theorem_phi=entry["theorem_phi"],
                              theorem_diag_floored=entry["theorem_diag_floored"])
    entry["slq"] = slq
    return entry


def near_zero_split(eigenvalues: np.ndarray, floor: float, zero_rows: int, logit_shift: int = 0) -> dict:
    """How the near-null spectrum was handled (counts out of d): exactly-zero rows and logit-shift directions
    deflated (exact zeros), the rest of |λ| < floor raised to the floor."""
    below = int((np.abs(eigenvalues) < floor).sum())
    return {"deflated_zero_rows": int(zero_rows), "deflated_logit_shift": int(logit_shift),
            "raised_to_floor": max(below - int(zero_rows) - int(logit_shift), 0), "below_floor_total": below}


def _slq_figures(analysis: Analysis, form: str, inputs: BoundInputs) -> dict:
    spectrum = analysis.spectrum
    runs = analysis.runs.get((form, inputs.sigma_floor))
    support = spectrum.support.bounds() if spectrum.support is not None else None
    cor = corollary3_from_slq(spectrum.slq, form, inputs, support)
    entry = {"err_sum": cor.err_sum, "err_sum_stderr": cor.err_sum_stderr, "err_mean": cor.err_mean,
             "err_mean_stderr": cor.err_mean_stderr,
             "err_mean_interval": cor.err_mean_interval.to_json() if cor.err_mean_interval else None,
             "err_mean_quadrature_change": quadrature_change(spectrum.slq, form, inputs),
             "phi": cor.phi, "mass_below_floor": cor.mass_below_floor, "zero_rows": int(len(spectrum.zero_rows)),
             "logit_shift": spectrum.shift_directions,
             "probes": int(len(spectrum.slq.nodes)), "steps": int(spectrum.slq.alphas.shape[1])}
    if runs is not None:  # the Theorem 6/7 term (absent when only Corollary 3 was asked for, e.g. the table)
        theorem = theorem_from_runs(runs, inputs)
        entry.update({"theorem_term": theorem.term, "theorem_term_stderr": theorem.term_stderr,
                      "theorem_term_interval": theorem.interval.to_json() if theorem.interval else None,
                      "theorem_phi": theorem.phi, "theorem_logdet_m": theorem.logdet_m,
                      "theorem_trace_m": theorem.trace_m, "theorem_diag_floored": theorem.diag_floored,
                      "theorem_mass_below_floor": theorem.mass_below_floor,
                      "q_source": ("exact diagonal" if spectrum.exact_diagonal is not None else
                                   f"Hutchinson diagonal ({spectrum.diagonal.probes} probes; the interval holds "
                                   "for this Q)")})
    return entry


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """``rho=0.01,0.1,1`` -> ("rho", [0.01, 0.1, 1.0])."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or name not in SWEEPABLE:
        raise WdboundError(f"--sweep {text!r}: use NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}",
                           "--sweep")
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise WdboundError(f"--sweep {text!r}: values must be numbers separated by commas", "--sweep") from None
    if not values:
        raise WdboundError(f"--sweep {text!r} lists no values", "--sweep")
    return name, values


def sweep_inputs(inputs: BoundInputs, name: str, values: list[float]) -> list[BoundInputs]:
    out = []
    for value in values:
        changed = replace(inputs, **{SWEEPABLE[name]: value})
        changed.validate()
        out.append(changed)
    return out
