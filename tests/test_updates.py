"""Update-magnitude histograms: bins, counts, the direction from saved state, the command."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from wdbound.updates import BINS, bin_index, bin_labels, histogram, optimizer_histograms, stats


def test_boundaries_land_in_documented_bins():
    values = torch.tensor([0.0, 2.0**-40, 2.0**-27, 2.0**-27 * 1.0001, 2.0**-26, 2.0**-26 * 1.0001, 0.5, 0.75,
                           1.0 - 1e-12, 1.0, 7.0, -2.0**-26], dtype=torch.float64)
    assert bin_index(values).tolist() == [0, 0, 0, 1, 1, 2, 26, 27, 27, 28, 28, 1]
    assert len(bin_labels()) == BINS == 29


def test_counts_sum_to_coordinates():
    gen = torch.Generator().manual_seed(0)
    values = torch.exp2(torch.empty(10_000).uniform_(-35, 5, generator=gen)) * torch.sign(torch.randn(10_000, generator=gen))
    counts = histogram(values)
    assert int(counts.sum()) == 10_000 and counts.shape == (BINS,)
    # Brute force: count each bin's interval directly.
    v = values.abs().double().numpy()
    assert counts[0] == np.sum(v <= 2.0**-27) and counts[-1] == np.sum(v >= 1)
    for e in range(-26, 0):
        assert counts[e + 27] == np.sum((v > 2.0 ** (e - 1)) & (v <= 2.0**e))
    assert counts[27] == np.sum((v > 0.5) & (v < 1))


def test_nan_direction_is_an_error():
    from wdbound.errors import WdboundError

    with pytest.raises(WdboundError):
        histogram(torch.tensor([1.0, float("nan")]))


def test_stats_iqr_in_log2_units():
    counts = np.zeros(BINS, dtype=int)
    counts[10] = 50  # (2^-18, 2^-17]
    counts[14] = 50  # (2^-14, 2^-13]
    s = stats(counts)
    assert s.count == 100 and s.iqr_log2 == pytest.approx(4.0) and s.frac_low == 0 and s.frac_high == 0


def test_one_step_hand_computed():
    # After one step with gradient g: m_hat = g, v_hat = g^2, so the direction is g / (|g| + eps).
    f64 = torch.float64
    state = {"w": {"exp_avg": torch.tensor([0.1 * 0.5, -0.1 * 2.0**-30], dtype=f64),
                   "exp_avg_sq": torch.tensor([0.001 * 0.25, 0.001 * 2.0**-60], dtype=f64), "step": 1}}
    counts = optimizer_histograms(state, (0.9, 0.999), 1e-8)["w"]
    # 0.5/(0.5+1e-8) lies in (2^-1, 1); 2^-30/(2^-30+1e-8) ~ 0.097 lies in (2^-4, 2^-3]
    assert counts[27] == 1 and counts[-3 + 27] == 1 and sum(counts) == 2


@pytest.mark.parametrize("name", ["adamw", "l2-adam", "adamw-d"])
def test_direction_from_state_is_the_update_applied(name):
    """The saved moments' direction is exactly what the optimizer applied at its last step:
    AdamW: x_t = (1 - eta*lam_t) x_{t-1} - eta d_t; l2-Adam: x_t = x_{t-1} - eta d_t."""
    from wdbound.optim import adam_direction, make_optimizer

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    opt = make_optimizer(name, [w], lr=0.01, wd=0.05, gamma=0.9 if name.endswith("-d") else None)
    for _ in range(5):
        opt.zero_grad()
        loss = (w**4).sum() + (w * torch.arange(7.0, dtype=torch.float64)).sum()
        loss.backward()
        before = w.detach().clone()
        opt.step()
    state = opt.state[w]
    group = opt.param_groups[0]
    d = adam_direction(state["exp_avg"], state["exp_avg_sq"], int(state["step"]), group["betas"], group["eps"])
    lam = opt.last_lam
    if name.startswith("adamw"):
        applied = ((1 - 0.01 * lam) * before - w.detach()) / 0.01
    else:
        applied = (before - w.detach()) / 0.01
    assert torch.allclose(d, applied, rtol=1e-9, atol=1e-12)


def test_updates_command_with_recorded_training(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code, _, err = run_cli(["train", "--arch", "digits-mlp", "--arch-kwarg", "hidden=8", "--epochs", "3",
                            "--record-updates", "--out", out], capsys)
    assert code == 0, err
    json_path, plot = tmp_path / "u.json", tmp_path / "u.png"
    code, stdout, err = run_cli(["updates", out, "--per-layer", "--json", json_path, "--plot", plot], capsys)
    assert code == 0, err
    payload = json.loads(json_path.read_text())
    entry = payload["checkpoints"][0]
    assert sum(entry["total"]) == 64 * 8 + 8 + 8 * 10 + 10
    assert [r["epoch"] for r in entry["over_training"]] == [1, 2, 3]
    assert all(sum(r["total"]) == sum(entry["total"]) for r in entry["over_training"])
    assert entry["over_training"][-1]["total"] == entry["total"]  # the last record is the saved state
    assert plot.stat().st_size > 1000 and "IQR" in stdout


def test_updates_plain_state_dict_is_one_line_error(tmp_path, capsys):
    from wdbound.models import build_model

    path = tmp_path / "plain.pt"
    torch.save(build_model("digits-mlp").state_dict(), path)
    code, _, err = run_cli(["updates", path], capsys)
    assert code == 2 and "no optimizer state" in err and len(err.strip().splitlines()) == 1


def test_update_recorder_on_torch_adamw_equals_a_hand_computation(tmp_path):
    import math

    from wdbound import UpdateRecorder
    from wdbound.updates import BINS, LOW_EXP

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    recorder = UpdateRecorder(opt, model=model, label="mine")
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    for epoch in (1, 2):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        recorder.record(epoch)
    entry = recorder.entry()
    b1, b2 = opt.param_groups[0]["betas"]
    eps = opt.param_groups[0]["eps"]
    for name, param in model.named_parameters():
        state = opt.state[param]
        t = int(state["step"])
        expected = [0] * BINS
        for m, v in zip(state["exp_avg"].reshape(-1).tolist(), state["exp_avg_sq"].reshape(-1).tolist()):
            u = abs((m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps))
            expected[0 if u <= 2.0**LOW_EXP else BINS - 1 if u >= 1 else math.ceil(math.log2(u)) - LOW_EXP] += 1
        assert entry.layers[name] == expected
    assert [r["epoch"] for r in entry.over_training] == [1, 2]
    assert sum(entry.total) == sum(p.numel() for p in model.parameters())
    recorder.plot(tmp_path / "u.png", per_layer=True)
    assert (tmp_path / "u.png").stat().st_size > 1000


def test_update_recorder_needs_adam_moments():
    from wdbound import UpdateRecorder, WdboundError

    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(WdboundError, match="no Adam moments"):
        UpdateRecorder(torch.optim.AdamW([p])).record(1)
    with pytest.raises(WdboundError, match="Adam-family"):
        sgd = torch.optim.SGD([p], lr=0.1)
        p.grad = torch.ones(2)
        sgd.step()
        UpdateRecorder(sgd).record(1)


def test_entry_to_pandas_counts_and_fractions_per_layer_and_bin():
    from wdbound.updates import histogram_entry

    layers = {"0.weight": [0] * (BINS - 1) + [4], "0.bias": [2] + [0] * (BINS - 2) + [2]}
    frame = histogram_entry("x.pt", layers, [], optimizer="adamw").to_pandas()
    assert len(frame) == 3 * BINS and set(frame["layer"]) == {"all", "0.weight", "0.bias"}
    totals = frame.groupby("layer")["count"].sum()
    assert totals["all"] == 8 and totals["0.weight"] == 4 and totals["0.bias"] == 4
    assert frame.groupby("layer")["fraction"].sum().tolist() == pytest.approx([1.0, 1.0, 1.0])
    top = frame[(frame.layer == "all") & (frame.bin == bin_labels()[-1])]
    assert top["count"].item() == 6 and top["log2_upper"].item() == 1
