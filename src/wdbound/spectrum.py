"""One curvature analysis of a checkpoint: top eigenvalues, SLQ density, trace and diagonal.

The estimates share work: the first Lanczos matvec of every SLQ probe z is Hz,
so the SLQ probes also serve as Hutchinson trace and diagonal probes at no
extra cost (``diag_probes`` adds more when a sharper diagonal is wanted).

Exactly-zero Hessian rows (weights the evaluation data never moves) are found
first (:func:`wdbound.curvature.zero_rows`, three matvecs) and deflated: the
SLQ probes are zero there, and those coordinates enter every spectral sum as
exact zero eigenvalues instead of being smeared into the lowest Ritz node.

A finished spectrum is cached on disk (:mod:`wdbound.cache`) under the
checkpoint's SHA-256 and every setting, so ``err``, ``table`` and ``check``
reuse it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import defaults
from .checkpoints import Checkpoint
from .defaults import DIAGONAL_EXACT_MAX_DIM, EXACT_AUTO_MAX_DIM, EXACT_MAX_DIM, REFINE_BUDGET
from .cache import Cache, cache_key
from .curvature import (Deflation, HessianOperator, dense_matrix, diagonal_by_columns, resolve_device, resolve_dtype,
                        estimator_scope, set_tf32, zero_rows)
from .data import input_numel, load_dataset, take
from .errors import WdboundError, check_fraction, check_seed
from .estimators import SLQ, DiagonalEstimate, TopEigen, TraceEstimate, hutchinson, top_eigenvalues
from .estimators.hutchinson import estimate_from_products, rademacher
from .estimators.krylov_trace import krylov_deflated_trace
from .estimators.lanczos import (LanczosMemory, LanczosRun, RitzDeflation, Support, density_low_end, density_top,
                                 hvp_precision, lanczos, run_lanczos, sharper_top, slq_from_run, spectral_support)
from .estimators.union_ritz import ATOM_RTOL, GramCache, UnionRitz, union_ritz
from .stats import wasserstein1
from .memory import (LANCZOS_MODES, allocation_phase, MemoryPlan, activation_floats, available_bytes,
                     budget_headroom, human_bytes, kept_graph_bytes, memory_budget, parse_memory, peak_bytes,
                     plan_memory, with_single_pass)
from .progress import Observer
from .provenance import checkpoint_provenance, library_versions

BACKENDS = ("wdbound", "pyhessian")
EXACT_MODES = ("auto", "on", "off")
DIAGONAL_MODES = ("auto", "exact", "hutchinson")
TRACE_MODES = ("deflated", "hutchinson")
NEGATIVE_MASS_RESOLUTION = 1e-3  # resolved negative mass: below -this x |lambda_max| (Spectrum.resolved_negative_mass)
TRACE_RTOL_ZERO = "0: one block of probes"  # what trace_rtol = 0 does (the settings' and the API's check)
TRACE_WORK_VECTORS = 6  # float64 vectors of d per probe the deflated trace holds (probe, product, projections)


def resolve_exact(mode: str | bool, dim: int) -> bool:
    """``--exact auto|on|off`` for a model of ``dim`` parameters: auto is on up to EXACT_AUTO_MAX_DIM."""
    if isinstance(mode, bool):
        return mode
    if mode not in EXACT_MODES:
        raise WdboundError(f"unknown exact mode {mode!r}; use auto, on or off", "exact")
    return mode == "on" or (mode == "auto" and dim <= EXACT_AUTO_MAX_DIM)


@dataclass(frozen=True)
class SpectrumSettings:
    """Every choice that determines a spectrum (and keys its cache)."""

    data: str | None = None  # None: the checkpoint's training data
    split: str = "test"
    max_samples: int | None = None
    subset_seed: int = 0  # seed of the --max-samples subset (its own stream: --seed moves only the probes)
    probes: int | None = defaults.PROBES  # None: from the dimension (defaults.spectrum_probes; see for_dim)
    steps: int | None = None  # None: defaults.STEPS, at most d (for_dim); an explicit value above d is an error
    theorem_probes: int = defaults.THEOREM_PROBES  # the Theorem 6/7 runs (Q^1/2 z starts: stderr from their spread)
    theorem_steps: int = defaults.THEOREM_STEPS
    top_k: int = defaults.TOP_K
    diag_probes: int = 0  # extra Hutchinson probes beyond the SLQ ones
    seed: int = 0
    device: str = "auto"
    dtype: str = "float64"
    hvp: str = "auto"  # auto (double backward for convolutions / attention), forward-over-reverse, double-backward
    batch_size: int = 512
    exact: bool = False
    backend: str = "wdbound"  # or "pyhessian": PyHessian's estimators on the same model, data and loss
    diagonal: str = "auto"  # Q's diagonal: exact (d HVPs), hutchinson, or auto (exact up to DIAGONAL_EXACT_MAX_DIM)
    rtol: float = 0.0  # adaptive SLQ: widen until every err/d interval's half-width <= rtol * |err/d| (0: off)
    max_hvps: int | None = None  # cap of the adaptive refinement; None: REFINE_BUDGET x probes x steps
    loss: str = "cross-entropy"  # cross-entropy (the paper's), label-smoothing:EPS, mse (one-hot targets)
    memory: str = "auto"  # memory budget (wdbound.memory.parse_memory) or auto: a share of the free RAM / GPU memory
    lanczos: str = "auto"  # auto (the memory plan decides), full (whole basis) or low-memory (three-term recurrence)
    tf32: bool = False  # CUDA TF32 matmuls / convolutions in the HVPs (float32 only; off: full float32)
    params: tuple[str, ...] = ()  # globs of parameter names spanning the Hessian (empty: every trainable one)
    workers: int = 0  # DataLoader workers for file-backed data (results do not depend on it)
    ends: bool = True  # find the ends of the spectrum (the quadrature intervals of `err` need them)
    trace: str = "hutchinson"  # hutchinson (the SLQ probes, no HVP) or deflated (top-k Krylov space + Hutchinson)
    trace_probes: int = defaults.TRACE_PROBES  # deflated trace: probes of the first block
    trace_rtol: float = defaults.TRACE_RTOL  # deflated trace: add blocks until stderr <= trace_rtol * |trace|
    single_pass: bool = False  # top-k and the trace's deflation space from the SLQ probes' union (no top-k run)
    top_rtol: float = defaults.SPECTRUM_TOP_RTOL  # single pass: top-k error bound target (relative)
    density_tol: float = 0.0  # single pass: stop once the density moves by W1 <= this x lambda_max (0: all steps)

    def for_dim(self, dim: int) -> "SpectrumSettings":
        """These settings with the probe count fixed for a Hessian of ``dim`` parameters (``probes=None``:
        :func:`wdbound.defaults.spectrum_probes`), the steps (``None``: defaults.STEPS) capped at ``dim`` (a
        Krylov space has at most d dimensions) and at EXACT_CROSSCHECK_STEPS with the dense spectrum (the SLQ is
        then a cross-check); what a run records in its provenance."""
        probes = self.probes if self.probes is not None else defaults.spectrum_probes(dim)
        steps = min(self.steps or defaults.STEPS, dim, defaults.EXACT_CROSSCHECK_STEPS if self.exact else dim)
        return replace(self, probes=probes, steps=steps, theorem_steps=min(self.theorem_steps, dim))

    def refine_cap(self) -> int:
        """HVPs the adaptive SLQ may add: ``max_hvps``, else REFINE_BUDGET times the base SLQ run."""
        return (self.max_hvps if self.max_hvps is not None else
                REFINE_BUDGET * (self.probes or 1) * (self.steps or defaults.STEPS))

    def exact_diagonal_for(self, dim: int) -> bool:
        """Whether Q's diagonal is computed exactly (d unit-vector HVPs) for a model of ``dim`` parameters."""
        return self.exact or self.diagonal == "exact" or (self.diagonal == "auto" and dim <= DIAGONAL_EXACT_MAX_DIM)

    def validate(self) -> None:
        """Raise a one-line :class:`WdboundError` naming the first setting out of range."""
        if self.backend not in BACKENDS:
            raise WdboundError(f"unknown backend {self.backend!r}; use {' or '.join(BACKENDS)}", "backend")
        for name, value, param in (("probes", 1 if self.probes is None else self.probes, "probes"),
                                   ("steps", 1 if self.steps is None else self.steps, "steps"),
                                   ("theorem steps", self.theorem_steps, "theorem_steps"), ("top-k", self.top_k, "top_k"),
                                   ("batch size", self.batch_size, "hvp_batch_size")):
            if value < 1:
                raise WdboundError(f"{name} = {value} must be >= 1", param)
        check_seed(self.seed)
        check_seed(self.subset_seed, "subset seed", "subset_seed")
        if self.theorem_probes < 2:
            raise WdboundError(f"theorem probes = {self.theorem_probes} must be >= 2 (the Theorem intervals take "
                               "their standard error from the probes' spread)", "theorem_probes")
        if self.workers < 0:
            raise WdboundError(f"workers = {self.workers} must be >= 0", "workers")
        if self.max_samples is not None and self.max_samples < 1:
            raise WdboundError(f"max samples {self.max_samples} must be >= 1", "max_samples")
        if self.diag_probes < 0:
            raise WdboundError(f"diag probes = {self.diag_probes} must be >= 0", "diag_probes")
        if self.diagonal not in DIAGONAL_MODES:
            raise WdboundError(f"unknown diagonal mode {self.diagonal!r}; use auto, exact or hutchinson", "diagonal")
        check_fraction(self.rtol, "rtol", "rtol", "0 turns the refinement off")
        if self.max_hvps is not None and self.max_hvps < 1:
            raise WdboundError(f"max HVPs = {self.max_hvps} must be >= 1", "max_hvps")
        loss_function(self.loss)
        if self.memory != "auto":
            parse_memory(self.memory)
        if self.trace_probes < 2:
            raise WdboundError(f"trace probes = {self.trace_probes} must be >= 2", "trace_probes")
        if self.trace not in TRACE_MODES:
            raise WdboundError(f"unknown trace estimator {self.trace!r}; use deflated or hutchinson", "trace")
        check_fraction(self.trace_rtol, "trace rtol", "trace_rtol", TRACE_RTOL_ZERO)
        if not (0 < self.top_rtol < 1) or not math.isfinite(self.top_rtol):
            raise WdboundError(f"top rtol = {self.top_rtol:g} must lie in (0, 1)", "top_rtol")
        check_fraction(self.density_tol, "density tol", "density_tol", "0: every step")
        if self.lanczos not in LANCZOS_MODES:
            raise WdboundError(f"unknown lanczos mode {self.lanczos!r}; use auto, full or low-memory", "lanczos")


