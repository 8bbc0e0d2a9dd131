import pickle

import numpy as np
import pytest
import torch

from conftest import raises_param, write_cifar_batches
from wdbound import WdboundError, load_dataset
from wdbound.data import DataSpec


def test_digits_split_is_fixed_and_stratified():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    x, y = test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    counts = np.bincount(test.labels.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~10% each
    assert torch.equal(load_dataset("digits", "test").images, test.images)
    always_zero = (torch.cat([train.images, test.images]) == 0).all(0).sum()
    assert always_zero > 0  # the pixels that make zero Hessian rows


def test_cifar10_python_format(tmp_path):
    folder = write_cifar_batches(tmp_path)
    train, test = load_dataset(f"cifar10:{tmp_path}", "train"), load_dataset(f"cifar10:{tmp_path}", "test")
    assert (len(train), len(test)) == (30, 6)
    x, y = test[2]
    assert x.shape == (3, 32, 32) and y == 2
    with open(folder / "test_batch", "rb") as handle:
        raw = pickle.load(handle)[b"data"][2].reshape(3, 32, 32)[0, 0, 0]
    assert x[0, 0, 0].item() == pytest.approx((raw / 255 - 0.4914) / 0.2470, rel=1e-5)


def test_cifar10_binary_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.concatenate([np.arange(4, dtype=np.uint8)[:, None], rng.integers(0, 256, (4, 3072), dtype=np.uint8)], 1)
        (folder / name).write_bytes(records.tobytes())
    test = load_dataset(f"cifar10:{tmp_path}", "test")
    assert len(test) == 4 and test[3][1] == 3


def test_cifar10_refuses_code_in_pickles_and_missing_data(tmp_path):
    import os

    folder = write_cifar_batches(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": [0]}, handle)
    with pytest.raises(WdboundError, match="not a CIFAR-10"):
        load_dataset(f"cifar10:{tmp_path}", "test")
    assert not marker.exists()
    with pytest.raises(WdboundError, match="never downloads"):
        load_dataset(f"cifar10:{tmp_path / 'empty'}", "test")


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 48, 3), 60 * i, dtype=np.uint8)).save(tmp_path / split / label / f"{i}.png")
    # other colour modes are converted to RGB
    Image.fromarray(np.full((20, 30), 90, dtype=np.uint8)).convert("L").save(tmp_path / "test" / "dog" / "grey.png")
    Image.fromarray(np.full((20, 30, 3), 90, dtype=np.uint8)).convert("RGBA").save(tmp_path / "test" / "dog" / "alpha.png")
    test = load_dataset(f"imagefolder:{tmp_path}", "test", image_size=16)
    x, y = test[3]
    assert len(test) == 6 and x.shape == (3, 16, 16) and y == 1
    assert all(test[i][0].shape == (3, 16, 16) for i in range(len(test)))
    # a file that does not decode: one line naming it (it was PIL's UnidentifiedImageError traceback)
    (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    broken = load_dataset(f"imagefolder:{tmp_path}", "test", image_size=16)
    index = [i for i, (path, _) in enumerate(broken.inner.samples) if path.endswith("broken.png")][0]
    with raises_param("data", match="broken.png: not a readable image"):
        broken[index]


@pytest.mark.parametrize("spec", ["mnist", "cifar10", "digits:/x", "imagefolder:"])
def test_bad_specs(spec):
    with raises_param("data"):
        DataSpec.parse(spec)
