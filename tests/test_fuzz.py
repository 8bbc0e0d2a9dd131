"""Fuzzing the readers of untrusted files (hypothesis, bounded examples): only the one-line WdboundError escapes.

Budget: ~60 examples per reader (a few seconds each on 2 cores); the seeds are derandomised so CI is
reproducible. Inputs: random bytes, and valid files with random bytes overwritten, inserted or cut off.
"""

import json
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdbound import WdboundError
from wdbound.checkpoints import load_checkpoint
from wdbound.check import validate_baseline
from wdbound.data import load_dataset

# CI: 60 examples per reader; a longer local campaign: WDBOUND_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py
FUZZ = settings(max_examples=int(os.environ.get("WDBOUND_FUZZ_EXAMPLES", 60)), deadline=None,
                derandomize=os.environ.get("WDBOUND_FUZZ_EXAMPLES") is None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def mutate(data: bytes, edits) -> bytes:
    """Apply (position fraction, kind, payload) edits: overwrite, insert or truncate."""
    out = bytearray(data)
    for where, kind, payload in edits:
        at = int(where * len(out)) if out else 0
        if kind == 0:
            out[at:at + len(payload)] = payload
        elif kind == 1:
            out[at:at] = payload
        else:
            del out[at:]
    return bytes(out)


EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 2), st.binary(min_size=1, max_size=16)),
                 min_size=1, max_size=4)


@pytest.fixture(scope="module")
def valid_files(tiny_checkpoint, tmp_path_factory):
    from wdbound.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("fuzz-valid")
    ckpt = load_checkpoint(tiny_checkpoint)
    meta = {k: v for k, v in ckpt.meta.items() if k in ("optimizer", "train", "metrics")}
    save_checkpoint(root / "ok.safetensors", ckpt.model, arch=ckpt.meta["arch"], arch_kwargs=ckpt.meta["arch_kwargs"],
                    **meta)
    return tiny_checkpoint.read_bytes(), (root / "ok.safetensors").read_bytes()


def expect_clean(path, **kwargs):
    try:
        load_checkpoint(path, **kwargs)
    except WdboundError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_fuzz_checkpoint_random_bytes(data, tmp_path):
    path = tmp_path / "f.pt"
    path.write_bytes(data)
    expect_clean(path)


@FUZZ
@given(edits=EDITS)
def test_fuzz_checkpoint_mutated(valid_files, edits, tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(mutate(valid_files[0], edits))
    expect_clean(path)


@FUZZ
@given(edits=EDITS, header=st.integers(0, 2**64 - 1))
def test_fuzz_safetensors(valid_files, edits, header, tmp_path):
    data = valid_files[1]
    path = tmp_path / "m.safetensors"
    path.write_bytes(mutate(data, edits))
    expect_clean(path)
    path.write_bytes(struct.pack("<Q", header) + data[8:])  # any header length
    expect_clean(path)


def cifar_batch(n=3) -> bytes:
    rng = np.random.default_rng(0)
    return pickle.dumps({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(range(n))})


@FUZZ
@given(edits=EDITS, binary=st.binary(max_size=7000))
def test_fuzz_cifar_readers(edits, binary, tmp_path):
    names = ["test_batch"]
    py = tmp_path / "py" / "cifar-10-batches-py"
    py.mkdir(parents=True, exist_ok=True)
    (py / names[0]).write_bytes(mutate(cifar_batch(), edits))
    binf = tmp_path / "bin" / "cifar-10-batches-bin"
    binf.mkdir(parents=True, exist_ok=True)
    (binf / "test_batch.bin").write_bytes(binary)
    for root in (tmp_path / "py", tmp_path / "bin"):
        try:
            data = load_dataset(f"cifar10:{root}", "test")
            x, y = data[0]
            assert x.shape == (3, 32, 32) and 0 <= y <= 9
        except WdboundError as exc:
            assert "\n" not in str(exc)


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=5), max_leaves=20)


@FUZZ
@given(extra=JSON, settings_blob=JSON, checkpoints=JSON)
def test_fuzz_baseline(extra, settings_blob, checkpoints, tmp_path, capsys):
    from conftest import run_cli

    for data in (extra, {"format": "wdbound-baseline/1", "settings": settings_blob, "checkpoints": checkpoints},
                 {"format": "wdbound-baseline/1", "settings": {"spectrum": settings_blob, "tau": extra,
                                                               "sigma_floor": 1e-6}, "checkpoints": []}):
        try:
            validate_baseline(data, "fuzz")
        except WdboundError as exc:
            assert "\n" not in str(exc)
        path = tmp_path / "b.json"
        path.write_text(json.dumps(data))
        code, _, err = run_cli(["check", "--baseline", path, "--junit", tmp_path / "j.xml"], capsys)
        assert code in (0, 2), err  # 0: an empty baseline checks nothing and passes
        assert "Traceback" not in err
        if code == 2:
            assert len(err.strip().splitlines()) == 1
