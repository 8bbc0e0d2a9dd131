"""The bad-input corpus, run against every command: exit 2, one line on stderr naming the problem (and the flag
that fixes it where there is one), no traceback, no output file created or modified, nothing untrusted run."""

import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from conftest import run_cli, write_cifar_batches


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def corpus(tiny_checkpoint, tmp_path_factory):
    """Bad checkpoint files, each with words its error must contain."""
    root = tmp_path_factory.mktemp("corpus")
    good = torch.load(tiny_checkpoint, weights_only=True)
    files = {}

    def put(name, words, writer):
        path = root / name
        writer(path)
        files[name] = (path, words)

    put("missing.pt", "no such", lambda p: None)
    put("empty.pt", "not a loadable", lambda p: p.write_bytes(b""))
    put("truncated.pt", "not a loadable", lambda p: p.write_bytes(tiny_checkpoint.read_bytes()[:700]))
    put("random.pt", "not a loadable", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)))

    def zip_not_torch(p):
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("notes.txt", "a zip, not a torch file")

    put("zip.pt", "not a loadable", zip_not_torch)
    put("evil.pt", "not a loadable", lambda p: p.write_bytes(pickle.dumps({"format": "wdbound/1",
                                                                           "x": _Evil(root / "pwned")})))
    put("header.safetensors", "not a readable safetensors",
        lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{garbage"))
    put("json.safetensors", "not a readable safetensors",
        lambda p: p.write_bytes(struct.pack("<Q", 9) + b"{not json" + b"\0" * 16))
    put("arch.pt", "unknown architecture", lambda p: torch.save({**good, "arch": "alexnet"}, p))

    def state(mutate):
        sd = {k: v.clone() for k, v in good["state_dict"].items()}
        mutate(sd)
        return lambda p: torch.save({**good, "state_dict": sd}, p)

    put("missing-tensor.pt", "missing 1", state(lambda sd: sd.pop("3.bias")))
    put("extra-tensor.pt", "unexpected 1", state(lambda sd: sd.__setitem__("9.weight", torch.zeros(2))))
    put("shape.pt", "has shape", state(lambda sd: sd.__setitem__("3.bias", torch.zeros(11))))
    put("nan.pt", "NaN", state(lambda sd: sd["1.weight"].__setitem__((0, 0), float("nan"))))
    put("inf.pt", "NaN or infinity", state(lambda sd: sd["3.weight"].__setitem__((0, 0), float("inf"))))
    put("format.pt", "unknown checkpoint format", lambda p: torch.save({**good, "format": "wdbound/99"}, p))
    put("plain-no-arch.pt", "--arch", lambda p: torch.save(good["state_dict"], p))
    return root, files


FACT_CASES = [("eta", None, "does not record eta"), ("eta", 0.0, "must be > 0"), ("lam", -1e-3, "must be >= 0"),
              ("batch_size", 0, "positive integer"), ("n_train", -5, "positive integer"),
              ("eta", float("nan"), "not finite"), ("batch_size", "many", "not a number")]


@pytest.fixture(scope="module")
def bad_facts(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("facts")
    good = torch.load(tiny_checkpoint, weights_only=True)
    out = []
    for i, (key, value, words) in enumerate(FACT_CASES):
        train = dict(good["train"])
        if value is None:
            train.pop(key)
        else:
            train[key] = value
        path = root / f"facts{i}.pt"
        torch.save({**good, "train": train}, path)
        out.append((path, words))
    return out


def assert_clean_failure(code, err, words, outdir):
    lines = [line for line in err.strip().splitlines()
             if not line.startswith(("memory plan", "[progress]", "warning: --"))]  # a deprecated spelling says so
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert words in lines[0], (words, err)
    assert "Traceback" not in err
    if outdir is not None:
        assert not outdir.exists() or list(outdir.rglob("*")) == [], list(outdir.rglob("*"))


CHECKPOINT_COMMANDS = {
    "spectrum": lambda ckpt, out: ["spectrum", ckpt, "--probes", "2", "--steps", "4", "--json", out / "s.json"],
    "err": lambda ckpt, out: ["err", ckpt, "--probes", "2", "--steps", "4", "--json", out / "e.json"],
    "table": lambda ckpt, out: ["table", ckpt, "--out", out],
    "updates": lambda ckpt, out: ["updates", ckpt, "--json", out / "u.json"],
    "summary": lambda ckpt, out: ["summary", ckpt],
}


# `updates` reads only the optimizer moments (never builds the model): a bad architecture or bad weights
# do not concern it, and it must still work on such a file.
MOMENTS_ONLY_OK = {"arch.pt", "missing-tensor.pt", "extra-tensor.pt", "shape.pt", "nan.pt", "inf.pt"}


@pytest.mark.parametrize("command", sorted(CHECKPOINT_COMMANDS))
def test_bad_checkpoint_files_every_command(corpus, command, tmp_path, capsys):
    root, files = corpus
    for name, (path, words) in files.items():
        out = tmp_path / f"out-{name}"
        code, _, err = run_cli(CHECKPOINT_COMMANDS[command](path, out), capsys)
        if command == "updates" and name in MOMENTS_ONLY_OK:
            assert code == 0 and (out / "u.json").exists(), (name, err)
            continue
        if command == "updates" and name == "plain-no-arch.pt":
            words = "no optimizer state"
        if command == "summary" and words.startswith("--"):  # a hint names only a flag the command has
            assert words not in err, err
            words = "fits digits-mlp" if name == "plain-no-arch.pt" else "error:"
        assert_clean_failure(code, err, words, out)
    assert not (root / "pwned").exists()


@pytest.mark.parametrize("command", ["spectrum", "err", "table", "updates"])
def test_training_facts_missing_zero_negative_in_the_checkpoint(bad_facts, command, tmp_path, capsys):
    for path, words in bad_facts:
        out = tmp_path / f"out-{path.stem}"
        code, _, err = run_cli(CHECKPOINT_COMMANDS[command](path, out), capsys)
        if command in ("spectrum", "updates"):  # neither needs η, λ, b, n: they must run as usual
            assert code == 0, err
            continue
        assert_clean_failure(code, err, words, out)


FLAG_CASES = [
    (["err", "{ckpt}", "--rho", "0"], "rho"), (["err", "{ckpt}", "--rho", "-1"], "rho"),
    (["err", "{ckpt}", "--tau", "0"], "tau"), (["err", "{ckpt}", "--tau", "1"], "tau"),
    (["err", "{ckpt}", "--tau", "1.5"], "tau"), (["err", "{ckpt}", "--lr", "0"], "--lr"),
    # each non-finite value is named by its own flag (they all used to blame --lr)
    (["err", "{ckpt}", "--rho", "inf"], "--rho"), (["err", "{ckpt}", "--tau", "nan"], "--tau"),
    (["err", "{ckpt}", "--sigma-floor", "nan"], "--sigma-floor"),
    (["err", "{ckpt}", "--lr", "-1e-3"], "--lr"), (["err", "{ckpt}", "--wd", "-1"], "--wd"),
    (["err", "{ckpt}", "--batch-size", "0"], "--batch-size"), (["err", "{ckpt}", "--n-train", "-5"], "--n-train"),
    (["err", "{ckpt}", "--probes", "0"], "--probes"), (["err", "{ckpt}", "--steps", "0"], "--steps"),
    (["err", "{ckpt}", "--steps", "100000"], "--steps"), (["err", "{ckpt}", "--sigma-floor", "-1"], "floor"),
    (["err", "{ckpt}", "--form", "sgd"], "--form"), (["err", "{ckpt}", "--optimizer", "sgd"], "--optimizer"), (["err", "{ckpt}", "--sweep", "rho"], "--sweep"),
    (["err", "{ckpt}", "--rtol", "2"], "--rtol"), (["err", "{ckpt}", "--memory", "lots"], "--memory"),
    (["err", "{ckpt}", "--theorem-probes", "1"], "--theorem-probes"),
    (["err", "{ckpt}", "--theorem-steps", "0"], "--theorem-steps"),
    (["spectrum", "{ckpt}", "--probes", "-3"], "--probes"), (["spectrum", "{ckpt}", "--steps", "-1"], "--steps"),
    (["spectrum", "{ckpt}", "--steps", "5000"], "--steps"), (["spectrum", "{ckpt}", "--top-k", "0"], "--top-k"),
    (["spectrum", "{ckpt}", "--top-k", "5000", "--no-cache"], "more than d"),  # d = 1,210
    (["spectrum", "{ckpt}", "--top-k", "301", "--no-cache"], "can certify"),  # a Lanczos run's 300-step cap
    (["spectrum", "{ckpt}", "--max-samples", "0"], "--max-samples"),
    (["spectrum", "{ckpt}", "--seed", "-1"], "--seed"),
    (["spectrum", "{ckpt}", "--seed", "99999999999999999999999"], "--seed"),  # was an overflow traceback
    (["err", "{ckpt}", "--subset-seed", "-3"], "--subset-seed"),
    (["train", "--seed", "-2", "--out", "{tmp}/o/t.pt"], "--seed"),
    (["spectrum", "{ckpt}", "--lanczos", "sideways"], "--lanczos"),
    (["spectrum", "{ckpt}", "--memory", "1KB"], "--memory"),
    (["spectrum", "{ckpt}", "--data", "imagefolder:/nonexistent/folder"], "--data"),
    (["spectrum", "{ckpt}", "--data", "cifar10:{tmp}/not-cifar"], "--data"),
    (["spectrum", "{ckpt}", "--data", "mnist"], "--data"),
    (["spectrum", "{ckpt}", "--arch", "no-such-net"], "--arch"),
    (["spectrum", "{ckpt}", "--json", "{tmp}/afile/x.json"], "afile"),
    (["spectrum", "{ckpt}", "--cache-dir", "{tmp}/afile"], "--cache-dir"),
    (["table", "{ckpt}", "--out", "{tmp}/afile/reports"], "afile"),
    (["table", "{ckpt}", "--format", "docx"], "--format"),
    (["table", "{tmp}/empty-dir"], "no checkpoint"),
    (["updates", "{ckpt}", "--plot", "{tmp}/afile/p.png"], "afile"),
    (["updates", "{ckpt}", "--plot", "{tmp}/u.doc"], "not an image format"),  # was a traceback after the work
    (["spectrum", "{ckpt}", "--plot", "{tmp}/p.txt"], "not an image format"),
    (["train", "--epochs", "0", "--out", "{tmp}/o/t.pt"], "--epochs"),
    (["train", "--lr", "-1", "--out", "{tmp}/o/t.pt"], "--lr"),
    (["train", "--batch-size", "0", "--out", "{tmp}/o/t.pt"], "--batch-size"),
    (["train", "--optimizer", "sgd", "--out", "{tmp}/o/t.pt"], "--optimizer"),
    (["train", "--data", "imagefolder:/nonexistent", "--out", "{tmp}/o/t.pt"], "--data"),
    (["train", "--data", "cifar10:{tmp}/cifar", "--epochs", "1", "--out", "{tmp}/o/t.pt"], "cannot take the inputs"),
    (["train", "--arch", "alexnet", "--out", "{tmp}/o/t.pt"], "--arch"),
    (["train", "--model", "alexnet", "--out", "{tmp}/o/t.pt"], "--arch"),
    (["train", "--model", "digits-cnn", "--arch", "digits-vit", "--out", "{tmp}/o/t.pt"], "--arch"),
    (["train", "--epochs", "1", "--out", "{tmp}/afile/t.pt"], "afile"),
    (["summary", "{tmp}/nothing-here"], "no such"),
    (["check", "--baseline", "{tmp}/nope.json"], "no such baseline"),
    (["check", "--baseline", "{tmp}/garbage.json"], "not readable JSON"),
    (["check", "--baseline", "{tmp}/version.json"], "format"),
    (["check", "--baseline", "{tmp}/shape.json"], "baseline"),
    (["check", "--baseline", "{tmp}/settings.json"], "settings"),
]


@pytest.fixture()
def flag_env(tmp_path, tiny_checkpoint):
    (tmp_path / "afile").write_text("a regular file, not a folder")
    (tmp_path / "not-cifar").mkdir()
    (tmp_path / "not-cifar" / "test_batch").write_bytes(b"nonsense")
    (tmp_path / "empty-dir").mkdir()
    write_cifar_batches(tmp_path / "cifar")  # 3x32x32 images: digits-mlp (8x8) cannot take them
    (tmp_path / "garbage.json").write_bytes(b"\x00\xffnot json")
    (tmp_path / "version.json").write_text(json.dumps({"format": "wdbound-baseline/99", "checkpoints": []}))
    (tmp_path / "shape.json").write_text(json.dumps({"format": "wdbound-baseline/1", "checkpoints": {"a": 1},
                                                     "settings": {}}))
    (tmp_path / "settings.json").write_text(json.dumps({
        "format": "wdbound-baseline/1", "settings": {"spectrum": {"probes": "many"}, "tau": 0.05,
                                                     "sigma_floor": 1e-6},
        "checkpoints": [{"path": str(tiny_checkpoint), "metrics": {}}]}))
    return tmp_path


@pytest.mark.parametrize("args, words", FLAG_CASES, ids=[" ".join(a[:1] + a[2:4]) for a, _ in FLAG_CASES])
def test_bad_flags_and_paths(args, words, flag_env, tiny_checkpoint, capsys):
    before = {p: p.stat().st_mtime_ns for p in flag_env.rglob("*")}
    argv = [a.replace("{ckpt}", str(tiny_checkpoint)).replace("{tmp}", str(flag_env)) for a in args]
    code, _, err = run_cli(argv, capsys)
    assert_clean_failure(code, err, words, None)
    after = {p: p.stat().st_mtime_ns for p in flag_env.rglob("*") if not p.name.startswith("wdbound-cache")}
    created = set(after) - set(before) - {p for p in after if "wdbound-cache" in str(p)}
    assert not created, created
    assert all(after[p] == before[p] for p in before if p in after)
