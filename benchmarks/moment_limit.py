"""How narrow can an err/d interval from one Lanczos run be? A lower bound on what its moments allow.

A probe's m Lanczos steps fix the first 2m moments of its spectral measure μ_z (degrees 0 … 2m−1) and nothing
else. Any bracket built from them, ours or another, must contain ∫ f dν for every measure ν on the spectrum's
support [L, R] with those moments. This script builds many such ν and reports their spread: a lower bound on
the width of any interval from the same run, to set beside the bracket wdbound reports.

The measures: for any β > 0 and any t, the Gauss rule of the (m+1)×(m+1) Jacobi matrix

    [[T_m, β e_m], [β e_mᵀ, α̃]],   α̃ = t + β² [(T_m − tI)⁻¹]_mm,

has a node at t and the same moments as μ_z up to degree 2m−1 (those depend on T_m alone; β is the free
recurrence coefficient of degree 2m, α̃ puts a node at t). Rules with a node outside [L, R] are dropped. t runs
over the gaps the widest bracket cells cover (where the moments leave the mass unplaced), β over multiples of
the last off-diagonal. ``spread`` = max − min of ∫ f dν over them and the Gauss rule itself.

For each (spectrum, d, seed, form) it prints the reported interval's relative half-width (the bracket plus
the probe part), the per-probe bracket's share of it, and the moments' lower bound (spread / 2, relative to
the exact err/d): the bracket can be narrowed at most to that, by any rule from these 2m moments.

    .venv/bin/python benchmarks/moment_limit.py [--dims 100000,1000000] [--spectra zoo,resnet,vit] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy.linalg import eigh_tridiagonal

from scale_synthetic import BUDGETS, KnownSpectra, density_run
from wdbound.bounds import BoundInputs, corollary3_exact, corollary3_from_slq, corollary3_integrand
from wdbound.estimators.quadrature_interval import PiecewiseMonotone, last_pivot, probe_bracket, radau_points

BETA_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def moment_family_values(alphas: np.ndarray, betas: np.ndarray, n: int, f: PiecewiseMonotone,
                         support: tuple[float, float], ts: np.ndarray,
                         factors: tuple[float, ...] = BETA_FACTORS) -> np.ndarray:
    """∫ f dν (unit mass) for the Gauss rule of ``T_n`` and for each (m+1)-point rule with a node at one of
    ``ts`` and last off-diagonal β = factor × β_{n−2}, all with the moments of ``T_n`` up to degree 2n−1;
    rules with a node outside ``support`` are left out.

    >>> a, b = np.zeros(3), np.ones(2)   # the measure of diag(-√2, 0, √2) from e_1: 1/4, 1/2, 1/4
    >>> f = PiecewiseMonotone(lambda x: x ** 4, breakpoints=(0.0,))
    >>> values = moment_family_values(a, b, 3, f, (-2.0, 2.0), np.array([-1.0, 0.5, 1.5]))
    >>> bool(np.allclose(values, 2.0))  # degree 4 <= 2·3 − 1: every rule of the family has μ's ∫ x⁴ = 2
    True
    >>> g = PiecewiseMonotone(lambda x: x ** 6, breakpoints=(0.0,))  # degree 6: the family spreads around 4
    >>> values = moment_family_values(a, b, 3, g, (-2.0, 2.0), np.array([-1.0, 0.5, 1.5]))
    >>> bool(np.isclose(values[0], 4.0) and values.max() > 4.0 + 1e-9)
    True
    """
    a, b = np.asarray(alphas[:n], dtype=np.float64), np.asarray(betas[:n - 1], dtype=np.float64)
    nodes, vectors = eigh_tridiagonal(a, b, lapack_driver="stevd")
    values = [float(np.sum(vectors[0] ** 2 * f(nodes)))]
    last = float(b[-1]) if n > 1 else 1.0
    low, high = support
    tol = 1e-12 * max(abs(low), abs(high))
    for t in ts:
        pivot = last_pivot(a, b, n, t)  # 1 / [(T_n − tI)⁻¹]_nn
        if pivot is None:
            continue
        for factor in factors:
            beta = factor * last
            extended_a = np.append(a, t + beta ** 2 / pivot)
            extended_b = np.append(b, beta)
            x, v = eigh_tridiagonal(extended_a, extended_b, lapack_driver="stevd")
            if x[0] < low - tol or x[-1] > high + tol:
                continue
            values.append(float(np.sum(v[0] ** 2 * f(x))))
    return np.array(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="100000,1000000")
    parser.add_argument("--spectra", default="zoo,resnet,vit")
    parser.add_argument("--budget", default="1x1280 (default)", choices=list(BUDGETS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=5, help="the top-k run before a three-term density run")
    parser.add_argument("--points", type=int, default=256, help="free-node positions per probe and form")
    parser.add_argument("--full-basis", type=float, default=2e9, help="bytes of a whole Lanczos basis")
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/digits-cnn-adamw-e40.pt"))
    parser.add_argument("--l2-checkpoint", type=Path, default=Path("checkpoints/digits-cnn-l2-adam-e40.pt"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/moment_limit.json"))
    args = parser.parse_args()
    spectra = KnownSpectra.load(args.checkpoint, args.l2_checkpoint)
    probes, steps = BUDGETS[args.budget]
    rows = []
    print("| spectrum | d | seed | form | HVPs | reported half-width | bracket half-width | moments allow at least "
          "| share of the bracket |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for kind in args.spectra.split(","):
        for dim in (int(x) for x in args.dims.split(",")):
            eigenvalues, null = spectra.make(kind, dim)
            for seed in range(args.seeds):
                run = density_run(eigenvalues, probes, steps, seed, False, args.full_basis, null, args.top_k)
                slq = run.slq
                for form, inputs in spectra.forms.items():
                    p = BoundInputs(**{**inputs.to_json(), "d": run.dim})
                    f = corollary3_integrand(form, p)
                    exact = corollary3_exact(np.concatenate([eigenvalues, np.zeros(null)]), form, p).err_mean
                    reported = corollary3_from_slq(slq, form, p, run.support, shift_directions=0)
                    begin = time.perf_counter()
                    bracket, spread = [], []
                    for probe in range(len(slq.nodes)):
                        if slq.exact_probe(probe):  # an invariant Krylov space: its Gauss rule is the measure
                            bracket.append(0.0)
                            spread.append(0.0)
                            continue
                        n = int(slq.lengths[probe])
                        low, high = probe_bracket(slq, probe, f, run.support)
                        # the free node goes where the bracket's widest cells leave the mass unplaced
                        values = moment_family_values(slq.alphas[probe], slq.betas[probe], n, f, run.support,
                                                      radau_points(slq, probe, f, run.support, args.points))
                        scale = float(slq.norms_sq[probe]) / run.dim  # unit mass → err/d
                        bracket.append(scale * (high - low) / 2)
                        spread.append(scale * (float(values.max()) - float(values.min())) / 2)
                    row = {"spectrum": kind, "d": dim, "seed": seed, "form": form, "hvps": run.hvps,
                           "exact": exact, "estimate": reported.err_mean,
                           "interval": reported.err_mean_interval.to_json(),
                           "relative_half_width": reported.err_mean_interval.half_width / abs(exact),
                           "bracket_relative_half_width": float(np.mean(bracket)) / abs(exact),
                           "moment_bound_relative_half_width": float(np.mean(spread)) / abs(exact),
                           "lanczos": "low-memory" if run.low_memory else "full",
                           "ritz_deflated": run.ritz_deflated, "seconds": time.perf_counter() - begin}
                    rows.append(row)
                    share = (row["moment_bound_relative_half_width"] / row["bracket_relative_half_width"]
                             if row["bracket_relative_half_width"] > 0 else math.nan)
                    print(f"| {kind} | {dim} | {seed} | {form} | {run.hvps} | "
                          f"{100 * row['relative_half_width']:.2f}% | "
                          f"{100 * row['bracket_relative_half_width']:.2f}% | "
                          f"{100 * row['moment_bound_relative_half_width']:.2f}% | "
                          f"{100 * share:.0f}% |", flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"budget": args.budget, "top_k": args.top_k,
                                                    "points": args.points, "beta_factors": BETA_FACTORS,
                                                    "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
