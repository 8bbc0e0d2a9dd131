import pickle
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty spectrum cache (never the user's ~/.cache/wdbound)."""
    monkeypatch.setenv("WDBOUND_CACHE_DIR", str(tmp_path / "wdbound-cache"))
    return tmp_path / "wdbound-cache"


@pytest.fixture(scope="session")
def digits_test():
    from wdbound import load_dataset

    return load_dataset("digits", "test")


def train_checkpoint(folder, name: str, **config):
    """Train a digits model with the real training code and write it as ``folder/name``; returns the path."""
    from wdbound.checkpoints import save_checkpoint
    from wdbound.train import TrainConfig, train

    model, contents = train(TrainConfig(**config))
    path = folder / name
    save_checkpoint(path, model, **contents)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A briefly trained digits-mlp (hidden 16) checkpoint, written by the real training code."""
    return train_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny-mlp-adamw.pt", model="digits-mlp",
                            optimizer="adamw", epochs=3, lr=3e-3, wd=1e-2, arch_kwargs={"hidden": 16}, seed=0)


def run_cli(args, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from wdbound.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@contextmanager
def raises_param(param, match=None):
    """Expect a WdboundError that names the library parameter ``param`` (the CLI turns it into the flag)."""
    from wdbound.errors import WdboundError

    with pytest.raises(WdboundError, match=match) as info:
        yield info
    assert info.value.param == param, (info.value.param, str(info.value))


def write_cifar_batches(root, n=6):
    """A CIFAR-10 python-format folder of ``n`` random 3x32x32 images per batch under ``root``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n)),
                 b"batch_label": name.encode()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return folder


def free_port() -> str:
    """A TCP port nobody listens on now, for one torchrun's rendezvous (fixed ports from the pid collided)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])
