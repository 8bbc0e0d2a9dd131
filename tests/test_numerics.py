"""Numerical faults are reported, never a crash, never silently wrong; the same seed gives the same bytes."""

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import wdbound
from wdbound import WdboundError
from conftest import run_cli


def digits(n=60):
    data = wdbound.load_dataset("digits", "test")
    return torch.stack([data[i][0] for i in range(n)]), torch.tensor([data[i][1] for i in range(n)])


def test_nan_on_a_later_batch_is_reported():
    """The first chunk is finite (checked when the operator is built); a NaN input in the third chunk makes
    the HVP NaN: every estimator stops with the one-line error instead of returning NaN figures."""
    x, y = digits()
    x[50, 0, 3, 3] = float("nan")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    H = wdbound.Hessian(model, (x, y), batch_size=20)
    for call in (lambda: H.top_eigenvalues(2), lambda: H.trace(4), lambda: H.density(2, 5)):
        with pytest.raises(WdboundError, match="not finite"):
            call()


class Constant(nn.Module):
    """Logits that do not depend on the parameters: gradient and Hessian exactly zero."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(30))

    def forward(self, x):
        return torch.zeros(x.shape[0], 10, dtype=x.dtype) + 0.0 * self.w.sum()


def test_all_zero_gradient_and_hessian():
    x, y = digits(30)
    H = wdbound.Hessian(Constant(), (x, y))
    assert float(H.operator.gradient().abs().max()) == 0.0
    top = H.top_eigenvalues(3)
    assert top.converged and np.all(top.values == 0)
    assert H.trace(4).estimate == 0.0
    assert np.all(H.diagonal(None).estimate == 0)
    density = H.density(2, 5)
    nodes, weights = density.slq.measure()
    assert np.all(nodes == 0) and weights.sum() == pytest.approx(1.0)
    out = wdbound.err(density, eta=1e-3, lam=1e-2, b=32, n=1000, rho=0.125)
    exact = wdbound.err(H, eta=1e-3, lam=1e-2, b=32, n=1000, rho=0.125, exact="on")
    for form in ("adamw", "l2-adam"):
        assert np.isfinite(out[form].err_mean) and np.isfinite(exact[form].err_mean)
        assert out[form].err_mean == pytest.approx(exact[form].err_mean, rel=1e-12)


def test_negative_and_zero_diagonal_entries_are_floored_and_counted(tiny_checkpoint, tmp_path, capsys):
    """Q = diag(H)^-1/2 needs H_ii > 0: zero entries (weights the data never moves) and negative ones are
    raised to the floor and counted in the JSON, not passed to a square root."""
    out = tmp_path / "e.json"
    code, _, err = run_cli(["err", tiny_checkpoint, "--max-samples", "100", "--json", out], capsys)
    assert code == 0, err
    payload = json.loads(out.read_text())
    exact_diag = payload["adamw"]["theorem_diag_floored"]
    assert exact_diag > 0 and np.isfinite(payload["adamw"]["theorem_term"])


TIMING = re.compile(r'"(wall_seconds|peak_memory_bytes|baseline|budget|planned_peak|activations_estimate|'
                    r'hvp_chunk|probe_block|budget_source|headroom)": [^,\n]+')


def strip_run_state(text: str) -> str:
    """Timing and machine-state fields (wall time, memory in use / free and what an auto budget leaves out, the
    plan sized from them)."""
    return TIMING.sub(lambda m: f'"{m.group(1)}": X', text)


@pytest.mark.slow
def test_same_seed_same_bytes(tiny_checkpoint, tmp_path, capsys):
    texts = {}
    for command in ("spectrum", "err"):
        for run in (1, 2):
            out = tmp_path / f"{command}.json"  # the same path: the JSON names its .diagonal.npy
            small = ["--theorem-probes", "2", "--theorem-steps", "8"] if command == "err" else []
            code, _, err = run_cli([command, tiny_checkpoint, "--probes", "3", "--steps", "12", "--max-samples", "80",
                                    "--exact", "off", "--no-cache", *small, "--json", out], capsys)
            assert code == 0, err
            texts[command, run] = strip_run_state(out.read_text())
        assert texts[command, 1] == texts[command, 2], command
    # and through the cache: a cached re-run gives the same figures
    a, b = tmp_path / "c1.json", tmp_path / "c2.json"
    for out in (a, b):
        code, _, err = run_cli(["err", tiny_checkpoint, "--probes", "3", "--steps", "12", "--max-samples", "80",
                                "--exact", "off", "--theorem-probes", "2", "--theorem-steps", "8", "--json", out],
                               capsys)
        assert code == 0, err
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    for form in ("adamw", "l2-adam"):
        assert first[form]["err_mean"] == second[form]["err_mean"]
        assert first[form]["err_mean_interval"] == second[form]["err_mean_interval"]
