"""The `--compile` lever, measured: a torch.compile'd HVP against the eager ones, side by side.

    python benchmarks/compile_hvp.py                       # digits-mlp, digits-cnn (shipped checkpoints)
    python benchmarks/compile_hvp.py --resnet-n 8          # + ResNet-18 (CIFAR stem) on 8 random 32x32 images
    python benchmarks/compile_hvp.py --device cuda

For each model, in one process: seconds of one gradient, of wdbound's eager HVPs (forward-over-reverse,
double backward through a kept graph: what `spectrum` runs) and of the same forward-over-reverse HVP under
``torch.compile`` (its first call, which compiles, and its steady state), the ratios HVP / gradient, the
calls it takes for the compilation to pay off against the fastest eager HVP, and the largest relative
difference between the compiled and eager products (the compiled HVP must compute the same thing).
Writes benchmarks/results/compile-<device>-<time>.json. Nothing here is a unit test: timings on a shared
machine move by tens of percent between runs; read the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.func import functional_call, grad, jvp

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from wdbound import load_checkpoint, load_dataset  # noqa: E402
from wdbound.curvature import HessianOperator  # noqa: E402
from wdbound.data import ArrayDataset  # noqa: E402
from wdbound.models import build_model  # noqa: E402


def seconds_per_call(device: torch.device, fn, reps: int) -> float:
    """Mean seconds of ``fn()`` over ``reps`` calls (after the caller's warm-up)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / reps


def compiled_hvp(op: HessianOperator):
    """A forward-over-reverse HVP of ``op``'s mean loss on its first chunk, compiled: ``v [d] -> H v [d]``."""
    inputs, labels = next(op.chunks())
    model, names, numels, shapes = op.model, op.names, op.numels, op.shapes
    fixed = {**op.frozen, **op.buffers}

    def loss(flat):
        tensors = {n: t.view(s) for n, t, s in zip(names, flat.split(numels), shapes)}
        return op.loss_fn(functional_call(model, {**tensors, **fixed}, (inputs,)), labels)

    def hvp(flat, vector):
        return jvp(grad(loss), (flat,), (vector,))[1]

    return torch.compile(hvp, dynamic=False)


def measure(name: str, model, dataset, device: torch.device, dtype: torch.dtype, reps: int) -> dict:
    """The figures of one model (see the module docstring)."""
    op = HessianOperator(model, dataset, device=device, dtype=dtype, mode="forward-over-reverse",
                         batch_size=len(dataset))
    vector = torch.randn(1, op.dim, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    op.gradient()
    row = {"d": op.dim, "n": op.n_eval, "dtype": str(dtype).removeprefix("torch."),
           "gradient_s": seconds_per_call(device, op.gradient, reps)}
    eager = op.matmat(vector)
    row["eager_forward_over_reverse_s"] = seconds_per_call(device, lambda: op.matmat(vector), reps)
    kept = HessianOperator(model, dataset, device=device, dtype=dtype, mode="double-backward",
                           batch_size=len(dataset))
    kept.use_kept_graph(True)
    kept.matmat(vector)
    row["eager_kept_graph_s"] = seconds_per_call(device, lambda: kept.matmat(vector), reps)
    hvp = compiled_hvp(op)
    start = time.perf_counter()
    try:
        compiled = hvp(op.params, vector[0])
    except Exception as exc:  # noqa: BLE001 - a lever that does not compile is a measured outcome
        row["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        print(f"{name}: torch.compile failed: {row['compile_error']}", flush=True)
        return row
    row["compile_first_call_s"] = time.perf_counter() - start
    row["compiled_s"] = seconds_per_call(device, lambda: hvp(op.params, vector[0]), reps)
    row["compiled_max_rel_diff"] = float((compiled - eager[0]).abs().max() / eager[0].abs().max())
    fastest = min(row["eager_forward_over_reverse_s"], row["eager_kept_graph_s"])
    saved = fastest - row["compiled_s"]
    row["calls_to_pay_off"] = (row["compile_first_call_s"] / saved) if saved > 0 else None
    for key in ("eager_forward_over_reverse_s", "eager_kept_graph_s", "compiled_s"):
        row[key.removesuffix("_s") + "_over_grad"] = row[key] / row["gradient_s"]
    print(f"{name:10s} d={op.dim:>9,} {row['dtype']}: grad {row['gradient_s'] * 1e3:8.2f} ms | HVP/grad: "
          f"fwd-over-rev {row['eager_forward_over_reverse_over_grad']:.2f}, kept graph "
          f"{row['eager_kept_graph_over_grad']:.2f}, compiled {row['compiled_over_grad']:.2f} | compile "
          f"{row['compile_first_call_s']:.1f} s, pays off after "
          + (f"{row['calls_to_pay_off']:.0f} HVPs" if row["calls_to_pay_off"] else "never (not faster)")
          + f" | max rel. diff {row['compiled_max_rel_diff']:.1e}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--resnet-n", type=int, default=0, help="also ResNet-18 on this many random 32x32 images")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    zoo = ROOT.parent / "checkpoints"
    digits = load_dataset("digits", "test")
    cases = [("digits-mlp", load_checkpoint(zoo / "digits-mlp-adamw-e40.pt").model, digits),
             ("digits-cnn", load_checkpoint(zoo / "digits-cnn-adamw-e40.pt").model, digits)]
    if args.resnet_n:
        torch.manual_seed(0)
        images = torch.randn(args.resnet_n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        cases.append(("resnet18", build_model("resnet18", num_classes=10).eval(),
                      ArrayDataset(images, torch.arange(args.resnet_n) % 10)))
    report = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "models": {name: measure(name, model, data, device, dtype, args.reps if name != "resnet18" else 2)
                         for name, model, data in cases}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile-{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