def spectrum_command_settings(**overrides) -> SpectrumSettings:
    """The settings of ``wdbound spectrum`` at its defaults (which differ from the library's: float32 HVPs,
    2 to 5 probes by the dimension x at most 40 steps in a single pass stopped by its accuracy targets, the
    deflated trace to 10 % from at least 8 samples, no lower-end run, Hutchinson diagonal), with ``overrides``."""
    chosen = dict(probes=None, steps=defaults.SPECTRUM_STEPS, dtype=defaults.SPECTRUM_DTYPE,
                  trace=defaults.SPECTRUM_TRACE, ends=defaults.SPECTRUM_ENDS, diagonal="hutchinson",
                  single_pass=defaults.SINGLE_PASS, density_tol=defaults.SPECTRUM_DENSITY_TOL,
                  trace_rtol=defaults.SPECTRUM_TRACE_RTOL)
    return SpectrumSettings(**{**chosen, **overrides})


@dataclass(frozen=True)
class Spectrum:
    """Every estimate of one Hessian: top-k, the SLQ density with its support, trace and diagonal, the exact spectrum when asked, what was deflated, and the provenance."""

    d: int
    n_eval: int
    top: TopEigen
    slq: SLQ
    trace: TraceEstimate
    diagonal: DiagonalEstimate
    hvps: int
    wall_seconds: float
    provenance: dict
    exact_eigenvalues: np.ndarray | None = None
    exact_diagonal: np.ndarray | None = None
    zero_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # deflated coordinates
    support: Support | None = None  # ends of H's spectrum (for the quadrature intervals)
    deflation: dict | None = None  # Deflation.to_json(): zero rows and logit-shift directions removed from the probes
    cached: bool = False  # loaded from the cache rather than computed in this run
    extra: dict = field(default_factory=dict)  # live objects of a fresh run (operator, dense, generator); never cached

    @property
    def shift_directions(self) -> int:
        """How many logit-shift directions were deflated."""
        return int((self.deflation or {}).get("logit_shift", 0))

    @property
    def negative_mass(self) -> float:
        """The SLQ measure's mass on negative eigenvalues."""
        nodes, weights = self.slq.measure()
        return float(weights[nodes < 0].sum())

    @property
    def resolved_negative_mass(self) -> float:
        """The SLQ measure's mass below ``-NEGATIVE_MASS_RESOLUTION x |lambda_max|``: the negative mass the
        quadrature resolves. Trained networks have a dense cluster of tiny eigenvalues of both signs around 0;
        which side of 0 a Ritz node in that cluster lands on is chance (measured on the digits MLP: the mass
        below 0 ranges 0.11-0.50 over seeds against the exact 0.31, the mass below -1e-3 lambda_max
        0.09-0.11 against the exact 0.11)."""
        nodes, weights = self.slq.measure()
        return float(weights[nodes < self.resolved_negative_threshold].sum())

    @property
    def resolved_negative_threshold(self) -> float:
        """``-NEGATIVE_MASS_RESOLUTION x |lambda_max|`` (lambda_max: the top eigenvalue, else the widest node)."""
        scale = (float(np.max(np.abs(self.top.values))) if len(self.top.values)
                 else float(np.abs(self.slq.measure()[0]).max()))
        return -NEGATIVE_MASS_RESOLUTION * scale

    def to_pandas(self):
        """The summary ``wdbound spectrum`` prints, as a ``pandas.DataFrame`` with columns ``quantity``,
        ``value``, ``error`` (a residual bound or one standard error; 0 where exact) and ``kind``: each top
        eigenvalue, the trace, the negative mass, the zero rows, the logit-shift directions, the diagonal's mean
        and its non-positive and exactly-zero entries, and (with the dense Hessian) the exact top and trace."""
        import pandas as pd

        exact_top = self.provenance.get("top_from") == "dense Hessian"
        rows = [(f"lambda_{i + 1}", float(v), 0.0 if exact_top else float(b), "exact" if exact_top else
                 "residual bound") for i, (v, b) in enumerate(zip(self.top.values, self.top.bounds))]
        diag = self.diagonal.summary()
        rows += [("trace", self.trace.estimate, self.trace.stderr, self.trace.method),
                 ("negative mass", self.negative_mass, math.nan, "SLQ"),
                 ("negative mass below -1e-3 lambda_max", self.resolved_negative_mass, math.nan, "SLQ"),
                 ("zero rows", float(len(self.zero_rows)), 0.0, "exact"),
                 ("logit-shift directions", float(self.shift_directions), 0.0, "exact"),
                 ("diagonal mean", float(diag["mean"]), math.nan, "exact" if not self.diagonal.probes else
                  "hutchinson"),
                 ("diagonal entries <= 0", float(diag["nonpositive"]), math.nan, "count"),
                 ("diagonal entries exactly 0", float(diag["exact_zero"]), 0.0, "exact")]
        if self.exact_eigenvalues is not None:
            rows += [("exact lambda_max", float(self.exact_eigenvalues[-1]), 0.0, "exact"),
                     ("exact trace", float(self.exact_eigenvalues.sum()), 0.0, "exact")]
        return pd.DataFrame(rows, columns=["quantity", "value", "error", "kind"])

    def to_json(self, diagonal_path: str | None = None) -> dict:
        """Every figure with its provenance (``wdbound spectrum --json``); ``diagonal_path`` names the .npy of the diagonal."""
        out = {
            "d": self.d,
            "n_eval": self.n_eval,
            "top_eigenvalues": self.top.values.tolist(),
            "top": self.top.to_json(),
            "trace": self.trace.to_json(),
            "negative_mass": self.negative_mass,
            "resolved_negative_mass": {"mass": self.resolved_negative_mass,
                                       "below": self.resolved_negative_threshold,
                                       "note": "mass below -1e-3 x |lambda_max|: the part of the negative mass the "
                                               "quadrature resolves (nodes in the cluster around 0 fall on either "
                                               "side by chance)"},
            "zero_rows": {"count": int(len(self.zero_rows)),
                          "note": "exactly-zero Hessian rows, deflated: counted as exact zero eigenvalues"},
            "logit_shift": {"count": self.shift_directions,
                            "note": "directions that shift every logit equally (CE is invariant): exact zero "
                                    "eigenvalues, deflated"},
            "top_ritz": {"count": self.slq.atom_count,
                         "values": self.slq.atoms.tolist() if self.slq.atom_count else [],
                         "note": "Ritz vectors of the top-k run projected off the low-memory density run, their "
                                 "values added back as atoms of weight 1/d (the err/d interval allows for it)"},
            "diagonal": {"estimate": self.diagonal.summary(), "path": diagonal_path,
                         "npy_layout": "[2, d]: row 0 estimate, row 1 stderr"},
            "slq": {"nodes": [n.tolist() for n in self.slq.nodes], "weights": [w.tolist() for w in self.slq.weights],
                    "lengths": self.slq.lengths.tolist(), "null_weight": self.slq.null_weight},
            "support": self.support.to_json() if self.support is not None else None,
            "provenance": self.provenance,
            "cached": self.cached,
        }
        if self.exact_eigenvalues is not None:
            ev = self.exact_eigenvalues
            out["exact"] = {"eigenvalues": ev.tolist(), "trace": float(ev.sum()),
                            "diagonal_zero": int((self.exact_diagonal == 0).sum()),
                            "top_eigenvalues": ev[::-1][: len(self.top.values)].tolist()}
        return out


    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) for the cache: everything but the live ``extra`` objects."""
        meta = {"d": self.d, "n_eval": self.n_eval, "hvps": self.hvps, "wall_seconds": self.wall_seconds,
                "provenance": self.provenance, "top": self.top.to_json(), "trace_method": self.trace.method,
                "diag_probes": self.diagonal.probes, "null_weight": self.slq.null_weight,
                "support": self.support.to_json() if self.support is not None else None,
                "deflation": self.deflation}
        arrays = {**self.slq.to_arrays("slq"), "trace_samples": self.trace.samples,
                  "diag_estimate": self.diagonal.estimate, "diag_stderr": self.diagonal.stderr,
                  "zero_rows": self.zero_rows}
        if self.slq.rule == "union":
            arrays["slq_union_nodes"] = self.slq.nodes[0]
            arrays["slq_union_weights"] = np.stack(self.slq.weights)
        if self.exact_eigenvalues is not None:
            arrays["exact_eigenvalues"] = self.exact_eigenvalues
        if self.exact_diagonal is not None:
            arrays["exact_diagonal"] = self.exact_diagonal
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "Spectrum":
        """A spectrum from a cache entry (``cached=True``, no live objects)."""
        top = meta["top"]
        slq = SLQ.from_arrays("slq", arrays, meta["d"], null_weight=meta["null_weight"])
        if "slq_union_nodes" in arrays:
            slq = slq.with_union_rule(arrays["slq_union_nodes"], arrays["slq_union_weights"])
        support = Support(**meta["support"]) if meta.get("support") else None
        trace = TraceEstimate.from_samples(arrays["trace_samples"], meta["trace_method"])
        return cls(meta["d"], meta["n_eval"],
                   TopEigen(np.asarray(top["values"]), np.asarray(top["residuals"]),
                            np.asarray(top.get("bounds", top["residuals"])), top["steps"], top["converged"], top["tol"]),
                   slq, trace, DiagonalEstimate(arrays["diag_estimate"], arrays["diag_stderr"], meta["diag_probes"]),
                   meta["hvps"], meta["wall_seconds"], meta["provenance"], arrays.get("exact_eigenvalues"),
                   arrays.get("exact_diagonal"), arrays["zero_rows"], support, meta.get("deflation"), cached=True)


# Top Ritz vectors are projected off a low-memory density run only when they are at most this share of the
# dimensions left: the interval's interlacing slack is k·V(f)/d (RitzDeflation), negligible at this share.
RITZ_MAX_SHARE = 1e-3


def deflated_density(operator, probes: int, steps: int, seed: int, generator: torch.Generator,
                     top: TopEigen, memory: LanczosMemory | None = None,
                     ends: bool = True) -> tuple[LanczosRun, SLQ, Support | None, Deflation]:
    """The SLQ run every spectrum starts from: the ends of the spectrum, the exact null directions (zero rows,
    logit shift) found and removed from ``probes`` Rademacher probes, ``steps`` Lanczos steps each.

    ``generator`` (which drew ``top``) draws the zero-row probes and the SLQ probes; the ends and the
    logit-shift check use their own streams (``seed + 1``, ``seed + 2``), so the SLQ probes do not depend on them.
    ``memory`` (from the memory plan) decides between the whole basis and the low-memory recurrence.
    ``ends=False`` skips the ends (at most 150 HVPs; only the quadrature intervals of ``err`` need them):
    the support is then None.

    When the memory plan runs the density with the three-term recurrence and has room for them, the Ritz vectors
    ``top``'s run kept are projected off too and come back as atoms (:class:`RitzDeflation`, no HVP; at most
    ``RITZ_MAX_SHARE`` of the dimensions): the returned deflation carries them (its probes then do not estimate
    the diagonal).
    """
    deflation = Deflation.find(operator, zero_rows(operator, generator), float(abs(top.values).max()),
                               torch.Generator().manual_seed(seed + 2))
    if memory is not None and memory.ritz and not memory.full(probes, steps, operator.dim):
        ritz = RitzDeflation.from_top(top, deflation.project_null, precision=hvp_precision(operator),
                                      max_count=int(RITZ_MAX_SHARE * (operator.dim - deflation.null_count)))
        if ritz is not None:
            deflation = deflation.with_ritz(ritz)

    def draw(count: int) -> torch.Tensor:
        return deflation.project(rademacher(count, operator.dim, generator, operator.dtype, operator.device))

    run = run_lanczos(deflation.operator(operator), draw, probes, steps, memory)
    density = slq_from_run(run, operator.dim, null_weight=deflation.null_count,
                           space_dim=operator.dim - deflation.null_count, precision=hvp_precision(operator),
                           ritz=deflation.ritz)
    support = spectrum_ends(operator, density, top, seed, memory) if ends else None
    return run, density, support, deflation


def spectrum_ends(operator, density: SLQ, top: TopEigen, seed: int, memory: LanczosMemory | None = None) -> Support:
    """The support ``[L, R]`` of the quadrature intervals: R from ``top``'s run, L from the density run itself
    when one of its probes has converged at the bottom (:func:`~wdbound.estimators.lanczos.density_low_end`: no
    HVP), else from a Lanczos run on ``-H`` of at most ``ENDS_MAX_STEPS`` steps (its own stream, ``seed + 1``)."""
    high = float(top.values[0] + top.residuals[0])
    return spectral_support(operator, torch.Generator().manual_seed(seed + 1), top, max_steps=defaults.ENDS_MAX_STEPS,
                            restart=memory.ends_restart if memory is not None else None,
                            low=density_low_end(density, high, hvp_precision(operator)))


@dataclass(frozen=True)
class TopThenDensity:
    """A top-k Lanczos run, then the deflated SLQ run and the spectrum's ends (:func:`top_then_density`)."""

    top: TopEigen  # with its run's Krylov basis (the deflated trace's span)
    run: LanczosRun
    slq: SLQ
    support: Support | None
    deflation: Deflation
    top_from: str  # "lanczos", or "density run" when the density run's own top Ritz value is sharper


