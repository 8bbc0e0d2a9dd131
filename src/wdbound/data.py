"""Data sets the tool trains on and evaluates the Hessian over.

Specs (``--data``):

``digits``
    scikit-learn's copy of the UCI handwritten digits (1797 images, 8x8, 10
    classes), embedded in the package, no download. Pixels are scaled to
    [0, 1] (divided by 16) and left uncentred, so pixels that are always 0
    stay 0 -- the first-layer weights reading them have exactly zero Hessian
    rows. Split: ``sklearn.model_selection.train_test_split(test_size=360,
    stratify=labels, random_state=0)``, i.e. 1437 train / 360 test, the same
    on every machine; the order within each split is the one that call returns.
``cifar10:PATH``
    CIFAR-10 from a local folder, never downloaded. PATH may hold the python
    version (``cifar-10-batches-py/data_batch_1`` ... ``test_batch``, read
    with a restricted unpickler that only rebuilds numpy arrays, lists,
    dicts, strings and numbers) or the binary version
    (``cifar-10-batches-bin/data_batch_1.bin`` ... ``test_batch.bin``), or be
    that batches folder itself. Normalised with the usual per-channel CIFAR-10
    mean and standard deviation.
``imagefolder:PATH``
    ``torchvision.datasets.ImageFolder`` over ``PATH/train`` and ``PATH/test``
    (``PATH/val`` when there is no ``test``). Images are resized and
    centre-cropped to ``image_size`` (default 32) and normalised with the
    ImageNet mean and standard deviation.

Every dataset yields ``(input tensor [C, H, W] float32, int label)``.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import WdboundError

SPLITS = ("train", "test")
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value."""

    kind: str
    path: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "DataSpec":
        """``digits``, ``cifar10:PATH`` or ``imagefolder:PATH`` as a DataSpec; anything else is a one-line error."""
        kind, _, path = spec.partition(":")
        kind = kind.strip().lower()
        if kind == "digits":
            if path:
                raise WdboundError(f"data spec {spec!r}: 'digits' takes no path", "data")
            return cls("digits")
        if kind in ("cifar10", "imagefolder"):
            if not path:
                raise WdboundError(f"data spec {spec!r} needs a local folder, e.g. {kind}:/data/{kind}", "data")
            return cls(kind, path)
        raise WdboundError(f"unknown data spec {spec!r}; use digits, cifar10:PATH or imagefolder:PATH", "data")

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def take(inputs, index):
    """Rows ``index`` of a model input: a tensor ``[N, ...]`` or a dict of them (keyword inputs, as Hugging Face
    models take: ``input_ids``, ``attention_mask``, ``pixel_values``).

    >>> take({"input_ids": torch.arange(6).view(3, 2)}, torch.tensor([2]))["input_ids"].tolist()
    [[4, 5]]
    """
    if isinstance(inputs, dict):
        return {key: value[index] for key, value in inputs.items()}
    return inputs[index]


def stack_inputs(items: list):
    """One batch of per-example model inputs: tensors stacked, or dicts of tensors stacked key by key."""
    if isinstance(items[0], dict):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return torch.stack(items)


def cat_inputs(batches: list):
    """Batches of model inputs (tensors or dicts of tensors) joined along the example axis."""
    if isinstance(batches[0], dict):
        return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
    return torch.cat(batches)


def input_rows(inputs) -> int:
    """How many examples a batch of model inputs holds (the first axis; of every tensor of a dict)."""
    if isinstance(inputs, dict):
        rows = {int(value.shape[0]) for value in inputs.values()}
        if len(rows) != 1:
            raise WdboundError(f"data: the input tensors differ in length ({sorted(rows)})")
        return rows.pop()
    return int(inputs.shape[0])


def input_numel(inputs) -> int:
    """Numbers in a batch of model inputs (a tensor, or every tensor of a dict)."""
    return sum(int(v.numel()) for v in inputs.values()) if isinstance(inputs, dict) else int(inputs.numel())


def first_tensor(inputs) -> torch.Tensor:
    """The input tensor whose size stands for the input dimension: the tensor itself, or a dict's first."""
    return next(iter(inputs.values())) if isinstance(inputs, dict) else inputs


class ArrayDataset(Dataset):
    """In-memory inputs ``[N, ...]`` (images ``[N, C, H, W]``, or a dict of tensors for keyword inputs) with
    targets ``[N, ...]`` (integer labels, or floating targets)."""

    def __init__(self, images, labels: torch.Tensor) -> None:
        if input_rows(images) != labels.shape[0]:
            raise ValueError(f"inputs of {input_rows(images)} rows and labels {tuple(labels.shape)} differ in length")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int):
        label = self.labels[index]
        return take(self.images, index), (int(label) if label.ndim == 0 and not label.is_floating_point() else label)


def evaluation_subset(size: int, count: int | None, seed: int) -> torch.Tensor | None:
    """``--max-samples``: ``count`` of ``size`` examples drawn without replacement by a generator seeded with
    ``seed`` (its own stream: the probes do not depend on it), in ascending index order; None for all.

    >>> evaluation_subset(10, 3, 0).tolist(), evaluation_subset(10, None, 0), evaluation_subset(3, 5, 0)
    ([1, 4, 7], None, None)
    """
    if count is None or count >= size:
        return None
    if count < 1:
        raise WdboundError(f"max samples {count} must be >= 1", "max_samples")
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def load_dataset(spec: str | DataSpec, split: str = "test", image_size: int | None = None) -> Dataset:
    """Return the ``split`` ("train" or "test") of a data spec as a torch Dataset.

    Items are ``(input tensor float32 [C, H, W], int label)``: exactly what the
    analyses evaluate the mean cross-entropy on.
    """
    if not isinstance(spec, DataSpec):
        spec = DataSpec.parse(spec)
    if split not in SPLITS:
        raise WdboundError(f"unknown split {split!r}; use train or test", "split")
    if spec.kind == "digits":
        return _digits(split)
    if spec.kind == "cifar10":
        return _cifar10(Path(spec.path), split)
    return _imagefolder(Path(spec.path), split, image_size or 32)


