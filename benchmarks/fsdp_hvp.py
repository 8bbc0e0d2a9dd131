"""The finite-difference HVP of wdbound.fsdp against exact HVPs: its relative error per dtype and step size, and
the error estimate delta it reports (products at eps and 2 eps), on the zoo's digits-mlp and digits-cnn and on
a ResNet-18 (CIFAR stem, random initialisation, 32 digits images upsampled to 32 px) and, with
``--trained-resnet18 CKPT cifar10:DIR``, the trained one of ``benchmarks/resnet18_err.py`` on 32 of its test images.

    .venv/bin/python benchmarks/fsdp_hvp.py [--models digits-mlp,digits-cnn,resnet18] [--vectors 3]

One process: the model is sharded by FSDP2 over a one-rank gloo group (the product is the same code path as
on N ranks; tests/test_fsdp.py runs two). Reference: wdbound.Hessian's double-backward / forward-over-reverse
HVP in float64 on the same weights. For each dtype (float64, float32, bfloat16) and step scale (0.1, 1, 10 x
the eps hvp_error chose from its ladder): the largest relative error over ``--vectors`` random unit vectors, and at scale 1 the
reported delta and the ratio error / delta (SAFETY = 10 in wdbound.fsdp covers ratios up to 10). Writes
benchmarks/results/fsdp_hvp-<date>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import wdbound  # noqa: E402
from wdbound.errors import WdboundError  # noqa: E402
from wdbound.fsdp import ShardedHessian  # noqa: E402
from wdbound.provenance import library_versions  # noqa: E402

DTYPES = ("float64", "float32", "bfloat16")
SCALES = (0.1, 1.0, 10.0)


TRAINED = {}  # "resnet18-trained": (checkpoint, data spec), from --trained-resnet18


def model_and_data(name: str):
    if name == "resnet18-trained":  # benchmarks/resnet18_err.py's checkpoint: no ReLU sits exactly at its kink
        path, spec = TRAINED[name]
        ckpt = wdbound.load_checkpoint(path)
        data = wdbound.load_dataset(spec, "test")
        x = torch.stack([data[i][0] for i in range(32)])
        y = torch.tensor([int(data[i][1]) for i in range(32)])
        return ckpt.model.eval(), x, y
    if name == "resnet18":
        data = wdbound.load_dataset("digits", "test")
        x = torch.stack([data[i][0] for i in range(32)]).reshape(-1, 1, 8, 8)
        x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        y = torch.tensor([data[i][1] for i in range(32)])
        torch.manual_seed(0)
        return wdbound.models.build_model("resnet18", num_classes=10).eval(), x, y
    ckpt = wdbound.load_checkpoint(ROOT.parent / "checkpoints" / f"{name}-adamw-e40.pt")
    data = wdbound.load_dataset("digits", "test")
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    return ckpt.model.eval(), x, y


def rows_for(name: str, vectors: int) -> list[dict]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, x, y = model_and_data(name)
    exact_op = wdbound.Hessian(model, (x.double(), y), progress=False, device="cpu").operator
    generator = torch.Generator().manual_seed(0)
    units = torch.randn(vectors, exact_op.dim, generator=generator, dtype=torch.float64)
    units = units / units.norm(dim=1, keepdim=True)
    exact = exact_op.matmat(units)
    rows = []
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        sharded = copy.deepcopy(model).to(dtype)
        mesh = init_device_mesh("cpu", (1,))
        for module in list(sharded.modules())[1:]:
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                fully_shard(module, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        H = ShardedHessian(sharded, (x.to(dtype), y))
        start = time.perf_counter()
        try:
            delta = H.hvp_error(vectors).relative  # the step chosen from the ladder
        except WdboundError as exc:
            rows.append({"model": name, "d": H.dim, "dtype": dtype_name, "refused": str(exc)})
            print(f"{name:10s} d={H.dim:9d} {dtype_name:8s} refused: {exc}", flush=True)
            continue
        per_hvp = (time.perf_counter() - start) / (3 * vectors)
        for scale in SCALES:
            errors = []
            for unit, reference in zip(units, exact):
                product = H.hvp(unit.to(dtype), scale).double()
                errors.append(float((product - reference).norm() / reference.norm()))
            row = {"model": name, "d": H.dim, "dtype": dtype_name, "scale": scale, "eps": H.eps_scale * scale,
                   "error": max(errors), "delta": delta if scale == 1.0 else None,
                   "ratio": max(errors) / delta if scale == 1.0 and delta > 0 else None,
                   "seconds_per_hvp": per_hvp, "tried": H.error.tried if scale == 1.0 else None}
            rows.append(row)
            print(f"{name:10s} d={H.dim:9d} {dtype_name:8s} eps x{scale:<4g} ({row['eps']:.2e}) error "
                  f"{row['error']:.2e}" + (f"  delta {delta:.2e}  error/delta {row['ratio']:.1f}  "
                                           f"{per_hvp:.3f} s/HVP  delta per step factor "
                                           + ", ".join(f"x{k:g}: {v:.1e}" for k, v in H.error.tried.items())
                                           if scale == 1.0 else ""), flush=True)
    return rows


def main(argv=None) -> int:
    import torch.distributed as dist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-mlp,digits-cnn,resnet18")
    parser.add_argument("--vectors", type=int, default=3)
    parser.add_argument("--trained-resnet18", nargs=2, metavar=("CHECKPOINT", "DATA"), default=None,
                        help="also a trained ResNet-18 (benchmarks/resnet18_err.py's checkpoint and its "
                             "cifar10:DIR data): the model name resnet18-trained")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    if args.trained_resnet18:
        TRAINED["resnet18-trained"] = tuple(args.trained_resnet18)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29631")
    dist.init_process_group("gloo", rank=0, world_size=1)
    rows = [r for name in args.models.split(",") for r in rows_for(name.strip(), args.vectors)]
    dist.destroy_process_group()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fsdp_hvp-{date.today().strftime('%Y%m%d')}.json"
    path.write_text(json.dumps({"rows": rows, "versions": library_versions()}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
