"""The dense Hessian of a zoo checkpoint, built four ways, side by side (`make demo` cold).

    python benchmarks/dense_build.py                          # one checkpoint per zoo architecture
    python benchmarks/dense_build.py --columns 256 --ckpt checkpoints/digits-vit-adamw-e40.pt

For each checkpoint, in one process, the same ``--columns`` unit vectors (float64, the test split) go through:

* ``loop``: double backward, one backward pass per column through the chunk's gradient graph (the build
  before the kept-graph build);
* ``kept-loop``: the same through a gradient graph built once and kept;
* ``kept-batched``: the kept graph with ``is_grads_batched`` (``--chunk`` columns vmapped through one pass);
* ``fwd-rev``: vmapped forward-over-reverse (``torch.func.jvp`` of ``grad``), ``--chunk`` columns per pass;
* ``auto``: what ``wdbound.curvature.dense_columns`` (the dense build) does: vmapped passes unless the model has
  convolutions, pooling or batch norm (``vmapped_passes_rule``).

It prints columns per second of each, the ratio to ``loop``, and the largest difference from ``loop``'s
columns (every method must compute the same matrix). Writes benchmarks/results/dense-build-<time>.json.
Timings on a shared machine move by tens of percent between runs: read the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from wdbound import load_checkpoint, load_dataset  # noqa: E402
from wdbound.curvature import HessianOperator, dense_columns  # noqa: E402
from wdbound.models import image_size  # noqa: E402

DEFAULT = ["digits-mlp-adamw-e40.pt", "digits-mlp-depth8-adamw-e40.pt", "digits-cnn-adamw-e40.pt",
           "digits-vit-adamw-e40.pt"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(path: Path, columns: int, chunk: int) -> dict:
    """Columns per second of each build method on ``path`` (see the module docstring)."""
    ckpt = load_checkpoint(path)
    dataset = load_dataset("digits", "test", image_size(ckpt.meta["arch"], ckpt.meta.get("arch_kwargs")))

    def operator(mode: str) -> HessianOperator:
        return HessianOperator(ckpt.model, dataset, dtype=torch.float64, mode=mode, probe_chunk=chunk)

    op = operator("double-backward")
    count = min(columns, op.dim)
    eye = torch.eye(op.dim, dtype=torch.float64)[:count]
    reference, loop_s = timed(lambda: op.matmat(eye, mode="double-backward", batched=False))
    row = {"checkpoint": path.name, "d": op.dim, "n": op.n_eval, "columns": count,
           "methods": {"loop": {"s": loop_s}}}
    kept = operator("double-backward")
    kept.use_kept_graph(True)
    row["methods"]["kept-loop"] = dict(zip(("out", "s"), timed(lambda: kept.matmat(eye, batched=False))))
    row["methods"]["kept-batched"] = dict(zip(("out", "s"), timed(lambda: kept.matmat(eye, batched=True))))
    auto = operator("double-backward")
    auto.use_kept_graph(True)
    row["methods"]["auto"] = dict(zip(("out", "s"), timed(lambda: dense_columns(auto, eye, chunk))))
    row["auto_batched"] = auto.batched
    fr = operator("forward-over-reverse")
    row["methods"]["fwd-rev"] = dict(zip(("out", "s"), timed(lambda: fr.matmat(eye))))
    for name, figures in row["methods"].items():
        out = figures.pop("out", reference)
        figures["columns_per_s"] = count / figures["s"]
        figures["speedup_vs_loop"] = loop_s / figures["s"]
        figures["max_abs_diff"] = float((out - reference).abs().max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, nargs="*", help="checkpoints (default: one per zoo architecture)")
    parser.add_argument("--columns", type=int, default=256, help="unit vectors per method")
    parser.add_argument("--chunk", type=int, default=64, help="columns per vmapped pass (the operator's probe_chunk)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.ckpt or [ROOT.parent / "checkpoints" / name for name in DEFAULT]
    rows = []
    print(f"{'checkpoint':34} {'d':>6} {'method':>10} {'col/s':>8} {'x loop':>7} {'max|diff|':>10}")
    for path in paths:
        row = measure(path, args.columns, args.chunk)
        rows.append(row)
        for name, figures in row["methods"].items():
            print(f"{row['checkpoint']:34} {row['d']:6d} {name:>10} {figures['columns_per_s']:8.1f} "
                  f"{figures['speedup_vs_loop']:7.2f} {figures['max_abs_diff']:10.2e}", flush=True)
    out = ROOT / "results" / f"dense-build-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
