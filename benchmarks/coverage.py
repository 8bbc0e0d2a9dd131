"""Coverage of the SLQ err/d (and Theorem-term) intervals against exact values, on checkpoints (the zoo by default).

For every checkpoint and both bound forms: the SLQ estimate and interval at the ``wdbound err`` defaults
(``--exact off``: 1 probe x 1,280 Lanczos steps, top-1, no refinement), the exact value from the dense
Hessian, whether it is covered, the interval's relative half-width and the HVPs spent (density run and the
spectrum's ends). With ``--theorem`` also the Theorem 6/7 terms (Q from the exact diagonal on both sides; one
more dense pass). Prints a markdown table and writes a JSON file; the summary gives coverage and the median
half-width per form.

The exact eigenvalues are read from the spectrum cache when ``wdbound table`` (``make demo``) has computed
them with its default settings, so a coverage run after the demo costs only the SLQ part.

The summary also reads Table I's findings off the rows: per (model, epochs, schedule), the AdamW-trained
checkpoint in the AdamW form against the l2-Adam-trained one in the l2-Adam form, as ``wdbound table --exact
off`` pairs them (its cells are these SLQ runs, bit for bit: same settings, same seed). A finding is resolved
when the two intervals are disjoint; it is resolved wrongly when the order they show is not the exact one.
``--summarise FILE`` prints that summary for a saved JSON without running anything.

    .venv/bin/python benchmarks/coverage.py [CKPT ...] [--theorem] [--hvp double-backward]
    .venv/bin/python benchmarks/coverage.py --summarise benchmarks/results/coverage-zoo-radau-20261203.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from wdbound import defaults, load_checkpoint
from wdbound.analysis import analyse, bound_figures, bound_inputs
from wdbound.bounds import FORMS, corollary3_exact
from wdbound.cache import Cache, NoCache
from wdbound.spectrum import SpectrumSettings
from wdbound.tables import family_variant, model_label

FINDING_GAP = 0.04  # findings whose exact values differ by more than this must be resolved

# `wdbound table`'s defaults, so the dense spectrum it cached is found again.
TABLE_SETTINGS = SpectrumSettings(probes=defaults.TABLE_PROBES, steps=defaults.TABLE_STEPS, top_k=1,
                                  diagonal="hutchinson", rtol=defaults.RTOL, exact=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--probes", type=int, default=defaults.PROBES)
    parser.add_argument("--steps", type=int, default=None, help="Lanczos steps (default: err's, 1,280 capped at d)")
    parser.add_argument("--theorem", action="store_true", help="also the Theorem terms (exact diagonal for Q)")
    parser.add_argument("--hvp", default="forward-over-reverse")
    parser.add_argument("--exact-dir", type=Path, default=None,
                        help="folder of <checkpoint>.npz files holding exact eigenvalues (array 'ev'), instead of "
                             "the dense Hessian")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.json"))
    parser.add_argument("--summarise", type=Path, default=None, help="print the summary of a saved JSON and stop")
    args = parser.parse_args()
    if args.summarise is not None:
        print(summary(json.loads(args.summarise.read_text())["rows"]))
        return
    paths = args.checkpoints or sorted(Path("checkpoints").glob("*.pt"))
    slq_settings = SpectrumSettings(probes=args.probes, steps=args.steps, top_k=1, hvp=args.hvp,
                                    diagonal="exact" if args.theorem else "hutchinson")
    forms = FORMS if args.theorem else ()
    rows = []
    print("| checkpoint | form | SLQ err/d [interval] | exact | covered | rel. half-width | HVPs "
          "| Theorem SLQ [interval] | exact | covered |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        ckpt = load_checkpoint(path, dtype=torch.float64)
        inputs = bound_inputs(ckpt, rho=None, tau=0.05, sigma_floor=1e-6)
        start = time.perf_counter()
        stored = args.exact_dir / f"{path.stem}.npz" if args.exact_dir else None
        if stored is not None and stored.exists() and not args.theorem:
            eigenvalues, exact = np.load(stored)["ev"], None
        else:
            exact = analyse(ckpt, TABLE_SETTINGS, forms=forms, cache=Cache())
            eigenvalues = exact.spectrum.exact_eigenvalues
        exact_seconds = time.perf_counter() - start
        start = time.perf_counter()
        slq = analyse(ckpt, slq_settings, forms=forms, cache=NoCache())
        slq_seconds = time.perf_counter() - start
        for form in FORMS:
            s = bound_figures(slq, form, inputs)
            exact_value = corollary3_exact(eigenvalues, form, inputs).err_mean
            lo, hi = s.interval
            row = {"checkpoint": path.name, "form": form, "d": inputs.d, "err_mean": s.err_mean,
                   "interval": [lo, hi], "exact": exact_value, "covered": bool(lo <= exact_value <= hi),
                   "relative_half_width": (hi - lo) / 2 / abs(exact_value), "slq_seconds": slq_seconds,
                   "slq_hvps": slq.hvps, "exact_seconds": exact_seconds}
            theorem = "| — | — | — |"
            if args.theorem:
                x, t = bound_figures(exact, form, inputs).theorem, s.theorem
                row.update(theorem_term=t.term, theorem_interval=t.interval.to_json(), theorem_exact=x.term,
                           theorem_covered=t.interval.contains(x.term))
                theorem = (f"| {t.term:.0f} [{t.interval.low:.0f}, {t.interval.high:.0f}] | "
                           f"{x.term:.0f} | {'yes' if row['theorem_covered'] else 'NO'} |")
            rows.append(row)
            print(f"| {path.stem} | {form} | {s.err_mean:.3f} [{lo:.3f}, {hi:.3f}] | {exact_value:.3f} | "
                  f"{'yes' if row['covered'] else 'NO'} | {100 * row['relative_half_width']:.2f}% | {slq.hvps} "
                  + theorem, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": slq_settings.__dict__, "rows": rows}, indent=1))
    print(summary(rows))


def summary(rows: list[dict]) -> str:
    """Coverage and median half-width per form (and of the Theorem term, when the rows have it), then Table I's
    findings (:func:`findings`)."""
    covered = sum(r["covered"] for r in rows)
    line = (f"\nerr/d covered {covered}/{len(rows)}, median relative half-width "
            f"{100 * statistics.median(r['relative_half_width'] for r in rows):.2f}%, HVPs per checkpoint at most "
            f"{max(r['slq_hvps'] for r in rows)}")
    for form in FORMS:
        mine = [r for r in rows if r["form"] == form]
        line += (f"\n  {form}: covered {sum(r['covered'] for r in mine)}/{len(mine)}, median half-width "
                 f"{100 * statistics.median(r['relative_half_width'] for r in mine):.2f}%")
    if any("theorem_covered" in r for r in rows):
        line += f"; Theorem term covered {sum(r['theorem_covered'] for r in rows)}/{len(rows)}"
    found = findings(rows)
    if found:
        line += "\n\n| finding | AdamW [interval] | l2-Adam [interval] | exact | exact gap | resolved | right |"
        line += "\n|---|---|---|---|---|---|---|"
        for f in found:
            line += (f"\n| {f['group']} | {f['adamw']:.3f} [{f['adamw_interval'][0]:.3f}, {f['adamw_interval'][1]:.3f}] "
                     f"| {f['l2']:.3f} [{f['l2_interval'][0]:.3f}, {f['l2_interval'][1]:.3f}] "
                     f"| {f['exact_adamw']:.3f} vs {f['exact_l2']:.3f} | {100 * f['exact_gap']:+.2f}% "
                     f"| {'yes' if f['resolved'] else 'no'} | {'—' if not f['resolved'] else 'yes' if f['right'] else 'NO'} |")
        wide = [f for f in found if abs(f["exact_gap"]) > FINDING_GAP]
        line += (f"\n\nfindings resolved {sum(f['resolved'] for f in found)}/{len(found)}, wrongly "
                 f"{sum(f['resolved'] and not f['right'] for f in found)}; of the {len(wide)} whose exact values differ "
                 f"by more than {100 * FINDING_GAP:.0f}%: {sum(f['resolved'] and f['right'] for f in wide)} resolved")
    return line


def findings(rows: list[dict]) -> list[dict]:
    """Table I's comparisons in the rows: per (model, epochs, schedule), the AdamW-trained checkpoint's AdamW-form
    row against the l2-Adam-trained one's l2-Adam-form row. Model, epochs and optimizer are read from each
    checkpoint's metadata (``checkpoints/<name>`` unless the row records a path); ``exact_gap`` is
    (exact l2 − exact AdamW) / exact AdamW."""
    groups = {}  # checkpoint path -> (group, family): each checkpoint loaded once for both of its rows
    cells = {}
    for r in rows:
        path = Path(r.get("path") or Path("checkpoints") / r["checkpoint"])
        if not path.exists():
            continue
        if path not in groups:
            ckpt = load_checkpoint(path, dtype=torch.float64)
            family, variant = family_variant(ckpt.optimizer_name or "")
            label = model_label(ckpt.meta["arch"], ckpt.meta.get("arch_kwargs"))
            groups[path] = (f"{label}, {(ckpt.meta.get('train') or {}).get('epochs', 0)} ep, {variant}", family)
        group, family = groups[path]
        if family is not None and family == r["form"]:
            cells[group, family] = r
    out = []
    for group in sorted({g for g, _ in cells}):
        a, l2 = cells.get((group, "adamw")), cells.get((group, "l2-adam"))
        if a is None or l2 is None:
            continue
        (a_lo, a_hi), (l_lo, l_hi) = a["interval"], l2["interval"]
        resolved = a_hi < l_lo or l_hi < a_lo
        out.append({"group": group, "adamw": a["err_mean"], "l2": l2["err_mean"], "adamw_interval": a["interval"],
                    "l2_interval": l2["interval"], "exact_adamw": a["exact"], "exact_l2": l2["exact"],
                    "exact_gap": (l2["exact"] - a["exact"]) / a["exact"], "resolved": resolved,
                    "right": resolved and (a_hi < l_lo) == (a["exact"] < l2["exact"])})
    return out


if __name__ == "__main__":
    main()
