"""Float32 convolutions on the CPU: oneDNN, unfold + matmul for small outputs only (wdbound's rule), or unfold
for every convolution. Time per HVP, measured side by side in one process.

For each model, three Hessian operators on the same float32 data in the operator's own HVP mode (``--hvp
auto``: double backward through the kept graph for these models) differ only in which convolutions run as
im2col + matmul (:class:`wdbound.curvature.UnfoldConv2d`):

- ``onednn``: none (``unfold_positions`` 0);
- ``rule``: outputs of at most :data:`wdbound.curvature.SMALL_CONV_POSITIONS` positions per example (the
  default on the CPU in float32);
- ``all``: every convolution (the float64 default).

The three are timed in turn, ``--reps`` rounds of ``--vectors`` products each; the script prints the median
seconds per HVP, the ratios to ``onednn`` and the largest relative difference of the products (rounding:
the kernels sum in different orders). Results go to benchmarks/results/small-convs-<date>.json.

    .venv/bin/python benchmarks/small_convs.py [--checkpoint CKPT --data SPEC] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import wdbound  # noqa: E402  (before torch's first large allocation: the library's allocator settings)
import torch  # noqa: E402
from wdbound.curvature import SMALL_CONV_POSITIONS, HessianOperator, UnfoldConv2d  # noqa: E402
from wdbound.data import ArrayDataset  # noqa: E402
from wdbound.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"onednn": 0, "rule": SMALL_CONV_POSITIONS, "all": math.inf}


def random_case(arch: str, images: int, size: int, cifar_stem: bool, seed: int = 0):
    """A randomly initialised zoo ResNet and random images of ``size`` px."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build_model(arch, cifar_stem=cifar_stem, image_size=size)
    data = ArrayDataset(torch.rand(images, 3, size, size, generator=g), torch.randint(0, 10, (images,), generator=g))
    return model, data


def checkpoint_case(path: str, spec: str, images: int):
    """A checkpoint and the first ``images`` test examples of ``spec``."""
    model = wdbound.load_checkpoint(path).model
    data = wdbound.load_dataset(spec, "test")
    items = [data[i] for i in range(min(images, len(data)))]
    return model, ArrayDataset(torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items]))


def unfolded_layers(op: HessianOperator) -> int:
    """How many convolutions of the operator's model run as unfold + matmul on its evaluation inputs."""
    count = 0

    def hook(module, inputs, _output) -> None:
        nonlocal count
        count += module.unfolded_floats(inputs[0]) > 0

    handles = [m.register_forward_hook(hook) for m in op.model.modules() if isinstance(m, UnfoldConv2d)]
    try:
        with torch.no_grad():
            op.model(next(op.chunks())[0])
    finally:
        for handle in handles:
            handle.remove()
    return count


def time_case(name: str, model, data, reps: int, vectors: int) -> dict:
    """Median seconds per HVP of each variant, alternating, and the largest relative difference to oneDNN."""
    operators = {}
    for label, positions in VARIANTS.items():
        op = HessianOperator(model, data, dtype=torch.float32, mode="auto")
        for module in op.model.modules():
            if isinstance(module, UnfoldConv2d):
                module.unfold_positions = positions
        op.keep_graph = op.mode == "double-backward"
        operators[label] = op
    dim = operators["onednn"].dim
    v = torch.randn(vectors, dim, generator=torch.Generator().manual_seed(1))
    products = {label: op.matmat(v) for label, op in operators.items()}  # warm-up, and the products compared
    times: dict[str, list[float]] = {label: [] for label in operators}
    for _ in range(reps):
        for label, op in operators.items():
            start = time.perf_counter()
            op.matmat(v)
            times[label].append((time.perf_counter() - start) / vectors)
    reference = products["onednn"]
    row = {"model": name, "d": dim, "hvp_mode": operators["onednn"].mode,
           "unfolded_layers": {label: unfolded_layers(op) for label, op in operators.items()},
           "seconds_per_hvp": {label: statistics.median(t) for label, t in times.items()},
           "max_relative_difference": {label: float((p - reference).norm() / reference.norm())
                                       for label, p in products.items()}}
    base = row["seconds_per_hvp"]["onednn"]
    row["ratio_to_onednn"] = {label: t / base for label, t in row["seconds_per_hvp"].items()}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="also time this checkpoint (e.g. the ResNet-18 of resnet18_err.py)")
    parser.add_argument("--data", help="its data spec (e.g. cifar10:/tmp/r18/digits32)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--vectors", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cases = [("digits-cnn (zoo checkpoint, 8 px)", lambda: checkpoint_case(
        str(ROOT / "checkpoints" / "digits-cnn-adamw-e40.pt"), "digits", args.images))]
    if args.checkpoint:
        cases.append((f"{Path(args.checkpoint).name}", lambda: checkpoint_case(args.checkpoint, args.data,
                                                                               args.images)))
    cases += [("resnet18, ImageNet stem, 32 px x 64", lambda: random_case("resnet18", 64, 32, False)),
              ("resnet18, CIFAR stem, 32 px x 16", lambda: random_case("resnet18", 16, 32, True)),
              ("resnet18, ImageNet stem, 64 px x 16", lambda: random_case("resnet18", 16, 64, False)),
              ("resnet18, ImageNet stem, 128 px x 8", lambda: random_case("resnet18", 8, 128, False)),
              ("resnet50, ImageNet stem, 64 px x 8", lambda: random_case("resnet50", 8, 64, False))]
    rows = []
    print(f"{'model':<44} {'mode':<16} {'onednn s/HVP':>12} {'rule':>6} {'all':>6}  unfolded layers (rule/all)")
    for name, build in cases:
        model, data = build()
        row = time_case(name, model, data, args.reps, args.vectors)
        rows.append(row)
        r, layers = row["ratio_to_onednn"], row["unfolded_layers"]
        print(f"{name:<44} {row['hvp_mode']:<16} {row['seconds_per_hvp']['onednn']:12.4f} {r['rule']:6.2f} "
              f"{r['all']:6.2f}  {layers['rule']}/{layers['all']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = args.out / f"small-convs-{stamp}.json"
    path.write_text(json.dumps({"small_conv_positions": SMALL_CONV_POSITIONS, "reps": args.reps,
                                "vectors": args.vectors, "rows": rows}, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
