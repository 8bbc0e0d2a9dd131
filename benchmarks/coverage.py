"""Coverage of the SLQ err/d and Theorem-term intervals against exact values, on checkpoints (the zoo by default).

For every checkpoint and both bound forms: the SLQ estimate and interval at the ``wdbound err`` defaults
without adaptation (16 probes x 80 Lanczos steps, exact diagonal for Q, --exact off), the exact value
from the dense Hessian, whether it is covered, and the interval's relative half-width. Prints a markdown
table and writes ``benchmarks/results/coverage.json``. Slow: one dense Hessian (d HVPs) per checkpoint.

    .venv/bin/python benchmarks/coverage.py [CKPT ...] [--probes 16] [--steps 80]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wdbound import load_checkpoint
from wdbound.analysis import Analysis, _derived_seed, analyse, bound_figures, bound_inputs
from wdbound.bounds import FORMS, theorem_runs
from wdbound.cache import NoCache
from wdbound.spectrum import SpectrumSettings


def slq_analysis(exact: Analysis, settings: SpectrumSettings) -> Analysis:
    """The SLQ analysis ``wdbound err --exact off --diagonal exact`` would make, from the same run's spectrum
    (its SLQ probes, support and exact diagonal), without a second dense pass."""
    spectrum = exact.spectrum
    operator = spectrum.extra["operator"]
    before = operator.matvecs
    analysis = Analysis(replace(spectrum, exact_eigenvalues=None))
    for form in FORMS:
        generator = torch.Generator().manual_seed(_derived_seed(settings.seed, form, 1e-6))
        analysis.runs[(form, 1e-6)] = theorem_runs(operator, spectrum.exact_diagonal, form, 1e-6,
                                                   probes=settings.probes, steps=settings.steps, generator=generator,
                                                   zero_mask=spectrum.extra["zero_mask"], density=spectrum.slq,
                                                   support=spectrum.support.bounds())
    analysis.hvps = spectrum.hvps - operator.dim + (operator.matvecs - before)
    return analysis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.json"))
    args = parser.parse_args()
    paths = args.checkpoints or sorted(Path("checkpoints").glob("*.pt"))
    settings = SpectrumSettings(probes=args.probes, steps=args.steps, top_k=1, diagonal="exact")
    rows = []
    print("| checkpoint | form | SLQ err/d [interval] | exact | covered | rel. half-width | Theorem SLQ [interval] | exact | covered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        ckpt = load_checkpoint(path, dtype=torch.float64)
        inputs = bound_inputs(ckpt, rho=None, tau=0.05, sigma_floor=1e-6)
        start = time.perf_counter()
        exact = analyse(ckpt, replace(settings, exact=True), cache=NoCache())
        slq = slq_analysis(exact, settings)
        seconds = time.perf_counter() - start
        for form in ("adamw", "l2-adam"):
            s, x = bound_figures(slq, form, inputs), bound_figures(exact, form, inputs)
            lo, hi = s["err_mean_interval"]
            tlo, thi = s["theorem_term_interval"]
            row = {"checkpoint": path.name, "form": form, "d": inputs.d, "err_mean": s["err_mean"],
                   "interval": [lo, hi], "exact": x["err_mean"], "covered": bool(lo <= x["err_mean"] <= hi),
                   "relative_half_width": (hi - lo) / 2 / abs(s["err_mean"]),
                   "theorem_term": s["theorem_term"], "theorem_interval": [tlo, thi],
                   "theorem_exact": x["theorem_term"], "theorem_covered": bool(tlo <= x["theorem_term"] <= thi),
                   "slq_seconds": seconds, "slq_hvps": slq.hvps}
            rows.append(row)
            print(f"| {path.stem} | {form} | {s['err_mean']:.3f} [{lo:.3f}, {hi:.3f}] | {x['err_mean']:.3f} | "
                  f"{'yes' if row['covered'] else 'NO'} | {100 * row['relative_half_width']:.1f}% | "
                  f"{s['theorem_term']:.0f} [{tlo:.0f}, {thi:.0f}] | {x['theorem_term']:.0f} | "
                  f"{'yes' if row['theorem_covered'] else 'NO'} |", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": settings.__dict__, "rows": rows}, indent=1))
    covered = sum(r["covered"] for r in rows)
    t_covered = sum(r["theorem_covered"] for r in rows)
    print(f"\nerr/d covered {covered}/{len(rows)}, median relative half-width "
          f"{100 * statistics.median(r['relative_half_width'] for r in rows):.1f}%; "
          f"Theorem term covered {t_covered}/{len(rows)}")


if __name__ == "__main__":
    main()