def top_then_density(operator, settings: SpectrumSettings, generator: torch.Generator,
                     memory: LanczosMemory | None = None, restart: int | None = None) -> TopThenDensity:
    """The path without a single pass (``err``, ``table``, ``spectrum --separate-top`` and the API's density):
    top-k by a Lanczos run of at most :func:`top_run_steps` steps (at least TRACE_SPAN_STEPS with the deflated
    trace), the deflated density (:func:`deflated_density`), then top-1 from the density run when its bound is
    smaller (:func:`~wdbound.estimators.lanczos.sharper_top`; not when the density run had the top Ritz vectors
    projected off: it then saw another operator), and the ends from both (``settings.ends``)."""
    span_steps = defaults.TRACE_SPAN_STEPS if settings.trace == "deflated" else 0
    top = top_eigenvalues(operator, settings.top_k, generator, restart=restart, min_steps=span_steps,
                          max_steps=top_run_steps(settings))
    run, density, _, deflation = deflated_density(operator, settings.probes, settings.steps, settings.seed,
                                                  generator, top, memory, ends=False)
    source = "lanczos"
    if deflation.ritz is None:  # the density run saw H itself (beside exact null directions): its top too
        sharper = sharper_top(top, density_top(density, hvp_precision(operator), top.tol))
        top, source = sharper, "lanczos" if sharper is top else "density run"
    support = spectrum_ends(operator, density, top, settings.seed, memory) if settings.ends else None
    return TopThenDensity(top, run, density, support, deflation, source)


