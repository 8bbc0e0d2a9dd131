"""Per-rank memory of the sharded Hessian (wdbound.fsdp) against its plan, on 1 and 2 processes.

    .venv/bin/python benchmarks/fsdp_memory.py [--width 1024] [--steps 60] [--dtype float64]

An MLP 64 -> width -> width -> 10 (d = 64 w + w^2 + 11 w + 10: 1.1 M at w = 1024) on the digits test split,
sharded with FSDP2 (each Linear a unit) over a one-rank and a two-rank gloo group (torchrun, CPU). Each rank
measures what it holds before the analysis (RSS), resets its high-water mark (``/proc/self/clear_refs``), makes
the plan (:func:`wdbound.fsdp.sharded_memory_plan`), runs the step ladder and a ``--steps`` Lanczos run, and
reports the plan's parts, its planned peak and the measured peak (``VmHWM``), the largest over the ranks.
Writes benchmarks/results/fsdp_memory-w<width>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))


def worker(out: str, width: int, steps: int, dtype_name: str) -> None:
    """One rank: plan, shard, run, measure; rank 0 writes the JSON."""
    import torch
    import torch.distributed as dist
    from torch import nn

    import wdbound
    from wdbound.fsdp import ShardedHessian, shard_model, sharded_memory_plan
    from wdbound.memory import current_bytes

    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    dtype = getattr(torch, dtype_name)
    data = wdbound.load_dataset("digits", "test")
    x = torch.stack([data[i][0] for i in range(len(data))]).flatten(1).to(dtype)
    y = torch.tensor([data[i][1] for i in range(len(data))])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, 10)).to(dtype)
    device = torch.device("cpu")
    baseline = current_bytes(device)
    with open("/proc/self/clear_refs", "w") as handle:  # the high-water mark starts again from here
        handle.write("5")
    plan = sharded_memory_plan(model, x[0], world=world, dtype=dtype, examples_per_rank=-(-len(y) // world),
                               batch_size=256, steps=steps, baseline=baseline)
    shard_model(model, device)
    H = ShardedHessian(model, (x, y), seed=0)
    H.memory_plan = plan
    H.hvp_error()
    top = H.top_eigenvalues(3, steps=steps)
    measured = H.measured_plan()
    if rank == 0:
        json.dump({"world": world, "d": H.dim, "local_d": H.local_dim, "width": width, "steps": steps,
                   "dtype": dtype_name, "top": top.values.tolist(), "plan": measured.to_json(),
                   "above_baseline_planned": measured.peak - measured.baseline,
                   "above_baseline_measured": measured.peak_measured - measured.baseline}, open(out, "w"))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out, width, steps, dtype = args.worker
        worker(out, int(width), int(steps), dtype)
        return 0
    rows = []
    for world in (1, 2):
        out = Path(f"/tmp/fsdp_memory-{world}.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
                   str(29400 + world), __file__, "--worker", str(out), str(args.width), str(args.steps), args.dtype]
        proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:])
            return 1
        row = json.loads(out.read_text())
        rows.append(row)
        mb = 2**20
        print(f"{world} process(es): d = {row['d']:,}, {row['local_d']:,} per rank; above what the rank held before: "
              f"planned {row['above_baseline_planned'] / mb:.0f} MB, measured {row['above_baseline_measured'] / mb:.0f} MB "
              f"(Lanczos {row['plan']['lanczos'] / mb:.0f} MB, shards {row['plan']['shard'] / mb:.0f} MB, gathered "
              f"{row['plan']['gathered'] / mb:.0f} MB, activations {row['plan']['activations'] / mb:.0f} MB)", flush=True)
    path = ROOT / "results" / f"fsdp_memory-w{args.width}-{date.today():%Y%m%d}.json"
    path.write_text(json.dumps({"rows": rows, "machine": "2 CPU cores, gloo"}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
