"""err/d intervals on architectures the zoo does not have: SLQ at the defaults against the dense Hessian.

Each model is trained here on the digits (1,437 training images, AdamW, lr 3e-3, weight decay 0.05, batch 64,
``--epochs``), then ``wdbound.err(Hessian(model, test split), exact="off")`` (1 probe x 1,280 steps, the
spectrum's ends, the interval) is compared with ``exact="on"`` (the dense Hessian's eigenvalues) for both bound
forms, through the Python API a notebook uses:

- ``bn-cnn``: two 3x3 convolutions with BatchNorm (eval mode: running statistics) and ReLU, a linear head;
- ``tanh-mlp``: two tanh hidden layers of 48;
- ``gelu-ln``: a LayerNorm (no affine) and GELU MLP.

    .venv/bin/python benchmarks/outside_zoo.py [--models bn-cnn,tanh-mlp,gelu-ln] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import wdbound

ETA, LAM, BATCH = 3e-3, 0.05, 64


def build(kind: str) -> nn.Module:
    """One of the architectures above (d = 5,826, 5,962 and 6,570)."""
    if kind == "bn-cnn":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                             nn.Linear(512, 10))
    if kind == "tanh-mlp":
        return nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 10))
    if kind == "gelu-ln":
        return nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64, elementwise_affine=False), nn.GELU(),
                             nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))
    raise ValueError(f"unknown model {kind!r}; use bn-cnn, tanh-mlp or gelu-ln")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bn-cnn,tanh-mlp,gelu-ln")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/outside_zoo.json"))
    args = parser.parse_args()
    images, labels = load_digits(return_X_y=True)
    x, y = torch.tensor(images / 16.0, dtype=torch.float32), torch.tensor(labels)
    rows = []
    print("| model | d | test acc. | form | SLQ err/d [interval] | exact | covered | half-width "
          "| seconds SLQ / exact |")
    print("|---|---:|---:|---|---|---:|---|---:|---|")
    for kind in args.models.split(","):
        torch.manual_seed(args.seed)
        order = torch.randperm(len(x))
        train, test = order[:1437], order[1437:]
        model = build(kind)
        optimizer = torch.optim.AdamW(model.parameters(), lr=ETA, weight_decay=LAM)
        for _ in range(args.epochs):
            model.train()
            for batch in torch.split(train[torch.randperm(len(train))], BATCH):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
        hessian = wdbound.Hessian(model, (x[test], y[test]))
        timings, results = {}, {}
        for mode in ("off", "on"):
            start = time.perf_counter()
            results[mode] = wdbound.err(hessian, eta=ETA, lam=LAM, b=BATCH, n=len(train), exact=mode)
            timings[mode] = time.perf_counter() - start
        for form, slq in results["off"].items():
            exact, interval = results["on"][form].err_mean, slq.err_mean_interval
            row = {"model": kind, "d": hessian.dim, "test_acc": accuracy, "form": form, "err_mean": slq.err_mean,
                   "interval": interval.to_json(), "exact": exact, "covered": interval.contains(exact),
                   "relative_half_width": interval.half_width / abs(exact), "seconds_slq": timings["off"],
                   "seconds_exact": timings["on"], "seed": args.seed, "epochs": args.epochs}
            rows.append(row)
            print(f"| {kind} | {hessian.dim:,} | {100 * accuracy:.1f} % | {form} | {slq.err_mean:.4f} "
                  f"[{interval.low:.4f}, {interval.high:.4f}] | {exact:.4f} | {'yes' if row['covered'] else 'NO'} | "
                  f"{100 * row['relative_half_width']:.2f} % | {timings['off']:.0f} / {timings['on']:.0f} |",
                  flush=True)
    print(f"\ncovered {sum(r['covered'] for r in rows)}/{len(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
