import warnings
from contextlib import contextmanager
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