@dataclass(frozen=True)
class SinglePass:
    """The SLQ run of the single pass and what its union gives (:func:`single_pass`)."""

    run: LanczosRun
    slq: SLQ  # with the union quadrature, converged Ritz pairs as exact atoms
    union: UnionRitz
    deflation: Deflation
    checks: list[dict]  # each check: steps, top-k certified, how far the density moved (W1 / lambda_max)
    atoms: int = 0  # converged Ritz pairs given their exact mass 1/d in the density

    def to_json(self) -> dict:
        """Steps taken and the checks that decided them (the provenance's ``single_pass``)."""
        return {"steps": int(self.run.alphas.shape[1]), "checks": self.checks, "span": self.union.span.rank,
                "top_certified": self.union.top.converged, "exact_atoms": self.atoms,
                "atom_rtol": ATOM_RTOL}


def union_slq(run: LanczosRun, union: UnionRitz, dim: int, null_weight: float) -> tuple[SLQ, int]:
    """The SLQ of a single pass's run on the union quadrature, its converged Ritz pairs as exact atoms
    (:meth:`~wdbound.estimators.union_ritz.UnionRitz.deflated_weights`), and how many atoms."""
    slq = slq_from_run(run, dim, null_weight)
    weights, atoms = union.deflated_weights(slq.norms_sq)
    return slq.with_union_rule(union.nodes, weights), atoms


class _Targets:
    """The stopping rule of the single pass: top-k certified and the density settled (see SpectrumSettings)."""

    def __init__(self, top_k: int, top_rtol: float, density_tol: float, dim: int, null_weight: float) -> None:
        self.top_k, self.top_rtol, self.density_tol = top_k, top_rtol, density_tol
        self.dim, self.null_weight = dim, null_weight
        self.checks: list[dict] = []
        self.last: tuple[int, UnionRitz] | None = None
        self.gram = GramCache()  # one run's Gram matrix, grown check by check
        self.measure: tuple[np.ndarray, np.ndarray] | None = None

    def union(self, run: LanczosRun) -> UnionRitz:
        """The union of ``run`` (reused when the last check saw the same steps)."""
        steps = int(run.alphas.shape[1])
        if self.last is None or self.last[0] != steps:
            self.last = (steps, union_ritz(run, self.top_k, tol=self.top_rtol, cache=self.gram))
        return self.last[1]

    def __call__(self, run: LanczosRun) -> bool:
        union = self.union(run)
        measure = union_slq(run, union, self.dim, self.null_weight)[0].measure()
        scale = float(np.abs(measure[0]).max()) or 1.0
        moved = wasserstein1(*self.measure, *measure) / scale if self.measure is not None else math.inf
        self.measure = measure
        self.checks.append({"steps": int(run.alphas.shape[1]), "top_certified": union.top.converged,
                            "max_top_residual": float(np.max(union.top.residuals)),
                            "max_top_bound": float(np.max(union.top.bounds)),
                            "density_moved_w1_over_lambda_max": moved})
        return union.top.converged and moved <= self.density_tol


