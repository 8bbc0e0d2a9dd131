"""runs.py: the runs file (CSV / TOML) of `wdbound table --runs`, and Table I of plain state_dicts end to end."""

import json

import pytest
import torch
from torch.nn import functional as F

from conftest import run_cli
from wdbound.data import iterate_batches, load_dataset
from wdbound.errors import WdboundError
from wdbound.models import build_model
from wdbound.runs import RunSpec, read_runs

HEADER = "path,arch,arch_kwargs,optimizer,lr,wd,batch_size,n_train,epochs,label,test_acc\n"


def test_csv_and_toml_give_the_same_runs(tmp_path):
    (tmp_path / "runs.csv").write_text(HEADER + "a.pt,digits-mlp,depth=2;hidden=8,adamw,1e-4,0.05,64,1437,40,mine,\n"
                                       "# a comment\n/abs/b.pt,,,,,,,,,,0.5\n")
    (tmp_path / "runs.toml").write_text('[[run]]\npath = "a.pt"\narch = "digits-mlp"\narch_kwargs = {depth = 2, '
                                        'hidden = 8}\noptimizer = "adamw"\nlr = 1e-4\nwd = 0.05\nbatch_size = 64\n'
                                        'n_train = 1437\nepochs = 40\nlabel = "mine"\n\n[[run]]\npath = "/abs/b.pt"\n'
                                        'test_acc = 0.5\n')
    csv_runs, toml_runs = read_runs(tmp_path / "runs.csv"), read_runs(tmp_path / "runs.toml")
    assert csv_runs == toml_runs
    first, second = csv_runs
    assert first == RunSpec(tmp_path / "a.pt", "digits-mlp", {"depth": 2, "hidden": 8}, None, "adamw", 1e-4, 0.05, 64,
                            1437, 40, "mine", None)
    assert second.path.as_posix() == "/abs/b.pt" and second.arch is None and second.test_acc == 0.5
    shared = RunSpec(tmp_path, arch="resnet18", lr=0.1, epochs=90)
    filled = second.with_defaults(shared)
    assert (filled.arch, filled.lr, filled.epochs, filled.test_acc, filled.path) == ("resnet18", 0.1, 90, 0.5,
                                                                                     second.path)
    assert first.with_defaults(shared).arch == "digits-mlp"  # the row wins over the flags


