"""Coverage of the SLQ err/d (and Theorem-term) intervals against exact values, on checkpoints (the zoo by default).

For every checkpoint and both bound forms: the SLQ estimate and interval at the ``wdbound err`` defaults
without adaptation (16 probes x 80 Lanczos steps, ``--exact off --rtol 0``), the exact value from the
dense Hessian, whether it is covered, and the interval's relative half-width. With ``--theorem`` also the
Theorem 6/7 terms (Q from the exact diagonal on both sides; one more dense pass). Prints a markdown table
and writes a JSON file.

The exact eigenvalues are read from the spectrum cache when ``wdbound table`` (``make demo``) has computed
them with its default settings, so a coverage run after the demo costs only the SLQ part.

    .venv/bin/python benchmarks/coverage.py [CKPT ...] [--theorem] [--hvp double-backward]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from wdbound import load_checkpoint
from wdbound.analysis import analyse, bound_figures, bound_inputs
from wdbound.bounds import FORMS
from wdbound.cache import Cache, NoCache
from wdbound.spectrum import SpectrumSettings

# `wdbound table`'s defaults, so the dense spectrum it cached is found again.
TABLE_SETTINGS = SpectrumSettings(probes=6, steps=60, top_k=1, diagonal="hutchinson", rtol=0.01, exact=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--theorem", action="store_true", help="also the Theorem terms (exact diagonal for Q)")
    parser.add_argument("--hvp", default="forward-over-reverse")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.json"))
    args = parser.parse_args()
    paths = args.checkpoints or sorted(Path("checkpoints").glob("*.pt"))
    slq_settings = SpectrumSettings(probes=args.probes, steps=args.steps, top_k=1, hvp=args.hvp,
                                    diagonal="exact" if args.theorem else "hutchinson")
    forms = FORMS if args.theorem else ()
    rows = []
    print("| checkpoint | form | SLQ err/d [interval] | exact | covered | rel. half-width | Theorem SLQ [interval] "
          "| exact | covered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        ckpt = load_checkpoint(path, dtype=torch.float64)
        inputs = bound_inputs(ckpt, rho=None, tau=0.05, sigma_floor=1e-6)
        start = time.perf_counter()
        exact = analyse(ckpt, TABLE_SETTINGS, forms=forms, cache=Cache())
        exact_seconds = time.perf_counter() - start
        start = time.perf_counter()
        slq = analyse(ckpt, slq_settings, forms=forms, cache=NoCache())
        slq_seconds = time.perf_counter() - start
        for form in FORMS:
            s, x = bound_figures(slq, form, inputs), bound_figures(exact, form, inputs)
            lo, hi = s["err_mean_interval"]
            row = {"checkpoint": path.name, "form": form, "d": inputs.d, "err_mean": s["err_mean"],
                   "interval": [lo, hi], "exact": x["err_mean"], "covered": bool(lo <= x["err_mean"] <= hi),
                   "relative_half_width": (hi - lo) / 2 / abs(s["err_mean"]), "slq_seconds": slq_seconds,
                   "slq_hvps": slq.hvps, "exact_seconds": exact_seconds, "near_zero": x["near_zero"]}
            theorem = "| — | — | — |"
            if args.theorem:
                tlo, thi = s["theorem_term_interval"]
                row.update(theorem_term=s["theorem_term"], theorem_interval=[tlo, thi],
                           theorem_exact=x["theorem_term"], theorem_covered=bool(tlo <= x["theorem_term"] <= thi))
                theorem = (f"| {s['theorem_term']:.0f} [{tlo:.0f}, {thi:.0f}] | {x['theorem_term']:.0f} | "
                           f"{'yes' if row['theorem_covered'] else 'NO'} |")
            rows.append(row)
            print(f"| {path.stem} | {form} | {s['err_mean']:.3f} [{lo:.3f}, {hi:.3f}] | {x['err_mean']:.3f} | "
                  f"{'yes' if row['covered'] else 'NO'} | {100 * row['relative_half_width']:.1f}% " + theorem,
                  flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": slq_settings.__dict__, "rows": rows}, indent=1))
    covered = sum(r["covered"] for r in rows)
    line = (f"\nerr/d covered {covered}/{len(rows)}, median relative half-width "
            f"{100 * statistics.median(r['relative_half_width'] for r in rows):.1f}%")
    if args.theorem:
        line += f"; Theorem term covered {sum(r['theorem_covered'] for r in rows)}/{len(rows)}"
    print(line)


if __name__ == "__main__":
    main()
