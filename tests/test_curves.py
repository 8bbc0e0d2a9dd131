"""wdbound.curves and `wdbound train --curves` / `wdbound curves`: curvature recorded while the real training code
runs, equal to what `spectrum` and `err` print for the checkpoint of that step, read back from checkpoints and
monitor files; bad inputs are one-line errors."""

import json

import pytest
import torch

from conftest import run_cli, train_checkpoint
from wdbound.curves import read_curve, read_curves
from wdbound.errors import WdboundError

SMALL = dict(model="digits-mlp", epochs=2, lr=3e-3, arch_kwargs={"hidden": 8}, seed=0)


@pytest.mark.slow
def test_a_record_equals_what_spectrum_and_err_print_for_the_checkpoint_of_its_step(tmp_path, capsys):
    """Epoch-end records: the last is the trained model's. err/d (exact, both forms) equals `err --json` on the
    written checkpoint and the sharpness equals `spectrum --dtype float64`'s top eigenvalue; the first record
    equals `err` on a checkpoint of the same run stopped after one epoch."""
    path = tmp_path / "run.pt"
    code, _, err = run_cli(["train", "--arch", "digits-mlp", "--arch-kwarg", "hidden=8", "--optimizer", "adamw",
                            "--epochs", "2", "--lr", "3e-3", "--wd", "5e-2", "--curves", "epochs", "--out", path], capsys)
    assert code == 0, err
    records = read_curve(path).records
    assert [r.epoch for r in records] == [1, 2] and records[-1].step == 2 * 23
    for ckpt, record in ((path, records[-1]),
                         (train_checkpoint(tmp_path, "one.pt", optimizer="adamw", wd=5e-2,
                                           **{**SMALL, "epochs": 1}), records[0])):
        code, _, err = run_cli(["err", ckpt, "--json", tmp_path / "err.json"], capsys)
        assert code == 0, err
        printed = json.loads((tmp_path / "err.json").read_text())
        for form in ("adamw", "l2-adam"):
            assert printed[form]["method"] == "exact"
            assert record.err_mean[form] == pytest.approx(printed[form]["err_mean"], rel=1e-10)
        code, _, err = run_cli(["spectrum", ckpt, "--dtype", "float64", "--json", tmp_path / "s.json"], capsys)
        assert code == 0, err
        top = json.loads((tmp_path / "s.json").read_text())["top_eigenvalues"][0]
        assert record.sharpness[0] == pytest.approx(top, rel=1e-8)
    code, out, err = run_cli(["curves", path, "--json", tmp_path / "c.json", "--csv", tmp_path / "c.csv",
                              "--plot", tmp_path / "c.png"], capsys)
    assert code == 0, err
    assert "lambda_max(P^-1 H)" in out and "err/d: the AdamW form stays below the l2-Adam form" in out
    written = json.loads((tmp_path / "c.json").read_text())["curves"][0]
    assert [r["step"] for r in written["records"]] == [23, 46] and (tmp_path / "c.png").stat().st_size > 0
    assert (tmp_path / "c.csv").read_text().splitlines()[0].startswith("run,arch,optimizer,step,epoch,eta,loss")


def test_curves_never_change_the_trained_weights(tmp_path):
    from wdbound.train import TrainConfig, train

    plain, _ = train(TrainConfig(optimizer="l2-adam", wd=1e-3, **SMALL))
    watched, contents = train(TrainConfig(optimizer="l2-adam", wd=1e-3, curves="log", **SMALL))
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    records = contents["train"]["curves"]["records"]
    assert [r["step"] for r in records] == [1, 2, 4, 8, 16, 32, 46]  # log-spaced, and the last step
    assert [r["epoch"] for r in records] == [1, 1, 1, 1, 1, 2, 2]
    assert all(r["preconditioned_sharpness"] > 0 and r["err_inputs"]["method"] == "exact" for r in records)


def test_monitor_files_and_bad_inputs(tmp_path, tiny_checkpoint, capsys):
    from wdbound.monitor import Monitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    monitor = Monitor(model, optimizer, (x, y), every=1, budget=None, path=tmp_path / "m.jsonl")
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        monitor.step()
    curve = read_curve(tmp_path / "m.jsonl")
    assert [r.step for r in curve.records] == [1, 2, 3] and curve.records == monitor.records
    assert curve.ordering_from() is None  # err not recorded
    frame = curve.to_pandas()
    assert frame["lambda_1"].tolist() == [r.sharpness[0] for r in monitor.records]
    with pytest.raises(WdboundError, match="records no curves"):
        read_curve(tiny_checkpoint)
    with pytest.raises(WdboundError, match="no checkpoint in .* records curves"):
        read_curves([tiny_checkpoint.parent])
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(WdboundError, match="bad.jsonl:2 is not a monitor record"):
        read_curve(tmp_path / "bad.jsonl")
    code, _, err = run_cli(["curves", tiny_checkpoint], capsys)
    assert code == 2 and err.count("\n") == 1 and "train it with `wdbound train --curves log`" in err
    code, _, err = run_cli(["train", "--curves", "often", "--out", tmp_path / "x.pt"], capsys)
    assert code == 2 and "unknown schedule 'often'" in err and "--curves" in err and not (tmp_path / "x.pt").exists()
