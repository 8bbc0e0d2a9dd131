"""err/d intervals at d = 10^4, 10^5, 10^6 on operators whose eigenvalues are known: half-width and coverage
against HVPs, for every SLQ budget tried.

Spectra (``wdbound.synthetic``): a zoo checkpoint's exact spectrum tiled with a 1e-3 relative jitter (``zoo``,
from the dense Hessian of ``--checkpoint``; every eigenvalue repeated, its 10 outliers too), the same with only
its bulk tiled and its 10 largest eigenvalues kept once (``zoo-grown``: about one outlier per class, as trained
networks' Hessians have at any size), and shapes read off published ResNet and ViT densities (``resnet``,
``vit``). Each operator is ``Qᵀ diag(λ) Q`` with a fast random orthogonal ``Q``. A Lanczos run on it from a probe
``z`` is the Lanczos run on ``diag(λ)`` from ``Q z`` (the same Krylov quantities), which is how this script runs it
unless ``--full-operator`` (then every HVP applies ``Q`` and ``Qᵀ``: ~100x slower at d = 10^6, same figures up
to rounding). The zoo's exact null directions (zero rows and logit shift: its eigenvalues below 1e-12 · λmax)
are deflated as ``wdbound`` deflates them on a real model: probes projected off them, counted as exact zeros
(``--no-deflate`` rotates them into the bulk instead, as the first measurements did). Runs whose whole basis
exceeds ``--full-basis`` bytes use the three-term (low-memory) recurrence,
as the tool's memory plan does.

Each Table I cell evaluates its own form: the AdamW form with the AdamW checkpoint's inputs (eta, lambda, b, rho)
and the l2-Adam form with the l2-Adam checkpoint's. For every (spectrum, d, budget, seed) and both forms it prints
the estimate, the interval, the exact value, whether it is covered and the relative half-width; then one summary
line per (spectrum, d, budget): coverage and median half-width per form. HVPs count the density run, the
spectrum's two ends and, with ``--top-k``, the top-k run (as ``wdbound err`` spends them).

    .venv/bin/python benchmarks/scale_synthetic.py [--dims 10000,100000,1000000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wdbound import load_checkpoint
from wdbound.analysis import analyse, bound_inputs
from wdbound.bounds import BoundInputs, corollary3_exact, corollary3_from_slq
from wdbound.cache import Cache
from wdbound.estimators.hutchinson import rademacher
from wdbound.curvature import ProjectedOperator
from wdbound.estimators.lanczos import (SLQ, LanczosMemory, RitzDeflation, hvp_precision, run_lanczos, slq_from_run,
                                       top_eigenvalues)
from wdbound.estimators.quadrature_interval import RADAU_POINTS
from wdbound.memory import RESTART_TOP
from wdbound.spectrum import SpectrumSettings, spectrum_ends
from wdbound.synthetic import KnownSpectrumOperator, grown_spectrum, published_spectrum, repeated_spectrum

ZOO_CLASSES = 10  # the digits: ``zoo-grown`` keeps this many outliers once
BUDGETS = {"16x80 (the earlier default)": (16, 80), "2x160": (2, 160), "2x320": (2, 320), "2x640": (2, 640),
           "1x640": (1, 640), "1x1280 (default)": (1, 1280)}


class RotatedStarts:
    """diag(λ) with probes rotated by Q: the Krylov quantities of ``KnownSpectrumOperator`` at O(d) per HVP."""

    def __init__(self, operator: KnownSpectrumOperator) -> None:
        self.full = operator
        self.dim, self.dtype, self.device = operator.dim, operator.dtype, operator.device
        self.matvecs = 0

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        self.matvecs += vectors.shape[0]
        return self.full.scale * vectors

    def start(self, z: torch.Tensor) -> torch.Tensor:
        return self.full.q.apply(z)


def zoo_inputs(checkpoint: Path) -> tuple[np.ndarray, int, BoundInputs]:
    """The checkpoint's exact eigenvalues (dense Hessian, cached), how many exact null directions ``wdbound``
    deflates on it (zero rows + logit shift), and its bound inputs."""
    ckpt = load_checkpoint(checkpoint, dtype=torch.float64)
    analysis = analyse(ckpt, SpectrumSettings(top_k=1, diagonal="hutchinson", exact=True), forms=(), cache=Cache())
    spectrum = analysis.spectrum
    return (spectrum.exact_eigenvalues, len(spectrum.zero_rows) + spectrum.shift_directions,
            bound_inputs(ckpt, rho=None, tau=0.05, sigma_floor=1e-6))


def split_null(eigenvalues: np.ndarray, null: int) -> np.ndarray:
    """The eigenvalues without the ``null`` smallest in magnitude: the exact null directions the tool deflates
    (on the zoo they are exactly the eigenvalues below 1e-12 · λmax)."""
    order = np.argsort(np.abs(eigenvalues), kind="stable")
    return np.sort(eigenvalues[order[null:]])


@dataclass(frozen=True)
class KnownSpectra:
    """The benchmark's operators: the zoo checkpoint's spectrum without its exact null directions (tiled by
    :meth:`make`), how many of those it has, and each Table I cell's bound inputs (``forms``)."""

    zoo_bulk: np.ndarray
    zoo_null: int
    zoo_dim: int
    forms: dict[str, BoundInputs]

    @classmethod
    def load(cls, checkpoint: Path, l2_checkpoint: Path, deflate: bool = True) -> "KnownSpectra":
        """From the AdamW checkpoint (its exact spectrum and AdamW inputs) and the l2-Adam one (its inputs).
        ``deflate`` False rotates the zoo's null directions into the bulk."""
        eigenvalues, null, adamw_inputs = zoo_inputs(checkpoint)
        null = null if deflate else 0
        l2_inputs = bound_inputs(load_checkpoint(l2_checkpoint, dtype=torch.float64), rho=None, tau=0.05,
                                 sigma_floor=1e-6)
        return cls(split_null(eigenvalues, null), null, len(eigenvalues), {"adamw": adamw_inputs, "l2-adam": l2_inputs})

    def make(self, kind: str, dim: int) -> tuple[np.ndarray, int]:
        """The eigenvalues of spectrum ``kind`` (zoo, zoo-grown, resnet, vit) at dimension ``dim``, and how many more
        dimensions are exact null directions deflated as the tool deflates them."""
        if kind not in ("zoo", "zoo-grown"):
            return published_spectrum(kind, dim), 0
        null = round(dim * self.zoo_null / self.zoo_dim)
        if kind == "zoo-grown":  # the bulk tiled, one outlier per class (the digits have 10) kept once
            return grown_spectrum(self.zoo_bulk, dim - null, outliers=ZOO_CLASSES), null
        return repeated_spectrum(self.zoo_bulk, dim - null), null


