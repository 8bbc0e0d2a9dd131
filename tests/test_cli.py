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
        code, out, err = run_cli(["train", "--arch", "digits-mlp", "--optimizer", "l2-adam-d", "--epochs", "2",
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
    # --json: the printed rows as numbers, and a file that does not load listed (exit 2, the JSON still written)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    listing = tmp_path / "listing" / "summary.json"
    listing.parent.mkdir()
    code, out, err = run_cli(["summary", tmp_path, "--json", listing], capsys)
    payload = json.loads(listing.read_text())
    assert code == 2 and "broken.pt" in err and [f["path"] for f in payload["failures"]] == [str(tmp_path / "broken.pt")]
    row = payload["checkpoints"][0]
    assert row["path"] == str(paths[0]) and row["optimizer"] == "l2-adam-d" and row["epochs"] == 2
    assert row["lam"] == train["lam"] and row["eta"] == train["eta"] and row["batch_size"] == train["batch_size"]
    assert row["params"] == sum(t.numel() for t in a["state_dict"].values()) and len(row["sha256"]) == 64


@pytest.mark.slow
def test_spectrum_exact_json_plot(tiny_checkpoint, tmp_path, capsys):
    out_json, plot = tmp_path / "spec.json", tmp_path / "spec.png"
    code, out, err = run_cli(["spectrum", tiny_checkpoint, "--dtype", "float64", "--probes", "4", "--steps", "30", "--exact", "on",
                              "--max-samples", "100", "--json", out_json, "--plot", plot], capsys)
    assert code == 0, err
    payload = json.loads(out_json.read_text())
    exact = np.array(payload["exact"]["eigenvalues"])
    assert payload["d"] == len(exact) == 1210 and payload["n_eval"] == 100
    # With the dense Hessian the top-k and the trace are read off it (no Lanczos run for them).
    assert np.allclose(payload["top_eigenvalues"], exact[::-1][:5], rtol=1e-12)
    assert payload["provenance"]["top_from"] == "dense Hessian" and payload["provenance"]["single_pass"] is None
    assert payload["trace"]["method"] == "exact" and abs(payload["trace"]["estimate"] - exact.sum()) < 1e-9
    assert len(payload["slq"]["nodes"]) == 4  # the SLQ density run stays, as the cross-check
    assert "(exact: eigenvalues of the dense Hessian)" in out and "(exact: the dense Hessian's diagonal" in out
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
    for args, flag in ((["--probes", "0"], "--probes"), (["--dtype", "float16"], "--dtype"),
                       (["--data", "mnist"], "--data"), (["--device", "cuda:0"] , "--device"),
                       (["--hvp", "magic"], "--hvp")):
        code, _, err = run_cli(["spectrum", tiny_checkpoint, "--json", out_json, *args], capsys)
        if flag == "--device":
            import torch

            if torch.cuda.is_available():
                continue
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, (args, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_err_exact_matches_brute_force_and_json_schema(tiny_checkpoint, tmp_path, capsys):
    import torch

    from wdbound import load_checkpoint
    from wdbound.bounds import BoundInputs, corollary3_exact
    from wdbound.curvature import HessianOperator, dense_matrix
    from wdbound import load_dataset

    out_json = tmp_path / "err.json"
    code, out, err = run_cli(["err", tiny_checkpoint, "--probes", "4", "--steps", "20", "--max-samples", "100",
                              "--exact", "on", "--json", out_json], capsys)
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
    op = HessianOperator(ckpt.model, load_dataset("digits", "test"), max_samples=100, sample_seed=0, mode="double-backward")
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
                                        (["--rho", "0"], "--rho"), (["--form", "sgd"], "--form")])
def test_err_bad_inputs_exit_2_nothing_written(tiny_checkpoint, tmp_path, capsys, args, flag):
    out_json = tmp_path / "err.json"
    code, _, err = run_cli(["err", tiny_checkpoint, "--probes", "2", "--steps", "5", "--json", out_json, *args], capsys)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_json.exists()


@pytest.mark.parametrize("mode", [["--exact", "auto"], ["--exact", "off", "--rtol", "0", "--theorem", "on"]])
def test_err_cache_reuse_and_sweeps(tiny_checkpoint, tmp_path, capsys, isolated_cache, mode):
    base = ["err", tiny_checkpoint, "--probes", "3", "--steps", "12", "--max-samples", "80", "--theorem-probes", "2",
            "--theorem-steps", "8", *mode]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    code, out, err = run_cli([*base, "--json", first], capsys)
    assert code == 0, err
    assert "HVPs this run: 0" not in out
    entries = sorted(isolated_cache.rglob("*.npz"))
    assert len(entries) == 3  # the spectrum and one Theorem run set per form
    code, out, err = run_cli([*base, "--json", second, "--sweep", "rho=0.05,0.5", "--sweep", "sigma-floor=1e-8,1e-6"],
                             capsys)
    assert code == 0, err
    assert "(cached)" in out and "sweep over rho" in out and "sweep over sigma-floor" in out
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    for form in ("adamw", "l2-adam"):
        assert a[form] == b[form]  # identical figures from the cache
    # A sweep row equals a separate run with that value (same spectrum, formulas only).
    rho_row = b["sweeps"]["rho"][1]
    assert rho_row["value"] == 0.5
    single = tmp_path / "c.json"
    code, _, err = run_cli([*base, "--rho", "0.5", "--json", single], capsys)
    c = json.loads(single.read_text())
    for form in ("adamw", "l2-adam"):
        assert rho_row[form]["err_sum"] == pytest.approx(c[form]["err_sum"], rel=1e-12)
        assert rho_row[form]["theorem_term"] == pytest.approx(c[form]["theorem_term"], rel=1e-12)
    floor_row = b["sweeps"]["sigma-floor"][0]
    single = tmp_path / "d.json"
    code, _, err = run_cli([*base, "--sigma-floor", "1e-8", "--json", single], capsys)
    d = json.loads(single.read_text())
    assert d["inputs"]["spectrum_cached"] is True  # the floor sweep cached its Theorem runs too
    for form in ("adamw", "l2-adam"):
        assert floor_row[form]["err_sum"] == pytest.approx(d[form]["err_sum"], rel=1e-12)
        assert floor_row[form]["theorem_term"] == pytest.approx(d[form]["theorem_term"], rel=1e-12)
    for row in b["sweeps"]["rho"] + b["sweeps"]["sigma-floor"]:  # every sweep row carries its intervals
        for form in ("adamw", "l2-adam"):
            low, high = row[form]["err_mean_interval"]
            assert low <= row[form]["err_mean"] <= high and row[form]["method"] == a[form]["method"]
            low, high = row[form]["theorem_term_interval"]
            assert low <= row[form]["theorem_term"] <= high
    # A lower floor never lowers the l2-Adam err (h(x_l2) grows as sigma -> 0).
    assert b["sweeps"]["sigma-floor"][0]["l2-adam"]["err_sum"] >= b["sweeps"]["sigma-floor"][1]["l2-adam"]["err_sum"]


def test_corrupt_cache_entry_is_recomputed(tiny_checkpoint, tmp_path, capsys, isolated_cache):
    base = ["spectrum", tiny_checkpoint, "--probes", "2", "--steps", "8", "--max-samples", "50"]
    code, _, err = run_cli([*base, "--json", tmp_path / "a.json"], capsys)
    assert code == 0, err
    (entry,) = isolated_cache.rglob("*.npz")
    entry.write_bytes(b"not a zip file")
    code, out, err = run_cli([*base, "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    assert "from the cache" not in out
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["top_eigenvalues"] == b["top_eigenvalues"] and a["trace"] == b["trace"]
    code, out, _ = run_cli([*base, "--json", tmp_path / "c.json"], capsys)
    assert "from the cache" in out


def test_no_cache_writes_nothing(tiny_checkpoint, tmp_path, capsys, isolated_cache):
    code, _, err = run_cli(["spectrum", tiny_checkpoint, "--probes", "2", "--steps", "5", "--max-samples", "40",
                            "--no-cache"], capsys)
    assert code == 0, err
    assert not isolated_cache.exists() or not list(isolated_cache.rglob("*.npz"))


def test_sweep_bad_spec_exit_2(tiny_checkpoint, capsys):
    for spec in ("gamma=1", "rho", "rho=a,b", "rho=-1"):
        code, _, err = run_cli(["err", tiny_checkpoint, "--probes", "2", "--steps", "4", "--sweep", spec], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, (spec, err)


@pytest.mark.slow
def test_err_intervals_cover_exact_on_a_shipped_checkpoint(tmp_path, capsys):
    """The shipped digits-mlp-adamw-e40 (d = 2,410): SLQ intervals at 8 probes x 40 steps (no adaptation) against
    the dense spectrum, for err/d and the Theorem term of both forms."""
    from pathlib import Path

    ckpt = Path(__file__).resolve().parent.parent / "checkpoints" / "digits-mlp-adamw-e40.pt"
    slq_json, exact_json = tmp_path / "slq.json", tmp_path / "exact.json"
    code, out, err = run_cli(["err", ckpt, "--exact", "off", "--rtol", "0", "--probes", "8", "--steps", "40",
                              "--theorem", "on", "--json", slq_json], capsys)
    assert code == 0, err
    assert "[" in out  # intervals printed beside the estimates
    code, out, err = run_cli(["err", ckpt, "--json", exact_json], capsys)  # --exact auto: d <= 10,000 -> exact
    assert code == 0, err
    slq, exact = json.loads(slq_json.read_text()), json.loads(exact_json.read_text())
    for form in ("adamw", "l2-adam"):
        assert slq[form]["method"] == "slq" and exact[form]["method"] == "exact"
        assert slq[form]["q_source"] == "exact diagonal"
        low, high = slq[form]["err_mean_interval"]
        assert low < slq[form]["err_mean"] < high
        assert low <= exact[form]["err_mean"] <= high
        low, high = slq[form]["theorem_term_interval"]
        assert low <= exact[form]["theorem_term"] <= high
        assert exact[form]["err_mean_interval"] == [exact[form]["err_mean"]] * 2
        assert exact[form]["near_zero"]["deflated_zero_rows"] == 192
        assert exact[form]["slq"]["err_mean_interval"][0] <= exact[form]["err_mean"] <= \
            exact[form]["slq"]["err_mean_interval"][1]


@pytest.mark.slow
def test_err_adaptive_rtol_meets_target_or_says_cap(tiny_checkpoint, tmp_path, capsys):
    base = ["err", tiny_checkpoint, "--exact", "off", "--probes", "4", "--steps", "10", "--max-samples", "100",
            "--optimizer", "adamw"]
    capped = tmp_path / "capped.json"
    code, out, err = run_cli([*base, "--rtol", "0.001", "--max-hvps", "100", "--json", capped], capsys)
    assert code == 0, err
    assert "HVP cap 100 reached" in out
    refinement = json.loads(capped.read_text())["refinement"]
    assert refinement["status"] == "cap" and refinement["hvps"] <= 100
    met = tmp_path / "met.json"
    code, out, err = run_cli([*base, "--rtol", "0.05", "--max-hvps", "20000", "--json", met], capsys)
    assert code == 0, err
    payload = json.loads(met.read_text())
    low, high = payload["adamw"]["err_mean_interval"]
    assert payload["refinement"]["status"] == "met" and (high - low) / 2 <= 0.05 * payload["adamw"]["err_mean"]
    assert payload["refinement"]["probes"] * payload["refinement"]["steps"] > 4 * 10


# ---------------------------------------------------------------- parameter blocks, subsets, progress off a terminal

def _tiny_dense(tiny_checkpoint, samples=100):
    import torch

    from wdbound import load_checkpoint, load_dataset
    from wdbound.curvature import HessianOperator, dense_matrix

    ckpt = load_checkpoint(tiny_checkpoint, dtype=torch.float64)
    op = HessianOperator(ckpt.model, load_dataset("digits", "test"), max_samples=samples, sample_seed=0)
    return op, dense_matrix(op).numpy()


@pytest.mark.slow
def test_params_and_per_layer_match_the_exact_blocks(tiny_checkpoint, tmp_path, capsys):
    """--params '3.*' is the Hessian block of the head (exact eigenvalues equal eigvalsh of that block);
    --per-layer gives each tensor's block, its top-1 the block's largest eigenvalue to within its residual."""
    op, H = _tiny_dense(tiny_checkpoint)
    offsets = np.cumsum([0, *op.numels])
    blocks = {name: (int(offsets[i]), int(offsets[i + 1])) for i, name in enumerate(op.names)}
    out = tmp_path / "head.json"
    code, _, err = run_cli(["spectrum", tiny_checkpoint, "--dtype", "float64", "--params", "3.*", "--exact", "on", "--max-samples", "100",
                            "--probes", "2", "--steps", "10", "--json", out], capsys)
    assert code == 0, err
    lo, hi = blocks["3.weight"][0], blocks["3.bias"][1]
    exact = np.linalg.eigvalsh(H[lo:hi, lo:hi])
    got = json.loads(out.read_text())
    assert got["d"] == hi - lo
    assert np.allclose(got["exact"]["eigenvalues"], exact, atol=1e-10 * abs(exact).max())
    out = tmp_path / "layers.json"
    code, stdout, err = run_cli(["spectrum", tiny_checkpoint, "--dtype", "float64", "--per-layer", "--max-samples", "100", "--probes", "16",
                                 "--steps", "20", "--top-k", "1", "--json", out], capsys)
    assert code == 0, err
    layers = json.loads(out.read_text())["layers"]
    assert [layer["name"] for layer in layers] == op.names
    for layer in layers:
        lo, hi = blocks[layer["name"]]
        block = np.linalg.eigvalsh(H[lo:hi, lo:hi])
        assert layer["d"] == hi - lo
        # a Ritz value is within its residual norm of an eigenvalue (Bauer-Fike for symmetric H); the top one
        # lies below lambda_max, so within it of lambda_max; 16 probes x 20 steps leave it small on these blocks
        assert 0 <= block[-1] - layer["top_eigenvalue"] <= layer["top_residual"] + 1e-12 * abs(block[-1])
        assert layer["top_residual"] <= 1e-3 * abs(block[-1])
        # Hutchinson on the block: within 4 of its exact standard error, sqrt(2 sum_{i!=j} H_ij^2 / k)
        sub = H[lo:hi, lo:hi]
        stderr = np.sqrt(2 * (np.sum(sub**2) - np.sum(np.diag(sub) ** 2)) / 16)
        assert abs(layer["trace"] - block.sum()) <= 4 * stderr + 1e-9 * abs(block).sum()
    assert "1.weight" in stdout and "per-layer" in stdout


def test_params_that_match_nothing(tiny_checkpoint, capsys):
    code, _, err = run_cli(["spectrum", tiny_checkpoint, "--params", "nope.*", "--probes", "2", "--steps", "4"], capsys)
    assert code == 2 and "--params" in err and len(err.strip().splitlines()) == 1


def test_max_samples_draws_a_recorded_seeded_subset(tiny_checkpoint, tmp_path, capsys):
    from wdbound.data import evaluation_subset

    runs = {}
    for seed, subset_seed in ((0, 0), (1, 0), (0, 1)):
        out = tmp_path / f"s{seed}{subset_seed}.json"
        code, _, err = run_cli(["spectrum", tiny_checkpoint, "--max-samples", "50", "--seed", str(seed),
                                "--subset-seed", str(subset_seed), "--probes", "2", "--steps", "4", "--top-k", "1",
                                "--json", out], capsys)
        assert code == 0, err
        runs[seed, subset_seed] = json.loads(out.read_text())["provenance"]["eval_subset"]
    assert runs[0, 0] == runs[1, 0]  # the probe seed does not move the subset
    runs = {0: runs[0, 0], 1: runs[0, 1]}
    assert runs[0]["count"] == 50 and runs[0]["of"] == 360 and runs[1]["seed"] == 1
    assert runs[0]["first_indices"] == evaluation_subset(360, 50, 0)[:10].tolist()
    assert runs[0]["indices_sha256"] != runs[1]["indices_sha256"]
    assert evaluation_subset(360, 50, 0).tolist() != list(range(50))  # not the first N


def test_progress_lines_when_stderr_is_not_a_terminal(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("WDBOUND_PROGRESS_INTERVAL", "0")
    code, _, err = run_cli(["spectrum", tiny_checkpoint, "--probes", "2", "--steps", "6", "--top-k", "1",
                            "--no-cache"], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("[progress] HVPs")]
    assert lines and "elapsed 0:00:" in lines[-1]
    assert any("ETA" in line for line in lines)
    assert err.splitlines()[0].startswith("memory plan")  # the plan comes before the first HVP's line


def test_log_progress_throttles():
    from wdbound.cli import LogProgress

    progress = LogProgress(interval=3600)
    task = progress.add_task("HVPs x", total=10)
    for _ in range(10):
        progress.advance(task)
    assert progress.tasks[task]["completed"] == 10 and progress.tasks[task]["last"] == progress.tasks[task]["start"]


def test_err_on_a_parameter_block(tiny_checkpoint, tmp_path, capsys):
    """`err --params`: the bound of that Hessian block, with d and ||x||^2 of the block."""
    import torch

    from wdbound import load_checkpoint

    out = tmp_path / "e.json"
    code, _, err = run_cli(["err", tiny_checkpoint, "--params", "3.*", "--max-samples", "100", "--json", out], capsys)
    assert code == 0, err
    payload = json.loads(out.read_text())
    model = load_checkpoint(tiny_checkpoint).model
    head = torch.cat([model[3].weight.reshape(-1), model[3].bias]).double()
    assert payload["inputs"]["d"] == head.numel() == 170
    assert payload["inputs"]["x_norm_sq"] == pytest.approx(float(head.square().sum()), rel=1e-6)
    assert payload["adamw"]["method"] == "exact" and np.isfinite(payload["adamw"]["err_mean"])


def test_err_optimizer_is_the_card_spelling_and_form_its_old_one(tiny_checkpoint, tmp_path, capsys):
    """err --optimizer NAME takes any training rule (its bound form) with no warning; --form, the old spelling,
    gives the same numbers and says so; train --model (now --arch) likewise."""
    common = ["err", tiny_checkpoint, "--probes", "2", "--steps", "5", "--exact", "on", "--no-cache"]
    outs = {}
    for name, flags in {"adamw": ["--optimizer", "adamw"], "adamw-d": ["--optimizer", "adamw-d"],
                        "adams": ["--optimizer", "adams"], "old": ["--form", "adamw"]}.items():
        code, _, err = run_cli([*common, *flags, "--json", tmp_path / f"{name}.json"], capsys)
        assert code == 0, err
        assert ("note: --form is now spelled --optimizer adamw" in err) == (name == "old")
        assert "warning" not in err and "deprecated" not in err
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for name, payload in outs.items():
        assert "l2-adam" not in payload
        assert payload["adamw"]["err_mean"] == pytest.approx(outs["adamw"]["adamw"]["err_mean"], rel=1e-13)
    code, out, _ = run_cli([*common, "--optimizer", "adal", "--json", tmp_path / "adal.json"], capsys)
    payload = json.loads((tmp_path / "adal.json").read_text())
    assert code == 0 and "adamw" not in payload and np.isfinite(payload["l2-adam"]["err_mean"])
    assert "counterfactual" in out and "l2-Adam (Thm 7) shown here" in out
    code, _, err = run_cli([*common, "--optimizer", "sgd"], capsys)
    assert code == 2 and "unknown optimizer 'sgd'" in err and "--optimizer" in err and "--form" not in err
    code, _, err = run_cli(["train", "--model", "digits-mlp", "--arch-kwarg", "hidden=4", "--epochs", "1",
                            "--out", tmp_path / "t.pt"], capsys)
    assert code == 0 and "warning: --model is deprecated here; use --arch digits-mlp" in err


def test_err_without_a_checkpoint_takes_the_last_spectrum_run(tiny_checkpoint, tmp_path, capsys, isolated_cache):
    """The card's second command: no checkpoint, the most recent `spectrum` run's checkpoint and evaluation
    options (a flag given to err wins), said on stderr; nothing recorded is one line naming the command."""
    code, _, err = run_cli(["err", "--optimizer", "adamw"], capsys)
    assert code == 2 and err.count("\n") == 1 and "run `wdbound spectrum CKPT` first" in err
    code, _, err = run_cli(["spectrum", tiny_checkpoint, "--max-samples", "90", "--subset-seed", "3"], capsys)
    assert code == 0, err
    out = tmp_path / "err.json"
    code, text, err = run_cli(["err", "--optimizer", "adamw", "--json", out], capsys)
    assert code == 0, err
    assert f"checkpoint {tiny_checkpoint}" in err and "(its --max-samples, --subset-seed)" in err
    assert "warning" not in err and "AdamW (Thm 6) is its own bound form" in text
    settings = json.loads(out.read_text())["inputs"]["spectrum"]["settings"]
    assert settings["max_samples"] == 90 and settings["subset_seed"] == 3
    code, _, err = run_cli(["err", "--optimizer", "l2-adam", "--max-samples", "80", "--json", out], capsys)
    assert code == 0 and "(its --subset-seed)" in err
    assert json.loads(out.read_text())["inputs"]["spectrum"]["settings"]["max_samples"] == 80


def test_your_own_model_first_try(tmp_path, capsys):
    """A plain torchvision-style ResNet-18 state_dict: without --arch the error names the architecture it fits;
    with --arch and no facts, every missing fact and flag in one line; with the facts and no --data, one line
    asking for the data (never the 8x8 digits)."""
    import torch

    from wdbound.models import build_model

    path = tmp_path / "r18.pt"
    torch.save(build_model("resnet18").state_dict(), path)
    code, _, err = run_cli(["err", path], capsys)
    assert code == 2 and "plain state_dict without an architecture; it fits resnet18 (pass --arch)" in err
    code, _, err = run_cli(["err", path, "--arch", "resnet18"], capsys)
    assert code == 2 and err.count("\n") == 1
    for fact, flag in (("eta", "--lr"), ("lam", "--wd"), ("batch_size", "--batch-size"), ("n_train", "--n-train")):
        assert fact in err and flag in err
    code, _, err = run_cli(["err", path, "--arch", "resnet18", "--lr", "1e-3", "--wd", "5e-2", "--batch-size",
                            "128", "--n-train", "50000"], capsys)
    assert code == 2 and "is not a digits architecture" in err and "(pass --data)" in err
    code, _, err = run_cli(["summary", path], capsys)
    assert code == 2 and "it fits resnet18" in err and "--arch" not in err



def test_err_at_its_defaults_spends_on_err_d_and_says_what_the_theorem_would_cost(tiny_checkpoint, tmp_path, capsys):
    """Without the dense spectrum, `err` computes err/d (and what it prints) only: the Theorem 6/7 terms are
    `--theorem on`, whose extra HVPs the output states; that count is what --theorem on then spends."""
    base = ["err", tiny_checkpoint, "--exact", "off", "--max-samples", "100", "--no-cache"]
    off, on = tmp_path / "off.json", tmp_path / "on.json"
    code, out, err = run_cli([*base, "--json", off], capsys)
    assert code == 0, err
    payload = json.loads(off.read_text())
    assert payload["theorem"]["computed"] is False and payload["adamw"].get("theorem_term") is None
    extra = payload["theorem"]["extra_hvps"]
    assert f"--theorem on adds at most {extra:,} HVPs" in out and "not computed" in out
    spent_off = payload["inputs"]["spectrum"]["hvp_count"]
    code, out, err = run_cli([*base, "--theorem", "on", "--json", on], capsys)
    assert code == 0, err
    with_theorem = json.loads(on.read_text())
    assert with_theorem["theorem"]["computed"] is True and with_theorem["adamw"]["theorem_term"] > 0
    for form in ("adamw", "l2-adam"):  # err/d does not depend on the Theorem runs
        assert with_theorem[form]["err_mean"] == pytest.approx(payload[form]["err_mean"], rel=1e-12)
    assert "HVPs this run" in out
    spent_on = int(out.split("HVPs this run: ")[1].split()[0])
    assert spent_off < spent_on <= spent_off + extra
