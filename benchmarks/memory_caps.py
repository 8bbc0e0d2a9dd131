"""`spectrum`, `err` and `table` on a torchvision ResNet-18 and a timm ViT-S/16 under an address-space cap, as in a
container or a cluster job: the plan line each run printed (which limit `--memory auto` used), its
exit code, its planned peak and the peak it measured.

Weights are random (no download here) and written with ``wdbound.save_checkpoint`` (training facts included, so
`table` takes them); the data are generated images in an ImageFolder (2 classes). Each command runs in a fresh
process under ``RLIMIT_AS`` = ``--cap`` (``ulimit -v``). Short settings: the point is memory, not accuracy.

    .venv/bin/python benchmarks/memory_caps.py [--cap 12e9] [--images 20] [--models resnet18,vit_small_patch16_224]
        [--commands spectrum,err,table] [--max-samples 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {"resnet18": ("resnet18", {"num_classes": 2}, 32),
          "vit_small_patch16_224": ("vit_small_patch16_224", {"num_classes": 2}, 224)}
SHORT = ["--probes", "2", "--steps", "6", "--dtype", "float32", "--no-cache"]


def write_images(root: Path, count: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count // 4):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def write_checkpoint(path: Path, name: str, data: str) -> Path:
    import torch

    from wdbound.checkpoints import save_checkpoint
    from wdbound.models import build_model, canonical_arch

    arch, kwargs, _ = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, **kwargs)
    return save_checkpoint(path, model, arch=canonical_arch(arch), arch_kwargs=kwargs,
                           optimizer={"name": "adamw"},
                           train={"eta": 1e-3, "lam": 0.05, "batch_size": 64, "n_train": 1000, "data": data,
                                  "epochs": 1},
                           metrics={})


def capped(cap: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def find(tree, key):
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = find(item, key)
            if found is not None:
                return found
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=12e9, help="RLIMIT_AS in bytes")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--commands", default="spectrum,err,table")
    parser.add_argument("--max-samples", default="8", help="evaluation images per run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_caps.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            size = MODELS[name][2]
            images = root / f"images-{size}"
            if not images.exists():
                write_images(images, args.images, size)
            ckpt = write_checkpoint(root / f"{name}.pt", name, f"imagefolder:{images}")
            for command in args.commands.split(","):
                out = root / f"{name}-{command}"
                extra = {"spectrum": ["--top-k", "1", "--trace", "hutchinson", "--json", f"{out}.json"],
                         "err": ["--exact", "off", "--theorem-probes", "2", "--theorem-steps", "4",
                                 "--diagonal", "hutchinson", "--json", f"{out}.json"],
                         "table": ["--exact", "off", "--out", str(out), "--no-plots"]}[command]
                argv = [sys.executable, "-m", "wdbound", command, str(ckpt), *SHORT, "--max-samples",
                        args.max_samples, *extra]
                start = time.perf_counter()
                run = subprocess.run(argv, capture_output=True, text=True, preexec_fn=capped(int(args.cap)))
                seconds = time.perf_counter() - start
                report_path = Path(f"{out}.json") if command != "table" else out / "table1.json"
                report = json.loads(report_path.read_text()) if run.returncode == 0 and report_path.exists() else {}
                plan = find(report, "memory_plan") or {}
                peak = find(report, "peak_memory_bytes")
                plan_line = next((line for line in run.stdout.splitlines() + run.stderr.splitlines()
                                  if line.startswith("memory plan")), "")
                row = {"model": name, "command": command, "exit": run.returncode, "seconds": seconds,
                       "plan_line": plan_line, "budget": plan.get("budget"), "planned_peak": plan.get("planned_peak"),
                       "budget_source": plan.get("budget_source"), "measured_peak": peak,
                       "stderr_tail": run.stderr.strip().splitlines()[-1:] if run.returncode else []}
                results.append(row)
                inside = (peak is not None and plan.get("planned_peak") is not None
                          and peak <= plan["planned_peak"])
                print(f"{name} {command}: exit {run.returncode}, {seconds:.0f} s, planned peak "
                      f"{(plan.get('planned_peak') or 0) / 2**30:.2f} GiB, measured {(peak or 0) / 2**30:.2f} GiB "
                      f"({'inside' if inside else 'NOT inside'} the plan)\n  {plan_line or row['stderr_tail']}",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    fresh = {(row["model"], row["command"]) for row in results}
    kept = [row for row in previous if (row["model"], row["command"]) not in fresh]
    args.out.write_text(json.dumps({"cap": args.cap, "rows": kept + results}, indent=1))


if __name__ == "__main__":
    main()