@dataclass(frozen=True)
class DensityRun:
    """One density run on a known spectrum, as ``wdbound err`` makes it: the SLQ, the spectrum's ends, the HVPs
    it spent (the top-k run's included), its seconds, whether it used the three-term recurrence, and how many
    top Ritz vectors it had projected off."""

    slq: SLQ
    support: tuple[float, float]
    dim: int
    hvps: int
    seconds: float
    low_memory: bool
    ritz_deflated: int


def density_run(eigenvalues: np.ndarray, probes: int, steps: int, seed: int, full_operator: bool,
                full_basis: float, null: int = 0, top_k: int = 0) -> DensityRun:
    """One SLQ run on ``Qᵀ diag(eigenvalues) Q`` with ``null`` more dimensions deflated as exact zeros (the
    probes projected off them, as the tool does with zero rows and the logit shift).

    ``top_k`` > 0: first the tool's top-eigenvalue run (thick restart, as the low-memory plan runs it), which
    also gives the support's top end; a three-term density run then has its converged Ritz vectors projected off
    (``RitzDeflation``, as ``wdbound`` does). Its HVPs are counted."""
    operator = KnownSpectrumOperator(eigenvalues, seed=seed)
    dim = len(eigenvalues) + null
    target = operator if full_operator else RotatedStarts(operator)
    generator = torch.Generator().manual_seed(1000 + seed)
    memory = LanczosMemory(full_basis_bytes=full_basis)
    low_memory = not memory.full(probes, steps, dim)
    start = time.perf_counter()
    top = (top_eigenvalues(target, top_k, torch.Generator().manual_seed(seed), restart=max(RESTART_TOP, top_k + 10))
           if top_k else None)
    ritz = (RitzDeflation.from_top(top, precision=hvp_precision(operator)) if top is not None and low_memory
            else None)
    density_operator = ProjectedOperator(target, ritz.project) if ritz is not None else target

    def draw(count: int) -> torch.Tensor:
        z = rademacher(count, operator.dim, generator, torch.float64)
        z = z if full_operator else target.start(z)
        return ritz.project(z) if ritz is not None else z

    slq = slq_from_run(run_lanczos(density_operator, draw, probes, min(steps, operator.dim), memory), dim,
                       null_weight=null, space_dim=operator.dim, precision=hvp_precision(operator), ritz=ritz)
    # The support as the tool finds it: the top from the top-k run (or a top-1 run), the bottom from the density
    # run itself when it has converged there, else a run on -H.
    top = top if top is not None else top_eigenvalues(target, 1, torch.Generator().manual_seed(seed), tol=1e-4,
                                                      max_steps=150, refined=False)
    support = spectrum_ends(target, slq, top, seed)
    return DensityRun(slq, support.bounds(), dim, target.matvecs, time.perf_counter() - start, low_memory,
                      ritz.count if ritz is not None else 0)