@pytest.mark.parametrize("name, text, match", [
    ("r.csv", HEADER + "a.pt,digits-mlp,,adamw,fast,,,,,,\n", "lr = 'fast' is not a number"),
    ("r.csv", HEADER + "a.pt,,,,,,64.5,,,,\n", "batch_size = '64.5' must be a positive integer"),
    ("r.csv", HEADER + ",digits-mlp,,,,,,,,,\n", "no path"),
    ("r.csv", "path,colour\na.pt,red\n", "unknown column colour"),
    ("r.csv", HEADER + "a.pt,,,,,,,,,,,extra\n", "a cell beyond the header"),
    ("r.csv", HEADER + "a.pt,,,,,,,,,,1.5\n", "test_acc = 1.5 must be in"),
    ("r.csv", HEADER + "a.pt,,depth8,,,,,,,,\n", "'depth8' is not key=value"),
    ("r.csv", "", "empty runs file"),
    ("r.csv", HEADER, "no runs"),
    ("r.toml", "[[run]\n", "not valid TOML"),
    ("r.toml", "run = 3\n", "expected \\[\\[run\\]\\] tables"),
    ("r.json", "{}", "ends in .csv or .toml"),
])
def test_bad_runs_files_are_one_line_errors(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(WdboundError, match=match):
        read_runs(tmp_path / name)


def test_arch_and_factory_together_is_an_error(tmp_path):
    with pytest.raises(WdboundError, match="either arch or model_factory"):
        RunSpec(tmp_path / "a.pt", arch="digits-mlp", model_factory="m:f").resolved_arch()


def _plain_state_dicts(folder):
    """Plain state_dicts (no wdbound metadata) of two architectures, each trained one epoch with torch's own
    AdamW and with Adam + L2 (what a user's training loop writes)."""
    data = load_dataset("digits", "train")
    lines = []
    for arch, kwargs, text in (("digits-mlp", {"hidden": 8}, "hidden=8"), ("digits-cnn", {"channels": 2}, "channels=2")):
        for optimizer, wd in (("adamw", 5e-2), ("l2-adam", 1e-3)):
            torch.manual_seed(0)
            model = build_model(arch, **kwargs)
            rule = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
            opt = rule(model.parameters(), lr=3e-3, weight_decay=wd)
            for inputs, labels in iterate_batches(data, 64, generator=torch.Generator().manual_seed(0)):
                opt.zero_grad()
                F.cross_entropy(model(inputs), labels).backward()
                opt.step()
            torch.save(model.state_dict(), folder / f"{arch}-{optimizer}.pt")
            lines.append(f"{arch}-{optimizer}.pt,{arch},{text},{optimizer},3e-3,{wd},64,1437,1,,")
    return lines


@pytest.mark.slow
def test_table_of_plain_state_dicts_from_a_runs_file(tmp_path, capsys):
    """Table I of four plain state_dicts (two architectures x AdamW / l2-Adam) from a runs file: every cell in its
    family's column, exact, with the accuracy measured on the test split; each err/d equals what `err` gives
    for the same file with the same facts as flags; and the shared flags give the same table without a file."""
    lines = _plain_state_dicts(tmp_path)
    (tmp_path / "runs.csv").write_text(HEADER + "\n".join(lines) + "\n")
    out = tmp_path / "reports"
    code, stdout, err = run_cli(["table", "--runs", tmp_path / "runs.csv", "--out", out, "--no-cache", "--no-plots"],
                                capsys)
    assert code == 0, err
    cells = {c["checkpoint"]: c for c in json.loads((out / "table1.json").read_text())["cells"]}
    assert sorted(cells) == ["digits-cnn-adamw.pt", "digits-cnn-l2-adam.pt", "digits-mlp-adamw.pt",
                             "digits-mlp-l2-adam.pt"]
    for name, cell in cells.items():
        assert cell["family"] == ("adamw" if "-adamw" in name else "l2-adam") and cell["method"] == "exact"
        assert cell["epochs"] == 1 and cell["eta"] == 3e-3 and cell["n"] == 1437 and cell["b"] == 64
        assert cell["test_acc_source"] == "measured on the test split" and 0.2 < cell["test_acc"] <= 1
    assert "err_AdamW < err_l2-Adam" in stdout and "2 of 2 are resolved" in stdout

    code, _, err = run_cli(["err", tmp_path / "digits-cnn-l2-adam.pt", "--arch", "digits-cnn", "--arch-kwarg",
                            "channels=2", "--lr", "3e-3", "--wd", "1e-3", "--batch-size", "64", "--n-train", "1437",
                            "--optimizer", "l2-adam", "--no-cache", "--json", tmp_path / "err.json"], capsys)
    assert code == 0, err
    figures = json.loads((tmp_path / "err.json").read_text())["l2-adam"]
    assert figures["err_mean"] == pytest.approx(cells["digits-cnn-l2-adam.pt"]["err_mean"], rel=1e-10)

    flags = ["--arch", "digits-mlp", "--arch-kwarg", "hidden=8", "--lr", "3e-3", "--batch-size", "64", "--n-train",
             "1437", "--epochs", "1", "--no-cache", "--no-plots"]
    code, _, err = run_cli(["table", tmp_path / "digits-mlp-adamw.pt", "--optimizer", "adamw", "--wd", "5e-2",
                            "--out", tmp_path / "flags", *flags], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "flags" / "table1.json").read_text())["cells"][0]
    assert again["err_mean"] == pytest.approx(cells["digits-mlp-adamw.pt"]["err_mean"], rel=1e-10)

    code, _, err = run_cli(["table", tmp_path / "digits-mlp-adamw.pt", "--out", tmp_path / "none", "--no-plots"],
                           capsys)
    assert code == 2 and "plain state_dict without an architecture" in err
