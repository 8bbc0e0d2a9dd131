"""ResNet-18 / ResNet-50 at 32x32: time per HVP and per gradient, the memory plan of the defaults, and the
peak memory each plan really reaches; one vs two processes.

For each model (CIFAR stem, 10 classes, random weights, ``--images`` random 32x32 images, float32 HVPs):

1. time of one gradient and of one HVP (forward-over-reverse and double backward), one vector each;
2. the memory plan of ``wdbound spectrum`` and of ``wdbound err`` at their defaults under ``--budget``
   (8 GiB for ResNet-18, 16 GiB for ResNet-50: the issue's targets);
3. the peak RSS a fresh process reaches when it holds what the plan holds at its largest: the SLQ probe block
   through a recurrence step (``lanczos_blocks`` with the plan's block), then the thick-restart top-k basis
   (every page written) beside a one-vector HVP. Memory of the low-memory paths does not grow with the steps,
   so this is the peak of the defaults without spending their thousands of HVPs;
4. with ``--processes 2``: the same HVP timed in one process (2 threads) and in two (torchrun, gloo, 1 thread
   each), and the largest relative difference of the products.

Prints a markdown summary and writes benchmarks/results/resnet.json. The numbers feed docs/scale.md.

    .venv/bin/python benchmarks/resnet.py [--models resnet18,resnet50] [--images 256] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

BUDGETS = {"resnet18": "8GiB", "resnet34": "8GiB", "resnet50": "16GiB"}


def dataset(images: int, seed: int = 0):
    from wdbound.data import ArrayDataset

    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(images, 3, 32, 32, generator=g), torch.randint(0, 10, (images,), generator=g))


def operator(arch: str, images: int, mode: str = "forward-over-reverse", shard=None):
    from wdbound.curvature import HessianOperator
    from wdbound.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    return HessianOperator(model, dataset(images), batch_size=images, dtype=torch.float32, mode=mode, shard=shard)


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def plans(op, budget: str) -> dict:
    """The memory plans of `spectrum` and `err` at their defaults; ``op`` is left with the spectrum plan's
    HVP chunk (examples per pass) applied."""
    from wdbound.spectrum import SpectrumSettings, memory_plan

    out = {}
    for command, settings, factor in (("err", SpectrumSettings(dtype="float32", memory=budget, top_k=1, rtol=0.01,
                                                               diagonal="hutchinson"), 8),
                                      ("spectrum", SpectrumSettings(dtype="float32", memory=budget), 1)):
        plan = memory_plan(op, settings, refine_factor=factor)
        out[command] = {**plan.to_json(), "summary": plan.summary()}
    return out


def peak_child(arch: str, images: int, budget: str) -> None:
    """Run in a fresh process: hold what the spectrum plan holds at its largest, print the peak RSS."""
    from wdbound.estimators.hutchinson import rademacher
    from wdbound.estimators.lanczos import lanczos_blocks
    from wdbound.memory import peak_bytes
    from wdbound.spectrum import SpectrumSettings, memory_plan

    op = operator(arch, images)
    plan = memory_plan(op, SpectrumSettings(dtype="float32", memory=budget))
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    # SLQ phase: one block of probes through one recurrence step (its memory does not grow with the steps)
    lanczos_blocks(op, lambda n: rademacher(n, op.dim, g, op.dtype), plan.probe_block, 1, block=plan.probe_block)
    slq_seconds = time.perf_counter() - start
    after_slq = peak_bytes(op.device)
    # top-k phase: the thick-restart basis, every page written, and one single-vector HVP beside it
    basis = torch.randn(plan.restart, op.dim, generator=g, dtype=torch.float64)
    op.matmat(basis[:1].to(op.dtype))
    print(json.dumps({"peak_rss": peak_bytes(op.device), "peak_after_slq_block": after_slq,
                      "planned_peak": plan.peak, "probe_block": plan.probe_block, "hvp_chunk": plan.hvp_chunk,
                      "slq_block_seconds": slq_seconds, "basis_bytes": basis.numel() * 8}))


def shard_child(arch: str, images: int) -> None:
    """Under torchrun: time one sharded HVP; rank 0 prints the time and saves the product."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    op = operator(arch, images, shard=(dist.get_rank(), dist.get_world_size()))
    op.rechunk(int(os.environ.get("WDBOUND_BENCH_CHUNK", images)))
    v = torch.randn(1, op.dim, generator=torch.Generator().manual_seed(1))
    seconds = timed(lambda: op.matmat(v), repeats=1)
    product = op.matmat(v)
    if dist.get_rank() == 0:
        torch.save(product, os.environ["WDBOUND_BENCH_OUT"])
        print(json.dumps({"seconds": seconds}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--child", choices=["peak", "shard"])
    parser.add_argument("--arch")
    parser.add_argument("--budget")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resnet.json"))
    args = parser.parse_args()
    if args.child == "peak":
        return peak_child(args.arch, args.images, args.budget)
    if args.child == "shard":
        return shard_child(args.arch, args.images)
    results = {}
    for arch in args.models.split(","):
        budget = BUDGETS.get(arch, "16GiB")
        op = operator(arch, args.images)
        planned = plans(op, budget)
        v = torch.randn(1, op.dim, generator=torch.Generator().manual_seed(1))
        entry = {"d": op.dim, "images": args.images, "budget": budget, "hvp_chunk": op.batch_size,
                 "gradient_seconds": timed(op.gradient, repeats=1),
                 "hvp_seconds": timed(lambda: op.matmat(v), repeats=1),
                 "hvp_double_backward_seconds": timed(lambda: op.matmat(v, mode="double-backward"), repeats=1)}
        entry["hvp_over_gradient"] = entry["hvp_seconds"] / entry["gradient_seconds"]
        one = op.matmat(v)
        op = None  # freed before the measuring child process starts
        entry["plans"] = planned
        child = subprocess.run([sys.executable, __file__, "--child", "peak", "--arch", arch, "--images",
                                str(args.images), "--budget", budget], capture_output=True, text=True, check=True)
        entry["measured"] = json.loads(child.stdout.strip().splitlines()[-1])
        if args.processes > 1:
            out = Path(f"/tmp/wdbound-bench-{os.getpid()}.pt")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "WDBOUND_BENCH_OUT": str(out),
                   "WDBOUND_BENCH_CHUNK": str(entry["hvp_chunk"])}
            shard = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                    str(args.processes), __file__, "--child", "shard", "--arch", arch, "--images",
                                    str(args.images)], capture_output=True, text=True, env=env, check=True)
            two = torch.load(out)
            out.unlink()
            entry["processes"] = {"count": args.processes,
                                  "hvp_seconds": json.loads(shard.stdout.strip().splitlines()[-1])["seconds"],
                                  "max_rel_difference": float((two - one).abs().max() / one.abs().max())}
        results[arch] = entry
        print(f"{arch}: d={entry['d']:,}, {args.images} images: gradient {entry['gradient_seconds']:.2f} s, HVP "
              f"{entry['hvp_seconds']:.2f} s fwd-over-rev / {entry['hvp_double_backward_seconds']:.2f} s double "
              f"backward (HVP/grad {entry['hvp_over_gradient']:.2f}x)", flush=True)
        for command, plan in entry["plans"].items():
            print(f"  {command} defaults: {plan['summary']}", flush=True)
        m = entry["measured"]
        print(f"  measured peak RSS {m['peak_rss'] / 2**30:.2f} GiB (plan {m['planned_peak'] / 2**30:.2f} GiB, "
              f"block {m['probe_block']})", flush=True)
        if "processes" in entry:
            p = entry["processes"]
            print(f"  {p['count']} processes: HVP {p['hvp_seconds']:.2f} s vs {entry['hvp_seconds']:.2f} s; "
                  f"max rel. difference {p['max_rel_difference']:.1e}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
