"""One real architecture end to end on this CPU: a ResNet-18 trained here, then
``wdbound err --exact off`` on 256 of its 32x32 test images.

No data set or weights can be downloaded here, so the script makes both: the digits images upsampled to
3x32x32 (bilinear, grey channel repeated) written as CIFAR-10 binary batches (``data_batch_{1..5}.bin`` hold
the train split, ``test_batch.bin`` the test split), and a ResNet-18 trained on them with torch's AdamW
(lr 1e-3, wd 5e-4, batch 64, seed 0, ``--epochs``), saved with ``wdbound.save_checkpoint``. ``--stem``
picks the first layers: ``cifar`` (3x3 stride-1 convolution, no max-pool: feature maps 32x32 down to 4x4) or
``imagenet`` (torchvision's own 7x7 stride-2 convolution and max-pool: 8x8 down to 1x1). Both have the same
11.2 M parameters, so the same Hessian size; an HVP on 256 images costs ~30 s with the CIFAR stem and ~2 s with
the ImageNet stem on this 2-core CPU, which is what makes an end-to-end run at the defaults fit here. It then prints
the ``wdbound err`` command to run (the measurement itself is that command: its plan line states the HVPs,
its JSON the interval and the time).

    .venv/bin/python benchmarks/resnet18_err.py --out /tmp/r18 [--epochs 2] [--arch resnet50]

``--arch resnet50`` trains the ImageNet projection's architecture the same way (``benchmarks/project_imagenet.py``
assumes what its top-1 run and the spectrum's lower end spend; a Table I cell on this model measures it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def write_cifar_bin(folder: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Images in [0, 1] ``[N, 3, 32, 32]`` as CIFAR-10 binary records (label byte + 3072 pixel bytes): the train
    split over the five ``data_batch_*.bin`` files, the test split in ``test_batch.bin``."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).reshape(len(images), -1).numpy()
    records = np.concatenate([labels.numpy().astype(np.uint8)[:, None], pixels], axis=1)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    for name, chunk in zip(names, np.array_split(records, len(names))):
        (folder / name).write_bytes(chunk.tobytes())


def main() -> None:
    from compare import fit_adamw  # benchmarks/ is the script's folder
    from wdbound import save_checkpoint
    from wdbound.data import load_dataset
    from wdbound.models import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar")
    parser.add_argument("--arch", choices=("resnet18", "resnet50"), default="resnet18",
                        help="resnet50: the ImageNet projection's model (23.5 M parameters), same data and training")
    args = parser.parse_args()
    data_dir = args.out / "digits32" / "cifar-10-batches-bin"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        digits = load_dataset("digits", split)
        images = nn.functional.interpolate(digits.images, size=32, mode="bilinear", align_corners=False)
        write_cifar_bin(data_dir, split, images.repeat(1, 3, 1, 1), digits.labels)
    train = load_dataset(f"cifar10:{args.out / 'digits32'}", "train")
    test = load_dataset(f"cifar10:{args.out / 'digits32'}", "test")
    torch.manual_seed(0)
    start = time.perf_counter()
    arch_kwargs = {"num_classes": 10, "cifar_stem": args.stem == "cifar"}
    model = fit_adamw(build_model(args.arch, **arch_kwargs), train, args.epochs)
    with torch.no_grad():
        acc = float((model(test.images).argmax(1) == test.labels).float().mean())
    path = save_checkpoint(args.out / f"{args.arch}-{args.stem}-digits32-adamw.pt", model, arch=args.arch,
                           arch_kwargs=arch_kwargs, optimizer="adamw",
                           train={"eta": 1e-3, "lam": 5e-4, "batch_size": 64, "n_train": len(train),
                                  "epochs": args.epochs}, metrics={"test_acc": acc})
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s; test accuracy {acc:.3f}; {path}")
    print(f".venv/bin/wdbound err {path} --data cifar10:{args.out / 'digits32'} --max-samples 256 --exact off "
          f"--dtype float32 --no-cache --json {args.out / 'err.json'}")


if __name__ == "__main__":
    main()
