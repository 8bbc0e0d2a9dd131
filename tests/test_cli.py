"""The commands end to end, as a user runs them."""

import json

import numpy as np
import pytest

from conftest import run_cli


def test_help_and_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("wdbound ")
    for command in ("train", "spectrum", "summary"):
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and "Usage" in out


@pytest.mark.slow
def test_train_is_deterministic_and_summary_lists_it(tmp_path, capsys):
    import torch

    paths = [tmp_path / f"run{i}.pt" for i in range(2)]
    for path in paths:
        code, out, err = run_cli(["train", "--model", "digits-mlp", "--optimizer", "l2-adam-d", "--epochs", "2",
                                  "--wd", "1e-3", "--wd-gamma", "0.99", "--arch-kwarg", "hidden=8",
                                  "--schedule", "cosine", "--lr-min", "1e-4", "--out", path], capsys)
        assert code == 0, err
    a, b = (torch.load(p, weights_only=True) for p in paths)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key])
    train = a["train"]
    assert train["lam"] == pytest.approx(1e-3 * 0.99 ** (train["steps"] - 1))
    assert train["wd_schedule"]["name"] == "exponential" and train["eta"] > 1e-4
    code, out, _ = run_cli(["summary", tmp_path], capsys)
    assert code == 0 and "run0.pt" in out and "l2-adam-d" in out


@pytest.mark.slow
def test_spectrum_exact_json_plot(tiny_checkpoint, tmp_path, capsys):
    out_json, plot = tmp_path / "spec.json", tmp_path / "spec.png"
    code, out, err = run_cli(["spectrum", tiny_checkpoint, "--probes", "4", "--steps", "30", "--exact",
                              "--max-samples", "100", "--json", out_json, "--plot", plot], capsys)
    assert code == 0, err
    payload = json.loads(out_json.read_text())
    exact = np.array(payload["exact"]["eigenvalues"])
    assert payload["d"] == len(exact) == 1210 and payload["n_eval"] == 100
    assert np.allclose(payload["top_eigenvalues"], exact[::-1][:5], rtol=1e-6)
    assert len(payload["slq"]["nodes"]) == 4 and all(len(n) == 30 for n in payload["slq"]["nodes"])
    diag = np.load(payload["diagonal"]["path"])
    assert diag.shape == (2, 1210)
    assert payload["diagonal"]["estimate"]["exact_zero"] == payload["exact"]["diagonal_zero"] > 0
    prov = payload["provenance"]
    assert prov["settings"]["probes"] == 4 and prov["hvp_count"] > 0 and prov["wall_seconds"] > 0
    assert len(prov["checkpoint_sha256"]) == 64
    assert plot.stat().st_size > 1000
    assert "exactly 0" in out


def test_spectrum_bad_flags_write_nothing(tiny_checkpoint, tmp_path, capsys):
    out_json = tmp_path / "x.json"
    for args, flag in ((["--probes", "1"], "--probes"), (["--dtype", "float16"], "--dtype"),
                       (["--data", "mnist"], "--data"), (["--device", "cuda:0"] , "--device"),
                       (["--hvp", "magic"], "--hvp")):
        code, _, err = run_cli(["spectrum", tiny_checkpoint, "--json", out_json, *args], capsys)
        if flag == "--device":
            import torch

            if torch.cuda.is_available():
                continue
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, (args, err)
    assert list(tmp_path.iterdir()) == []


def test_doctests():
    import doctest
    import importlib

    for name in ("wdbound.estimators.hutchinson", "wdbound.estimators.meyer2020hutch", "wdbound.estimators.lanczos",
                 "wdbound.optim"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.failed == 0 and result.attempted > 0, name


@pytest.mark.slow
def test_err_exact_matches_brute_force_and_json_schema(tiny_checkpoint, tmp_path, capsys):
    import math

    import torch

    from wdbound import load_checkpoint
    from wdbound.bounds import BoundInputs, corollary3_exact
    from wdbound.curvature import HessianOperator, dense_matrix
    from wdbound import load_dataset

    out_json = tmp_path / "err.json"
    code, out, err = run_cli(["err", tiny_checkpoint, "--probes", "4", "--steps", "20", "--max-samples", "100",
                              "--exact", "--json", out_json], capsys)
    assert code == 0, err
    payload = json.loads(out_json.read_text())
    for form in ("adamw", "l2-adam"):
        for key in ("err_sum", "err_mean", "err_sum_stderr", "err_mean_stderr", "phi", "theorem_term",
                    "theorem_phi", "mass_below_floor"):
            assert key in payload[form]
    inputs = payload["inputs"]
    assert inputs["rho"] == pytest.approx(0.125) and inputs["b"] == 64 and inputs["n"] == 1437
    # Independent brute force: dense Hessian by our operator's sibling path (double backward), numpy eigvalsh.
    ckpt = load_checkpoint(tiny_checkpoint, dtype=torch.float64)
    op = HessianOperator(ckpt.model, load_dataset("digits", "test"), max_samples=100, mode="double-backward")
    ev = np.linalg.eigvalsh(dense_matrix(op).numpy())
    p = BoundInputs(**{k: inputs[k] for k in ("d", "n", "b", "eta", "lam", "rho", "tau", "sigma_floor", "x_norm_sq")})
    for form in ("adamw", "l2-adam"):
        sigma = np.maximum(np.abs(ev), p.sigma_floor)
        root = np.sqrt(sigma)
        x = 2 * p.rho * p.b * (root + (p.lam if form == "adamw" else p.lam / root)) / p.eta
        assert payload[form]["exact"]["err_sum"] == pytest.approx(float(np.sum(np.log(x) + 1 / x)), rel=1e-8)
        assert payload[form]["exact"]["err_sum"] == pytest.approx(corollary3_exact(ev, form, p).err_sum, rel=1e-8)


@pytest.mark.parametrize("args, flag", [(["--lr", "0"], "--lr"), (["--wd", "-1"], "--wd"),
                                        (["--batch-size", "0"], "--batch-size"), (["--n-train", "-3"], "--n-train"),
                                        (["--rho", "0"], "--rho"), (["--optimizer", "sgd"], "--optimizer")])
def test_err_bad_inputs_exit_2_nothing_written(tiny_checkpoint, tmp_path, capsys, args, flag):
    out_json = tmp_path / "err.json"
    code, _, err = run_cli(["err", tiny_checkpoint, "--probes", "2", "--steps", "5", "--json", out_json, *args], capsys)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_json.exists()