def run_budget(eigenvalues: np.ndarray, forms: dict[str, BoundInputs], probes: int, steps: int, seed: int,
               full_operator: bool, full_basis: float, null: int = 0, top_k: int = 0,
               radau: tuple[int, ...] = (RADAU_POINTS,)) -> list[dict]:
    """The rows of one :func:`density_run`: each form's err/d interval against its exact value, once for each
    of ``radau`` (Radau points per probe refining the bracket; 0: the Gauss nodes only)."""
    run = density_run(eigenvalues, probes, steps, seed, full_operator, full_basis, null, top_k)
    rows = []
    for form, inputs in forms.items():
        p = BoundInputs(**{**inputs.to_json(), "d": run.dim})
        exact = corollary3_exact(np.concatenate([eigenvalues, np.zeros(null)]), form, p).err_mean
        for points in radau:
            begin = time.perf_counter()
            cor = corollary3_from_slq(run.slq, form, p, run.support, shift_directions=0, radau_points=points)
            interval = cor.err_mean_interval
            rows.append({"form": form, "estimate": cor.err_mean, "interval": interval.to_json(), "exact": exact,
                         "covered": interval.contains(exact),
                         "relative_half_width": interval.half_width / abs(exact),
                         "estimate_error": (cor.err_mean - exact) / exact, "hvps": run.hvps,
                         "lanczos": "low-memory" if run.low_memory else "full", "top_k": top_k,
                         "ritz_deflated": run.ritz_deflated, "radau_points": points,
                         "seconds": run.seconds, "bracket_seconds": time.perf_counter() - begin})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="10000,100000,1000000")
    parser.add_argument("--spectra", default="zoo,zoo-grown,resnet,vit")
    parser.add_argument("--budgets", default=",".join(BUDGETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/digits-cnn-adamw-e40.pt"))
    parser.add_argument("--l2-checkpoint", type=Path, default=Path("checkpoints/digits-cnn-l2-adam-e40.pt"))
    parser.add_argument("--full-operator", action="store_true", help="apply Q and Qᵀ in every HVP")
    parser.add_argument("--full-basis", type=float, default=2e9, help="bytes of a whole Lanczos basis")
    parser.add_argument("--top-k", default="0", help="comma list: top-eigenvalue runs of this k before each density "
                        "run (0: none, the ends' own runs); a three-term run deflates their converged Ritz vectors")
    parser.add_argument("--no-deflate", action="store_true",
                        help="rotate the zoo's exact null directions into the bulk instead of deflating them as "
                             "the tool does on a real model (the setting of the first measurements: harder than "
                             "what the tool faces)")
    parser.add_argument("--radau", default=str(RADAU_POINTS),
                        help="comma list: Radau points per probe refining each bracket (0: the Gauss nodes only)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_synthetic.json"))
    args = parser.parse_args()
    spectra = KnownSpectra.load(args.checkpoint, args.l2_checkpoint, deflate=not args.no_deflate)
    forms = spectra.forms
    budgets = [name for name in BUDGETS if name in args.budgets.split(",")]
    radau = tuple(int(x) for x in args.radau.split(","))
    results = []
    print("| spectrum | d | budget | seed | form | HVPs | estimate [interval] | exact | covered | half-width |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.spectra.split(","):
        for dim in (int(x) for x in args.dims.split(",")):
            eigenvalues, null = spectra.make(kind, dim)
            for name, top_k in ((b, int(k)) for b in budgets for k in args.top_k.split(",")):
                probes, steps = BUDGETS[name]
                group = []
                for seed in range(args.seeds):
                    for row in run_budget(eigenvalues, forms, probes, steps, seed, args.full_operator,
                                          args.full_basis, null, top_k, radau):
                        row.update(spectrum=kind, d=dim, budget=name, seed=seed)
                        group.append(row)
                        lo, hi = row["interval"]
                        print(f"| {kind} | {dim} | {name} top-k {top_k} ({row['ritz_deflated']} deflated) "
                              f"radau {row['radau_points']} | {seed} | "
                              f"{row['form']} | {row['hvps']} | "
                              f"{row['estimate']:.4f} [{lo:.4f}, {hi:.4f}] | {row['exact']:.4f} | "
                              f"{'yes' if row['covered'] else 'NO'} | {100 * row['relative_half_width']:.2f}% |",
                              flush=True)
                for form, points in ((form, points) for form in forms for points in radau):
                    rows = [r for r in group if r["form"] == form and r["radau_points"] == points]
                    print(f"summary {kind} d={dim} {name} top-k {top_k} radau {points} {rows[0]['lanczos']} {form}: "
                          f"bracket {statistics.median(r['bracket_seconds'] for r in rows):.1f} s, HVPs "
                          f"{rows[0]['hvps']}, coverage "
                          f"{sum(r['covered'] for r in rows)}/{len(rows)}, median half-width "
                          f"{100 * statistics.median(r['relative_half_width'] for r in rows):.2f}%, median |estimate "
                          f"error| {100 * statistics.median(abs(r['estimate_error']) for r in rows):.2f}%", flush=True)
                results.extend(group)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"rows": results}, indent=1))


if __name__ == "__main__":
    main()