def single_pass(operator, settings: SpectrumSettings, generator: torch.Generator) -> SinglePass:
    """Zero rows and logit shift deflated, then the SLQ probes with their whole bases, stopped every
    SPECTRUM_CHECK_EVERY steps once the top-k Ritz values of the union of their Krylov spaces are certified
    to ``top_rtol`` and the union-quadrature density moved by at most ``density_tol`` x lambda_max since the
    previous check (``density_tol`` 0: all ``steps``). No other Lanczos run: top-k, the trace's deflation
    space and the density all come from these probes (:mod:`wdbound.estimators.union_ritz`)."""
    deflation = Deflation.find(operator, zero_rows(operator, generator), None,
                               torch.Generator().manual_seed(settings.seed + 2))
    starts = deflation.project(rademacher(settings.probes, operator.dim, generator, operator.dtype, operator.device))
    targets = _Targets(settings.top_k, settings.top_rtol, settings.density_tol, operator.dim, deflation.null_count)
    run = lanczos(operator, starts, settings.steps, keep_basis=True,
                  stop=targets if settings.density_tol > 0 else None, check_every=defaults.SPECTRUM_CHECK_EVERY)
    union = targets.union(run)
    slq, atoms = union_slq(run, union, operator.dim, deflation.null_count)
    return SinglePass(run, slq, union, deflation, targets.checks, atoms)


def evaluation_data(ckpt: Checkpoint, settings: SpectrumSettings) -> str:
    """The data spec the Hessian is evaluated on: the flag, else the checkpoint's training data, else (a digits
    zoo architecture only) the embedded digits. Any other model without either is a one-line error: it never
    silently gets 8x8 digits."""
    from .models import is_digits_arch

    chosen = settings.data or (ckpt.meta.get("train") or {}).get("data")
    if chosen:
        return chosen
    if is_digits_arch(ckpt.meta.get("arch", "")):
        return "digits"
    raise WdboundError(f"{ckpt.path.name} records no training data and {ckpt.meta.get('arch')} is not a digits "
                       "architecture: name the data to evaluate on (cifar10:PATH, imagefolder:PATH or digits)", "data")


def loss_function(spec: str):
    """``cross-entropy`` (None: the operator's default), ``label-smoothing:EPS`` or ``mse`` (on one-hot targets)."""
    import torch.nn.functional as F

    if spec == "cross-entropy":
        return None
    if spec == "mse":
        def mse_one_hot(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(outputs, F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype))

        return mse_one_hot
    name, sep, raw = spec.partition(":")
    if name == "label-smoothing" and sep:
        try:
            eps = float(raw)
        except ValueError:
            eps = math.nan
        if 0 <= eps < 1:
            return lambda outputs, labels: F.cross_entropy(outputs, labels, label_smoothing=eps)
    raise WdboundError(f"unknown loss {spec!r}; use cross-entropy, label-smoothing:EPS (0 <= EPS < 1) or mse",
                       "loss")


def memory_plan(operator: HessianOperator, settings: SpectrumSettings, refine_factor: int = 1) -> MemoryPlan:
    """The memory plan of an analysis of ``operator`` under ``settings`` (see :mod:`wdbound.memory`); raises
    the ``--memory`` error when nothing fits. Applies the plan's HVP chunk and probe block to the operator."""
    settings = settings.for_dim(operator.dim)
    budget, baseline, source = memory_budget(settings.memory, operator.device)
    example = take(next(operator.chunks())[0], slice(0, 1))
    activation = activation_floats(operator.model, example)
    exact_chunk = 256 if settings.exact else (64 if settings.exact_diagonal_for(operator.dim) else 0)
    graph = kept_graph_size(operator, activation)

    def planned(probe_chunk: int) -> MemoryPlan:
        return plan_memory(dim=operator.dim, probes=settings.probes, steps=settings.steps, top_k=settings.top_k,
                           hvp_bytes=torch.finfo(operator.dtype).bits // 8, example_floats=input_numel(example),
                           activation_per_example=activation, n_eval=operator.n_eval,
                           data_resident=operator.resident, hvp_chunk=operator.batch_size,
                           probe_chunk=probe_chunk, budget=budget, budget_source=source, mode=settings.lanczos,
                           exact_diagonal_chunk=exact_chunk, refine_factor=refine_factor, baseline=baseline,
                           trace_vectors=TRACE_WORK_VECTORS if settings.trace == "deflated" else 0, graph=graph)

    plan = planned(operator.probe_chunk)
    if settings.single_pass and settings.lanczos != "low-memory":  # an explicit low-memory run keeps no basis
        single = dict(dim=operator.dim, probes=settings.probes, steps=settings.steps,
                      trace_vectors=TRACE_WORK_VECTORS if settings.trace == "deflated" else 0)

        # The single pass saves more HVPs than a kept graph saves per HVP: it gets the room first. Then, while
        # its basis does not fit all the steps, a probe block of 1 (vmapped probes share an HVP pass but
        # multiply its activations; on a CPU the block buys little, measured) when that fits more steps.
        def single_first(candidate: MemoryPlan) -> MemoryPlan:
            chosen = with_single_pass(candidate, **single)
            if candidate.keep_graph and chosen.single_pass_steps is None:
                chosen = with_single_pass(replace(candidate, graph=0), **single)
            return chosen

        chosen = single_first(plan)
        if (chosen.single_pass_steps or 0) < settings.steps and plan.probe_block > 1:
            # A block of 1 frees activations, which the planner may hand to a kept graph: the single pass
            # still comes first (ResNet-18 on 256 images: the graph alone left it no room).
            narrow = single_first(planned(1))
            if (narrow.single_pass_steps or 0) > (chosen.single_pass_steps or 0):
                chosen = narrow
        plan = chosen
    if settings.exact:
        need = baseline + operator.dim**2 * 8 * 3  # the matrix, its float64 copy and eigvalsh's workspace
        if need > budget:
            raise WdboundError(f"the exact spectrum needs ~{human_bytes(need)} for the dense Hessian, over the "
                               f"{human_bytes(budget)} budget", "exact")
    plan = replace(plan, headroom=budget_headroom(settings.memory, budget, baseline, operator.device))
    operator.probe_chunk = plan.probe_block
    if plan.hvp_chunk != operator.batch_size:
        operator.rechunk(plan.hvp_chunk)
    operator.use_kept_graph(plan.keep_graph)
    return plan


def auto_kept_graph(operator: HessianOperator, share: float = 0.25) -> bool:
    """Whether to keep the operator's gradient graph outside a memory plan (the Python API): when it is
    allowed (:func:`kept_graph_size`) and takes at most ``share`` of the free memory of the device."""
    size = kept_graph_size(operator)
    return 0 < size <= share * available_bytes(operator.device)[0]


