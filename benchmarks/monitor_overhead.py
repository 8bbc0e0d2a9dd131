"""What the training monitor costs: training time with a wdbound.Monitor over training time without, per zoo
training and for ResNet-18 epochs, at the monitor's defaults and per quantity and schedule (Cockpit's table
gives 1.0-21x per preset). One process, the two runs of each row measured back to back.

    .venv/bin/python benchmarks/monitor_overhead.py                  # the zoo (40 epochs) and ResNet-18
    .venv/bin/python benchmarks/monitor_overhead.py --models digits-mlp --epochs 10 --no-resnet

Rows:
- ``default``: ``Monitor(model, optimizer, test split)`` as a user writes it (every 100 steps; loss, accuracy,
  sharpness, preconditioned sharpness; budget 10 %);
- one row per quantity alone and for every quantity together, every 100 steps and log-spaced, with no budget
  (``budget=None``): what the quantity costs when every scheduled record is taken;
- ResNet-18 (CIFAR stem, digits upsampled to 32 px, 3 channels, batch 64; the Hessian on 64 test images):
  the default monitor, and ``every=5`` under the budget (a 23-step epoch has no record at ``every=100``).

overhead = (monitored seconds - plain seconds) / plain seconds; ``self-reported`` is the monitor's own
``overhead()`` (its records' time over the training time it measured). Writes
benchmarks/results/monitor_overhead-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import wdbound  # noqa: E402
from wdbound.data import iterate_batches  # noqa: E402
from wdbound.models import build_model  # noqa: E402
from wdbound.monitor import QUANTITIES, Monitor  # noqa: E402
from wdbound.optim import make_optimizer  # noqa: E402
from wdbound.provenance import library_versions  # noqa: E402

ZOO = ("digits-mlp", "digits-cnn", "digits-vit")


def digits32(split: str):
    """Digits as 3 x 32 x 32 images (bilinear upsampling): a CIFAR-shaped set for ResNet-18."""
    data = wdbound.load_dataset("digits", split)
    x = torch.stack([data[i][0] for i in range(len(data))]).reshape(-1, 1, 8, 8)
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return torch.utils.data.TensorDataset(x, torch.tensor([data[i][1] for i in range(len(data))]))


def run(arch: str, epochs: int, monitor_options: dict | None, *, train=None, evaluation=None, kwargs=None):
    """Train ``arch`` (the zoo's recipe: AdamW, lr 3e-3, lambda 5e-2, b = 64, seed 0) for ``epochs``; with
    ``monitor_options`` a Monitor on the evaluation set is stepped after every optimizer step. Returns
    (seconds, monitor or None)."""
    train = train if train is not None else wdbound.load_dataset("digits", "train")
    evaluation = evaluation if evaluation is not None else wdbound.load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build_model(arch, **(kwargs or {"num_classes": 10}))
    optimizer = make_optimizer("adamw", model.parameters(), lr=3e-3, wd=5e-2)
    monitor = None
    if monitor_options is not None:
        monitor = Monitor(model, optimizer, evaluation, device="cpu", batch_size_train=64, n_train=len(train),
                          **monitor_options)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for inputs, labels in iterate_batches(train, 64, generator=generator):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
            if monitor is not None:
                monitor.step()
    return time.perf_counter() - start, monitor


def row(label: str, arch: str, epochs: int, options: dict | None, plain: float, **data) -> dict:
    seconds, monitor = run(arch, epochs, options, **data)
    records = monitor.records if monitor else []
    out = {"model": arch, "setting": label, "epochs": epochs, "plain_seconds": plain, "seconds": seconds,
           "overhead": (seconds - plain) / plain, "records": len(records),
           "hvps": sum(r.hvps for r in records), "self_reported": monitor.overhead() if monitor else 0.0,
           "options": {k: v for k, v in (options or {}).items()}}
    print(f"{arch:11s} {label:34s} {len(records):3d} records {out['hvps']:7d} HVPs  {plain:7.2f} s -> "
          f"{seconds:7.2f} s  overhead {100 * out['overhead']:7.1f} %  (self-reported "
          f"{100 * out['self_reported']:.1f} %)", flush=True)
    return out


def zoo_rows(arch: str, epochs: int, per_quantity_epochs: int, per_quantity: bool) -> list[dict]:
    plain, _ = run(arch, epochs, None)
    rows = [row("default (every 100, budget 10 %)", arch, epochs, {}, plain)]
    if not per_quantity:
        return rows
    short, _ = run(arch, per_quantity_epochs, None)
    for schedule in ("every", "log"):
        for quantity in (*QUANTITIES, "all"):
            quantities = QUANTITIES if quantity == "all" else (quantity,)
            rows.append(row(f"{quantity}, {schedule}{' 100' if schedule == 'every' else ''}, no budget", arch,
                            per_quantity_epochs, {"schedule": schedule, "quantities": quantities, "budget": None},
                            short))
    return rows


def resnet_rows(epochs: int) -> list[dict]:
    data = {"train": digits32("train"), "kwargs": {"num_classes": 10, "cifar_stem": True}}
    test = digits32("test")
    data["evaluation"] = (test.tensors[0][:64], test.tensors[1][:64])
    plain, _ = run("resnet18", epochs, None, **data)
    return [row("default (every 100, budget 10 %)", "resnet18", epochs, {}, plain, **data),
            row("every 5, budget 10 %", "resnet18", epochs, {"every": 5}, plain, **data)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--epochs", type=int, default=40, help="the zoo's 40 epochs (920 steps)")
    parser.add_argument("--per-quantity-epochs", type=int, default=10)
    parser.add_argument("--per-quantity-models", default="digits-mlp,digits-cnn",
                        help="models of the per-quantity rows (the default row runs on every --models)")
    parser.add_argument("--resnet-epochs", type=int, default=2)
    parser.add_argument("--no-resnet", dest="resnet", action="store_false")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    detailed = set(args.per_quantity_models.split(","))
    rows = [r for arch in args.models.split(",") if arch
            for r in zoo_rows(arch.strip(), args.epochs, args.per_quantity_epochs, arch.strip() in detailed)]
    if args.resnet:
        rows += resnet_rows(args.resnet_epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"monitor_overhead-{date.today().strftime('%Y%m%d')}.json"
    path.write_text(json.dumps({"rows": rows, "settings": {k: str(v) for k, v in vars(args).items()},
                                "versions": library_versions(), "threads": torch.get_num_threads()}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
