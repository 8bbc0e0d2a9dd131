import os
import pickle

import pytest
import torch

from conftest import raises_param, run_cli
from wdbound import WdboundError, load_checkpoint
from wdbound.checkpoints import save_checkpoint, training_facts
from wdbound.models import build_model


def test_roundtrip_pt_and_safetensors_same_tensors_and_meta(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.meta["format"] == "wdbound/1" and ckpt.meta["arch"] == "digits-mlp"
    assert not ckpt.model.training
    state = ckpt.meta["optimizer"]["state"]
    assert set(state) == {n for n, _ in ckpt.model.named_parameters()}
    assert all(entry["step"] == ckpt.meta["train"]["steps"] for entry in state.values())
    out = tmp_path / "copy.safetensors"
    save_checkpoint(out, ckpt.model, arch=ckpt.meta["arch"], arch_kwargs=ckpt.meta["arch_kwargs"],
                    optimizer=ckpt.meta["optimizer"], train=ckpt.meta["train"], metrics=ckpt.meta["metrics"])
    again = load_checkpoint(out)
    for (name, a), (_, b) in zip(ckpt.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.meta["train"] == ckpt.meta["train"]
    for name, entry in state.items():
        assert torch.equal(entry["exp_avg_sq"], again.meta["optimizer"]["state"][name]["exp_avg_sq"])
        assert again.meta["optimizer"]["state"][name]["step"] == entry["step"]


def test_training_facts_from_metadata_and_overrides(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    facts = ckpt.facts()
    assert facts.eta == pytest.approx(3e-3) and facts.lam == pytest.approx(1e-2)
    assert facts.batch_size == 64 and facts.n_train == 1437
    over = load_checkpoint(tiny_checkpoint, lr=1e-4, wd=0.0, batch_size=8, n_train=100).facts()
    assert (over.eta, over.lam, over.batch_size, over.n_train) == (1e-4, 0.0, 8, 100)


@pytest.mark.parametrize("train, param", [
    ({"lam": 0.1, "batch_size": 4, "n_train": 10}, "eta"),
    ({"eta": 0.0, "lam": 0.1, "batch_size": 4, "n_train": 10}, "eta"),
    ({"eta": 0.1, "lam": -1.0, "batch_size": 4, "n_train": 10}, "lam"),
    ({"eta": 0.1, "lam": 0.1, "batch_size": 0, "n_train": 10}, "batch_size"),
    ({"eta": 0.1, "lam": 0.1, "batch_size": 4}, "n_train"),
    ({"eta": float("nan"), "lam": 0.1, "batch_size": 4, "n_train": 10}, "eta"),
])
def test_missing_or_bad_fact_names_its_parameter(train, param):
    with raises_param(param):
        training_facts({"train": train})


def test_plain_state_dict_needs_arch(tmp_path):
    model = build_model("digits-mlp", hidden=8)
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    with raises_param("arch"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, arch="digits-mlp", arch_kwargs={"hidden": 8}, lr=1e-3, wd=0.0, batch_size=32,
                           n_train=1437)
    assert ckpt.facts().batch_size == 32
    with raises_param("lam"):
        load_checkpoint(path, arch="digits-mlp", arch_kwargs={"hidden": 8}, lr=1e-3).facts()


def _write_evil(path, marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(path, "wb") as handle:
        pickle.dump({"format": "wdbound/1", "payload": Evil()}, handle)


def test_malicious_pickle_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _write_evil(evil, marker)
    torch.save({"x": 1}, tmp_path / "ok.pt")  # sanity: the writer works
    with pytest.raises(WdboundError):
        load_checkpoint(evil)
    code, out, err = run_cli(["summary", evil], capsys)
    assert code == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # torch's own advice (load with weights_only=False) would run the file's code: not passed on
    assert "refused by the weights-only unpickler" in err and "False" not in err


def test_bad_files_one_line_exit_2(tiny_checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:500])
    text = tmp_path / "text.pt"
    text.write_text("hello, not a checkpoint")
    unknown = tmp_path / "unknown-arch.pt"
    obj = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**obj, "arch": "no-such-net"}, unknown)
    misfit = tmp_path / "misfit.pt"
    torch.save({**obj, "arch_kwargs": {"hidden": 7, "num_classes": 10}}, misfit)
    nan = tmp_path / "nan.pt"
    bad_state = {k: v.clone() for k, v in obj["state_dict"].items()}
    next(iter(bad_state.values()))[0] = float("nan")
    torch.save({**obj, "state_dict": bad_state}, nan)
    future = tmp_path / "future.pt"
    torch.save({**obj, "format": "wdbound/99"}, future)
    cases = {tmp_path / "missing.pt": "no such", truncated: "not a loadable", text: "not a loadable",
             unknown: "unknown architecture", misfit: "does not fit", nan: "NaN", future: "unknown checkpoint format"}
    for path, words in cases.items():
        with pytest.raises(WdboundError, match=words):
            load_checkpoint(path)
        code, out, err = run_cli(["spectrum", path], capsys)
        assert code == 2, path
        assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err


def test_save_is_atomic(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    target = tmp_path / "out.pt"
    target.write_bytes(b"previous")

    with pytest.raises(Exception):  # a lambda cannot be pickled: the write fails midway
        save_checkpoint(target, ckpt.model, arch="digits-mlp", arch_kwargs={},
                        optimizer={"name": "adamw", "x": lambda: 0},
                        train={"eta": 1e-3, "lam": 0.0, "batch_size": 8, "n_train": 80}, metrics={})
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pt"]


@pytest.mark.parametrize("optimizer, train, match", [
    ("sgd", {"eta": 1e-3, "lam": 0.0, "batch_size": 8, "n_train": 80}, "unknown training rule 'sgd'"),
    ("adamw", {"eta": 1e-3, "lam": 0.0, "batch_size": 8}, "does not record n_train"),
    ("adamw", {"eta": 0, "lam": 0.0, "batch_size": 8, "n_train": 80}, "must be > 0"),
])
def test_save_checkpoint_refuses_missing_or_bad_facts(tmp_path, optimizer, train, match):
    """A fact the bounds need is checked when the checkpoint is written, not when it is analysed."""
    from wdbound.models import build_model

    with pytest.raises(WdboundError, match=match):
        save_checkpoint(tmp_path / "x.pt", build_model("digits-mlp", hidden=4), arch="digits-mlp",
                        optimizer=optimizer, train=train)
    assert not (tmp_path / "x.pt").exists()