def kept_graph_size(operator: HessianOperator, activation_per_example: int | None = None) -> int:
    """Bytes of the operator's gradient graph if it may be kept (resident data, double backward or
    ``--hvp auto``), else 0. ``activation_per_example``: :func:`wdbound.memory.activation_floats` of the
    operator's model when the caller has it (else one forward pass of one example measures it)."""
    if not (operator.resident and (operator.auto_mode or operator.mode == "double-backward")):
        return 0
    if activation_per_example is None:
        activation_per_example = activation_floats(operator.model, take(next(operator.chunks())[0], slice(0, 1)))
    local = operator.n_eval if operator.local is None else len(operator.local)
    return kept_graph_bytes(activation_per_example, local, torch.finfo(operator.dtype).bits // 8)


def build_operator(ckpt: Checkpoint, settings: SpectrumSettings) -> HessianOperator:
    """The Hessian operator of ``ckpt`` on its evaluation data under ``settings`` (TF32 set as asked)."""
    from .models import image_size

    set_tf32(settings.tf32)
    data = evaluation_data(ckpt, settings)
    dataset = load_dataset(data, settings.split, image_size(ckpt.meta["arch"], ckpt.meta.get("arch_kwargs")))
    from .distributed import local_device, shard

    return HessianOperator(ckpt.model, dataset, batch_size=settings.batch_size, max_samples=settings.max_samples,
                           device=local_device(resolve_device(settings.device)), dtype=resolve_dtype(settings.dtype),
                           mode=settings.hvp, loss_fn=loss_function(settings.loss),
                           params=parameter_globs(settings.params), sample_seed=settings.subset_seed,
                           workers=settings.workers, shard=shard())


def parameter_globs(patterns: tuple[str, ...]):
    """``--params`` globs as the operator's parameter filter (None: every trainable parameter)."""
    if not patterns:
        return None
    from fnmatch import fnmatchcase

    return lambda name, _param: any(fnmatchcase(name, pattern) for pattern in patterns)


@dataclass(frozen=True)
class LayerSpectrum:
    """The spectrum of the Hessian block of one parameter tensor (``--per-layer``)."""

    name: str
    spectrum: Spectrum

    def to_json(self) -> dict:
        """The block's headline figures and its SLQ measure."""
        s = self.spectrum
        return {"name": self.name, "d": s.d, "top_eigenvalue": float(s.top.values[0]),
                "top_residual": float(s.top.residuals[0]), "trace": s.trace.estimate, "trace_stderr": s.trace.stderr,
                "negative_mass": s.negative_mass, "zero_rows": int(len(s.zero_rows)),
                "logit_shift": s.shift_directions, "hvps": s.hvps, "cached": s.cached,
                "slq": {"nodes": [n.tolist() for n in s.slq.nodes], "weights": [w.tolist() for w in s.slq.weights]}}


def per_layer_spectra(ckpt: Checkpoint, settings: SpectrumSettings, cache: Cache | None = None,
                      observer: Observer | None = None) -> list[LayerSpectrum]:
    """One spectrum per trainable parameter tensor (those matching ``settings.params`` when given): the
    diagonal Hessian block of that tensor, the other parameters held fixed. Each is cached on its own, so an
    interrupted run keeps the finished layers; ``observer.item`` sees each name as it finishes."""
    from glob import escape

    observer = observer or Observer()
    select = parameter_globs(settings.params) or (lambda _n, _p: True)
    names = [n for n, p in ckpt.model.named_parameters() if p.requires_grad and select(n, p)]
    if not names:
        raise WdboundError("no trainable parameter matches the parameter globs", "params")
    observer.start(f"{ckpt.path.name} per layer", None)
    out = []
    for name in names:
        numel = dict(ckpt.model.named_parameters())[name].numel()
        layer_settings = replace(settings, params=(escape(name),), steps=min(settings.steps or defaults.STEPS, numel))
        layer = LayerSpectrum(name, compute_spectrum(ckpt, layer_settings, observer.hvps, cache))
        out.append(layer)
        observer.item(name)
    return out


def per_layer_json(ckpt: Checkpoint, settings: SpectrumSettings, layers: list[LayerSpectrum]) -> dict:
    """``wdbound spectrum --per-layer --json``: the checkpoint, the settings and every block."""
    return {"checkpoint": str(ckpt.path), "settings": asdict(settings), "layers": [layer.to_json() for layer in layers]}


def spectrum_key(ckpt: Checkpoint, settings: SpectrumSettings) -> str:
    """Cache key: the checkpoint's bytes, how it was read, and every setting that changes the numbers
    (``batch_size`` is a memory knob and ``device`` only where the arithmetic runs: both included anyway,
    since different BLAS paths give last-bit differences a regression check should not have to explain)."""
    return cache_key("spectrum", ckpt.sha256, ckpt.meta.get("arch"), ckpt.meta.get("arch_kwargs"),
                     evaluation_data(ckpt, settings), asdict(settings))


def compute_spectrum(ckpt: Checkpoint, settings: SpectrumSettings,
                     on_hvps: Callable[[int], None] | None = None, cache: Cache | None = None,
                     on_plan: Callable[[MemoryPlan], None] | None = None, refine_factor: int = 1) -> Spectrum:
    """Top-k, SLQ, Hutchinson trace/diagonal (and with ``exact`` the dense spectrum) of one checkpoint.

    With a ``cache``, a spectrum computed before with the same checkpoint and settings is returned
    instead (``cached=True``, no live operator in ``extra``). ``on_plan`` receives the memory plan before
    the first HVP; ``refine_factor`` is how much longer the longest later SLQ run may be (``err``'s
    adaptive refinement), for the plan."""
    settings.validate()
    key = spectrum_key(ckpt, settings)
    if settings.backend != "wdbound":
        return _foreign_spectrum(ckpt, settings, key)
    if cache is not None and (hit := cache.load(key, Spectrum.from_arrays)) is not None:
        return hit
    with allocation_phase("loading the model and the evaluation data"):
        operator = build_operator(ckpt, settings)
    check_sizes(operator.dim, steps=settings.steps)
    settings = settings.for_dim(operator.dim)
    check_sizes(operator.dim, top_k=settings.top_k, exact=settings.exact)
    if settings.exact and operator.dim > EXACT_MAX_DIM:
        raise WdboundError(f"the exact spectrum needs a dense {operator.dim}x{operator.dim} Hessian "
                           f"({human_bytes(8 * operator.dim**2)} in float64, ~3x that with eigvalsh); the limit is "
                           f"{EXACT_MAX_DIM} parameters", "exact")
    plan = memory_plan(operator, settings, refine_factor)
    if on_plan is not None:
        on_plan(plan)
    operator.on_matvecs = on_hvps
    phase = "building the dense Hessian" if settings.exact else "estimating the spectrum (Lanczos, trace, diagonal)"
    with allocation_phase(phase, plan):
        result = estimate_spectrum(operator, settings, plan)
    result.provenance.update(checkpoint_provenance(ckpt, evaluation_data(ckpt, settings), key))
    if cache is not None:
        cache.put(key, *result.to_arrays())
    return result


def analyse_spectrum(ckpt: Checkpoint, settings: SpectrumSettings, cache: Cache | None = None,
                     observer: Observer | None = None) -> Spectrum:
    """:func:`compute_spectrum` reporting to ``observer``: the planned HVPs, the memory plan, every HVP
    spent, and the end (``wdbound spectrum``)."""
    from .models import count_parameters

    observer = observer or Observer()
    observer.start(ckpt.path.name, expected_hvps(settings, count_parameters(ckpt.model)))
    result = compute_spectrum(ckpt, settings, observer.hvps, cache, on_plan=observer.plan)
    observer.done(0 if result.cached else result.hvps)
    return result


def write_spectrum_json(result: Spectrum, path: Path) -> tuple[Path, Path]:
    """Write every figure of ``result`` with its provenance as JSON at ``path`` and the diagonal (estimate and
    stderr, ``[2, d]``) beside it as ``<stem>.diagonal.npy``, each atomically. Returns both paths."""
    from .io_utils import write_atomic, write_json_atomic

    path = Path(path)
    diag_path = path.with_name(path.stem + ".diagonal.npy")

    def save(tmp) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, np.stack([result.diagonal.estimate, result.diagonal.stderr]))

    write_atomic(diag_path, save)
    write_json_atomic(path, result.to_json(str(diag_path)))
    return path, diag_path


