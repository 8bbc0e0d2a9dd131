"""How the estimates move with ``--max-samples N`` (a seeded random subset of the evaluation split).

For one checkpoint (default digits-cnn-adamw-e40) and N in 45, 90, 180 and all 360 test images, three subset
seeds each: the exact top eigenvalue, trace and err/d of both forms (dense Hessian of the subset's mean
loss). Prints mean and spread over the seeds and the relative change against the full split; writes
benchmarks/results/subsample.json. The table is in docs/scale.md.

    .venv/bin/python benchmarks/subsample.py [CKPT] [--sizes 45,90,180]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from wdbound import load_checkpoint
from wdbound.analysis import bound_inputs
from wdbound.bounds import corollary3_exact
from wdbound.spectrum import SpectrumSettings, compute_spectrum


def figures(ckpt, inputs, n, seed) -> dict:
    spectrum = compute_spectrum(ckpt, SpectrumSettings(max_samples=n, subset_seed=seed, exact=True, probes=2, steps=2,
                                                       top_k=1, hvp="double-backward"))
    ev = spectrum.exact_eigenvalues
    return {"top": float(ev[-1]), "trace": float(ev.sum()),
            "adamw": corollary3_exact(ev, "adamw", inputs).err_mean,
            "l2-adam": corollary3_exact(ev, "l2-adam", inputs).err_mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=Path("checkpoints/digits-cnn-adamw-e40.pt"))
    parser.add_argument("--sizes", default="45,90,180")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/subsample.json"))
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint, dtype=torch.float64)
    inputs = bound_inputs(ckpt, rho=None, tau=0.05, sigma_floor=1e-6)
    full = figures(ckpt, inputs, None, 0)
    rows = {"all": [full]}
    print("| N | top-1 | trace | err/d AdamW | err/d l2-Adam |")
    print("|---:|---|---|---|---|")
    for n in [int(x) for x in args.sizes.split(",")]:
        rows[str(n)] = [figures(ckpt, inputs, n, seed) for seed in range(args.seeds)]
        cells = []
        for key in ("top", "trace", "adamw", "l2-adam"):
            values = np.array([r[key] for r in rows[str(n)]])
            cells.append(f"{values.mean():.4g} ± {values.std(ddof=1):.2g} ({100 * (values.mean() / full[key] - 1):+.1f}%)")
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)
    print(f"| 360 (all) | {full['top']:.4g} | {full['trace']:.4g} | {full['adamw']:.4g} | {full['l2-adam']:.4g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
