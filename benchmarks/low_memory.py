"""Accuracy of the low-memory Lanczos paths against full re-orthogonalisation and the exact spectrum.

For each checkpoint (default: one MLP, the depth-8 MLP, the CNN and the ViT of the zoo, AdamW at 40 epochs),
the same spectrum settings (16 probes x 80 steps, top-5, seed 0: the ``wdbound spectrum`` defaults) are run
twice through the real pipeline, ``--lanczos full`` and ``--lanczos low-memory`` (three-term recurrence in
probe blocks, thick-restart top-k with 20 vectors), and compared with the dense Hessian:

- top-5: largest relative error against the exact eigenvalues, and the HVPs spent;
- trace: Hutchinson from the same probes (identical by construction: both paths fold the same z ⊙ Hz);
- density: W1 distance to the exact spectral measure, over lambda_max;
- err/d of both bound forms (Corollary 3, the checkpoint's own eta, lambda, b, n): estimate, its interval,
  whether the exact value is covered, and |low-memory - full| / full.

Prints a markdown table (the one in docs/low-memory.md) and writes benchmarks/results/low_memory.json.

    .venv/bin/python benchmarks/low_memory.py [CKPT ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wdbound import load_checkpoint
from wdbound.analysis import bound_inputs
from wdbound.bounds import FORMS, corollary3_exact, corollary3_from_slq
from wdbound.spectrum import SpectrumSettings, compute_spectrum
from wdbound.stats import wasserstein1

DEFAULT = ["digits-mlp-adamw-e40", "digits-mlp-depth8-adamw-e40", "digits-cnn-adamw-e40", "digits-vit-adamw-e40"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/low_memory.json"))
    args = parser.parse_args()
    paths = args.checkpoints or [Path("checkpoints") / f"{name}.pt" for name in DEFAULT]
    base = SpectrumSettings(probes=args.probes, steps=args.steps, top_k=5, diagonal="hutchinson",
                            hvp="double-backward")
    rows = []
    print("| checkpoint | path | top-5 max rel. err | top-k HVPs | W1/lambda_max | err/d AdamW [interval] | "
          "err/d l2-Adam [interval] | exact AdamW / l2-Adam | vs full |")
    print("|---|---|---:|---:|---:|---|---|---|---:|")
    for path in paths:
        ckpt = load_checkpoint(path, dtype=torch.float64)
        inputs = bound_inputs(ckpt, rho=None, tau=0.05, sigma_floor=1e-6)
        exact = compute_spectrum(ckpt, replace(base, probes=2, steps=2, exact=True))
        ev = exact.exact_eigenvalues
        truth = {form: corollary3_exact(ev, form, inputs).err_mean for form in FORMS}
        results = {}
        for mode in ("full", "low-memory"):
            start = time.perf_counter()
            spectrum = compute_spectrum(ckpt, replace(base, lanczos=mode))
            seconds = time.perf_counter() - start
            nodes, weights = spectrum.slq.measure()
            err = {form: corollary3_from_slq(spectrum.slq, form, inputs, spectrum.support.bounds()) for form in FORMS}
            results[mode] = {
                "seconds": seconds, "hvps": spectrum.hvps, "top_steps": spectrum.top.steps,
                "top_rel_error": float(np.max(np.abs(spectrum.top.values - ev[::-1][:5]) / abs(ev[::-1][:5]))),
                "trace": spectrum.trace.estimate, "trace_exact": float(ev.sum()),
                "w1": wasserstein1(nodes, weights, ev, np.ones_like(ev)) / float(abs(ev).max()),
                "err": {form: {"estimate": c.err_mean, "low": c.err_mean_interval.low,
                               "high": c.err_mean_interval.high, "exact": truth[form],
                               "covered": c.err_mean_interval.low <= truth[form] <= c.err_mean_interval.high}
                        for form, c in err.items()},
                "peak_memory_bytes": spectrum.provenance["peak_memory_bytes"],
                "lanczos": spectrum.provenance["lanczos"],
            }
        full = results["full"]
        for mode, r in results.items():
            change = max(abs(r["err"][f]["estimate"] - full["err"][f]["estimate"]) / abs(full["err"][f]["estimate"])
                         for f in FORMS)
            cells = [f"{r['err'][f]['estimate']:.4g} [{r['err'][f]['low']:.4g}, {r['err'][f]['high']:.4g}]"
                     + ("" if r["err"][f]["covered"] else " NOT covered") for f in FORMS]
            print(f"| {path.stem} | {mode} | {r['top_rel_error']:.1e} | {r['top_steps']} | {r['w1']:.2e} | "
                  f"{cells[0]} | {cells[1]} | {truth['adamw']:.4g} / {truth['l2-adam']:.4g} | {change:.1e} |",
                  flush=True)
        rows.append({"checkpoint": str(path), "d": exact.d, "results": results})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {"probes": args.probes, "steps": args.steps, "top_k": 5,
                                                 "seed": 0}, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