def estimate_spectrum(operator, settings: SpectrumSettings, plan: MemoryPlan | None = None) -> Spectrum:
    """Every estimate of a spectrum from an operator: top-k, the deflated SLQ density and its support,
    Hutchinson trace / diagonal from the same probes, and (``settings.exact`` / the diagonal setting) the
    dense spectrum or the exact diagonal. Pure: no file, no cache; the probes come from ``settings.seed``.
    ``plan`` (default: full re-orthogonalisation, unrestarted top-k) is how the Lanczos runs use memory.
    The one owner of how a spectrum spends its HVPs (:func:`expected_hvps` counts them beside it)."""
    with estimator_scope(plan is None or plan.heap_reuse):
        return _estimate_spectrum(operator, settings.for_dim(operator.dim), plan)


def _estimate_spectrum(operator, settings: SpectrumSettings, plan: MemoryPlan | None = None) -> Spectrum:
    """The body of :func:`estimate_spectrum` (NumPy's BLAS already sequential)."""
    memory = plan.memory if plan is not None else None
    generator = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    restart = plan.restart if plan is not None else None
    shared = None
    cap = settings.steps if plan is None else plan.single_pass_steps
    exact_ev = exact_diag = dense = None
    top_source = "lanczos"  # or "density run": the density run's own top Ritz value (sharper_top)
    if settings.exact:
        # The dense Hessian first: the top eigenvalues, the ends, the trace and the diagonal are read off it
        # (exact, no Lanczos run for them); the SLQ density run that follows is the cross-check.
        matrix = dense_matrix(operator).double()
        exact_diag = torch.diagonal(matrix).cpu().numpy()
        exact_ev = torch.linalg.eigvalsh(matrix).cpu().numpy()
        dense = matrix.cpu().numpy()
        del matrix
        top = exact_top(exact_ev, settings.top_k)
        run, density, _, deflation = deflated_density(operator, settings.probes, settings.steps, settings.seed,
                                                      generator, top, memory, ends=False)
        support = exact_support(exact_ev) if settings.ends else None
        span = None
    elif settings.single_pass and cap:
        shared = single_pass(operator, replace(settings, steps=cap), generator)
        run, density, deflation, top, span = shared.run, shared.slq, shared.deflation, shared.union.top, \
            shared.union.span
        if not top.converged:  # the union did not certify top-k within the steps: a Lanczos run of its own
            top = top_eigenvalues(operator, settings.top_k, generator, restart=restart,
                                  max_steps=defaults.TOP_MAX_STEPS)
        support = spectrum_ends(operator, density, top, settings.seed, memory) if settings.ends else None
    else:
        # The deflated trace's Krylov space is the top-k run's: at least TRACE_SPAN_STEPS steps make it a good one.
        separate = top_then_density(operator, settings, generator, memory, restart)
        top, run, density, support, deflation = (separate.top, separate.run, separate.slq, separate.support,
                                                 separate.deflation)
        top_source, span = separate.top_from, top.span
    null = deflation.zero_mask
    # Probes projected off top Ritz vectors do not estimate the diagonal (Deflation): as many plain probes instead.
    products = (None if deflation.ritz is not None else
                run.products if run.products is not None else (run.starts, run.first_products))
    if exact_ev is not None:
        trace = TraceEstimate(float(exact_diag.sum()), 0.0, np.array([exact_diag.sum()]), "exact")
        diagonal = DiagonalEstimate(exact_diag, np.zeros_like(exact_diag), 0)
    elif settings.diag_probes or products is None:
        trace, diagonal = hutchinson(operator, settings.diag_probes + (settings.probes if products is None else 0),
                                     generator, extra=products)
    elif run.products is not None:
        trace, diagonal = run.products.estimates()
    else:
        trace, diagonal = estimate_from_products(run.starts, run.first_products)
    leave_one_out = 0  # trace samples the SLQ probes gave
    if settings.trace == "deflated" and span is not None and exact_ev is None:
        # Plain Rademacher probes: projecting out the deflated null directions too would bias the estimate
        # (the Krylov start vector is not orthogonal to them).
        # The single pass's own probes are its first samples (leave-one-out: no HVP).
        prior = shared.union.trace_samples() if shared is not None else None
        leave_one_out = 0 if prior is None else len(prior)
        trace = krylov_deflated_trace(operator, span, settings.trace_probes, generator, rtol=settings.trace_rtol,
                                      max_probes=max(settings.trace_probes, defaults.TRACE_MAX_PROBES),
                                      chunk=None if plan is None else plan.trace_block(
                                          dim=operator.dim, trace_vectors=TRACE_WORK_VECTORS,
                                          top_run=shared is None or top is not shared.union.top),
                                      prior=prior)
    if exact_ev is None and settings.exact_diagonal_for(operator.dim):
        exact_diag = diagonal_by_columns(operator).double().cpu().numpy()
    wall = time.perf_counter() - start
    matvecs = getattr(operator, "matvecs", 0)
    provenance = {
        "settings": asdict(settings), "device": str(operator.device), "hvp_count": matvecs,
        "wall_seconds": wall, "versions": library_versions(), "loss": f"mean {settings.loss}, model in eval mode",
        "hvp_fallback": getattr(operator, "fallback", None), "hvp_mode": getattr(operator, "mode", None),
        "kept_graph": getattr(operator, "keep_graph", None),
        "memory_plan": plan.to_json() if plan is not None else None, "peak_memory_bytes": peak_bytes(operator.device),
        "eval_subset": subset_record(operator) if isinstance(operator, HessianOperator) else None,
        "processes": getattr(operator, "world", 1), "lanczos": run.reorth, "precision": precision(operator),
        "single_pass": shared.to_json() if shared is not None else None,
        "top_from": ("dense Hessian" if exact_ev is not None else
                     "slq union" if shared is not None and shared.union.top.converged else top_source),
        "trace_leave_one_out": leave_one_out,
        "ritz_deflated": deflation.ritz.count if deflation.ritz is not None else 0,
    }
    # The top-k run's basis served the deflated trace; a Spectrum outlives this phase (err's Theorem runs follow
    # and allocate their own ends basis), so it must not hold those k x d floats on (ViT-S: 3.2 GiB).
    top = replace(top, span=None)
    return Spectrum(operator.dim, getattr(operator, "n_eval", 0), top, density, trace, diagonal, matvecs, wall,
                    provenance, exact_ev, exact_diag, null.nonzero().squeeze(1).cpu().numpy().astype(np.int64),
                    support, deflation.to_json(),
                    extra={"operator": operator, "dense": dense, "generator": generator, "zero_mask": null,
                           "plan": plan, "deflation": deflation})