def num_classes(dataset: Dataset) -> int:
    """The number of classes of a data spec."""
    if isinstance(dataset, ArrayDataset):
        return int(dataset.labels.max()) + 1
    return len(getattr(dataset, "classes", [])) or 10


# ---------------------------------------------------------------- digits

def _digits(split: str) -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x))[:, None], torch.from_numpy(y))


# ---------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and builtins, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data = np.asarray(batch[b"data"] if b"data" in batch else batch["data"], dtype=np.uint8)
        labels = np.asarray(batch.get(b"labels", batch.get("labels")), dtype=np.int64).reshape(-1)
        images = data.reshape(-1, 3, 32, 32)
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        return images, labels
    except Exception as exc:  # any malformed batch file is bad input
        raise WdboundError(f"{path}: not a CIFAR-10 python batch ({exc})", "data") from None


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise WdboundError(f"{path}: not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)", "data")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _cifar10(root: Path, split: str) -> ArrayDataset:
    names = _CIFAR_TRAIN if split == "train" else _CIFAR_TEST
    for folder in (root / "cifar-10-batches-py", root / "cifar-10-batches-bin", root):
        if all((folder / n).is_file() for n in names):
            parts = [_read_cifar_py(folder / n) for n in names]
            break
        if all((folder / f"{n}.bin").is_file() for n in names):
            parts = [_read_cifar_bin(folder / f"{n}.bin") for n in names]
            break
    else:
        raise WdboundError(
            f"no CIFAR-10 {split} batches under {root} (expected cifar-10-batches-py/ or cifar-10-batches-bin/); "
            "wdbound never downloads data",
            "data",
        )
    images = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() > 9:
        raise WdboundError(f"CIFAR-10 labels under {root} fall outside 0..9", "data")
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ArrayDataset((torch.from_numpy(images) - mean) / std, torch.from_numpy(labels))


# ---------------------------------------------------------------- ImageFolder

class _IntLabels(Dataset):
    """An image dataset's items with ``int`` labels; a file that does not decode is a one-line error naming it."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner
        self.classes = getattr(inner, "classes", [])

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image, label = self.inner[index]
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError (an OSError), truncated
            samples = getattr(self.inner, "samples", None)
            where = samples[index][0] if samples is not None else f"item {index}"
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise WdboundError(f"{where}: not a readable image ({type(exc).__name__}: {reason})", "data") from None
        return image, int(label)


def _imagefolder(root: Path, split: str, image_size: int) -> Dataset:
    from torchvision import datasets, transforms

    folder = root / split
    if split == "test" and not folder.is_dir():
        folder = root / "val"
    if not folder.is_dir():
        raise WdboundError(f"no {split} folder under {root} (expected {root}/train and {root}/test or val)", "data")
    transform = transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    try:
        return _IntLabels(datasets.ImageFolder(str(folder), transform=transform))
    except (FileNotFoundError, OSError) as exc:
        raise WdboundError(f"cannot read image folder {folder}: {exc}", "data") from None


def iterate_batches(dataset: Dataset, batch_size: int, *, generator: torch.Generator | None = None,
                    max_samples: int | None = None, subset: torch.Tensor | None = None, workers: int = 0):
    """Yield ``(inputs [B, C, H, W], labels [B] int64)`` batches (a generic dataset's floating targets keep
    their dtype and shape: :func:`_stack_targets`).

    With ``generator`` the order is a seeded random permutation (training);
    without, the dataset order (evaluation). ``max_samples`` keeps the first N
    examples of that order; ``subset`` (indices) replaces the order. ``workers`` > 0 reads files
    (ImageFolder, any map-style dataset) through a ``DataLoader`` with that many worker processes;
    the batches are the same.
    """
    if batch_size < 1:
        raise WdboundError(f"batch size {batch_size} must be >= 1", "batch_size")
    total = len(dataset)
    if max_samples is not None:
        if max_samples < 1:
            raise WdboundError(f"max samples {max_samples} must be >= 1", "max_samples")
        total = min(total, max_samples)
    order = torch.randperm(len(dataset), generator=generator)[:total] if generator is not None else torch.arange(total)
    if subset is not None:
        order, total = subset, len(subset)
    if workers > 0 and not isinstance(dataset, ArrayDataset):
        from torch.utils.data import DataLoader, Subset

        loader = DataLoader(Subset(_IntLabels(dataset), order.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=workers)
        for inputs, labels in loader:
            yield inputs, labels.to(torch.int64)
        return
    for start in range(0, total, batch_size):
        index = order[start:start + batch_size]
        if isinstance(dataset, ArrayDataset):
            yield take(dataset.images, index), dataset.labels[index]
        else:
            items = [dataset[int(i)] for i in index]
            yield stack_inputs([x for x, _ in items]), _stack_targets([y for _, y in items])


def _stack_targets(targets: list) -> torch.Tensor:
    """One batch's targets: class labels (ints, integer tensors) as int64, floating targets (regression, soft
    labels) stacked in their own dtype and shape.

    >>> _stack_targets([1, 2]).dtype, _stack_targets([torch.tensor([0.5, 0.5])] * 3).shape
    (torch.int64, torch.Size([3, 2]))
    """
    stacked = (torch.stack(targets) if all(isinstance(t, torch.Tensor) for t in targets)
               else torch.as_tensor(targets))
    return stacked if stacked.is_floating_point() else stacked.to(torch.int64)