def check_sizes(dim: int, *, steps: int | None = None, top_k: int | None = None, exact: bool = False) -> None:
    """Raise a one-line :class:`WdboundError` when Lanczos ``steps`` or ``top_k`` do not fit a Hessian of ``dim``
    parameters: at least 1 each, steps at most d, top-k at most d and (without the dense Hessian, ``exact``)
    at most the ``TOP_MAX_STEPS`` values a top-k run can certify. None: not checked.

    >>> check_sizes(10, steps=11)
    Traceback (most recent call last):
    ...
    wdbound.errors.WdboundError: steps = 11 is more than d = 10 parameters (a Krylov space has at most d dimensions)
    """
    if steps is not None:
        if steps < 1:
            raise WdboundError(f"steps = {steps} must be >= 1", "steps")
        if steps > dim:
            raise WdboundError(f"steps = {steps} is more than d = {dim} parameters (a Krylov space has at most d "
                               "dimensions)", "steps")
    if top_k is None:
        return
    if top_k < 1:
        raise WdboundError(f"top-k = {top_k} must be >= 1", "top_k")
    if top_k > dim:
        raise WdboundError(f"top-k = {top_k} is more than d = {dim} parameters (the Hessian has d eigenvalues)",
                           "top_k")
    if not exact and top_k > defaults.TOP_MAX_STEPS:
        raise WdboundError(f"top-k = {top_k} is more than the {defaults.TOP_MAX_STEPS} eigenvalues a top-k "
                           f"Lanczos run of at most {defaults.TOP_MAX_STEPS} steps can certify (the dense Hessian, "
                           f"--exact on, gives any top-k up to d <= {EXACT_MAX_DIM:,})", "top_k")


def exact_top(eigenvalues: np.ndarray, k: int) -> TopEigen:
    """The ``k`` largest of the exact ``eigenvalues`` (ascending) as a converged :class:`TopEigen`: zero steps,
    zero residuals.

    >>> exact_top(np.array([-1.0, 0.5, 2.0]), 2).values.tolist()
    [2.0, 0.5]
    """
    values = np.ascontiguousarray(eigenvalues[::-1][:k], dtype=np.float64)
    return TopEigen(values, np.zeros_like(values), np.zeros_like(values), 0, True, 0.0)


def exact_support(eigenvalues: np.ndarray) -> Support:
    """The ends of the exact ``eigenvalues`` (ascending), each widened by 1e-12 x the spectral radius: the
    symmetric eigensolver's backward error, so the interval contains the spectrum of the operator itself.

    >>> exact_support(np.array([-1.0, 0.5, 2.0])).bounds() == (-1.0 - 2e-12, 2.0 + 2e-12)
    True
    """
    slack = 1e-12 * float(np.abs(eigenvalues).max())
    return Support(float(eigenvalues[0]) - slack, float(eigenvalues[-1]) + slack, 0)


def top_run_steps(settings: SpectrumSettings) -> int:
    """The step cap of the top-k Lanczos run before the density run (``settings`` fixed for the dimension):
    TOP_MAX_STEPS, or TOP_BESIDE_DENSITY_STEPS for top-1 when the density run that follows has at least
    TOP_MAX_STEPS steps (``err``'s 1,280): that run's own top Ritz value then serves when its bound is smaller
    (:func:`~wdbound.estimators.lanczos.density_top`), so the plan need not count 300 steps for it.

    >>> top_run_steps(SpectrumSettings(top_k=1, steps=1280)), top_run_steps(SpectrumSettings(top_k=5, steps=1280))
    (60, 300)
    """
    if settings.top_k == 1 and (settings.steps or defaults.STEPS) >= defaults.TOP_MAX_STEPS:
        return defaults.TOP_BESIDE_DENSITY_STEPS
    return defaults.TOP_MAX_STEPS


def expected_hvps(settings: SpectrumSettings, dim: int) -> int:
    """An upper estimate of the HVPs :func:`estimate_spectrum` spends (for the progress bar): top-k (at most
    300), the bottom end (at most 150), zero rows (3) and the logit-shift check (1), the SLQ probes (and as many
    plain probes for the trace when a low-memory run's cannot serve it), the extra diagonal probes, the deflated
    trace's (at most TRACE_MAX_PROBES probes, and a top-k run of at least TRACE_SPAN_STEPS), and d unit vectors
    for an exact diagonal or dense Hessian."""
    settings = settings.for_dim(dim)
    if settings.exact:  # the dense Hessian gives the top-k, the ends, the trace and the diagonal
        return dim + 5 + settings.probes * min(settings.steps, dim)
    single = settings.single_pass  # no top-k run planned (one follows only when the union cannot certify top-k)
    # A low-memory density run with top Ritz vectors projected off leaves its probes to the SLQ: the trace and
    # the diagonal then take as many plain probes (counted whatever the plan; only an upper estimate here).
    return ((0 if single else min(top_run_steps(settings), dim) + settings.probes) + (defaults.ENDS_MAX_STEPS if settings.ends else 0) + 5
            + settings.probes * min(settings.steps, dim) + settings.diag_probes
            + (max(settings.trace_probes, defaults.TRACE_MAX_PROBES) + (0 if single else defaults.TRACE_SPAN_STEPS)
               if settings.trace == "deflated" else 0)
            + (dim if settings.exact_diagonal_for(dim) else 0))


def subset_record(operator: HessianOperator) -> dict | None:
    """Which examples ``--max-samples`` kept: count, seed and a hash of the indices (None: all)."""
    if operator.subset is None:
        return None
    import hashlib

    digest = hashlib.sha256(operator.subset.numpy().astype("<i8").tobytes()).hexdigest()
    return {"count": int(len(operator.subset)), "of": len(operator.dataset), "seed": operator.sample_seed,
            "indices_sha256": digest, "first_indices": operator.subset[:10].tolist()}


def precision(operator) -> dict:
    """The precision policy of a run, for the provenance."""
    return {"hvp": str(operator.dtype).replace("torch.", ""), "lanczos_vectors": "float64",
            "recurrence_and_quadrature": "float64",
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if operator.device.type == "cuda" else None,
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32) if operator.device.type == "cuda" else None}


def _foreign_spectrum(ckpt: Checkpoint, settings: SpectrumSettings, key: str) -> Spectrum:
    """Another tool's estimators on the same model, data and loss (never cached; no diagonal, no deflation)."""
    from .backends.pyhessian_backend import run_pyhessian

    if settings.exact:
        raise WdboundError("the exact spectrum is computed by wdbound itself: turn it off with the pyhessian backend", "exact")
    if settings.loss != "cross-entropy":
        raise WdboundError("the pyhessian backend runs with the cross-entropy loss only", "loss")
    operator = build_operator(ckpt, settings)
    settings = settings.for_dim(operator.dim)
    top, density, trace, diagonal, hvps, wall = run_pyhessian(operator, settings)
    provenance = {
        **checkpoint_provenance(ckpt, evaluation_data(ckpt, settings), key), "settings": asdict(settings),
        "device": str(operator.device), "hvp_count": hvps, "wall_seconds": wall, "versions": library_versions(),
        "loss": "mean cross-entropy, model in eval mode", "backend": settings.backend,
        "note": "PyHessian 0.1: power iteration (rel. tol 1e-3) for the top eigenvalues, Hutchinson trace with "
                "early stop at rel. change 1e-3, density with torch.eig replaced by eigh (wdbound.backends."
                "pyhessian_compat); no diagonal estimate",
    }
    return Spectrum(operator.dim, operator.n_eval, top, density, trace, diagonal, hvps, wall, provenance)
