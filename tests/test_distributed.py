"""Two processes (torchrun, gloo) give the one-process results on digits-cnn, for `spectrum` and `err`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "digits-cnn-adamw-e40.pt"
SMALL = ["--probes", "4", "--steps", "20", "--seed", "3", "--device", "cpu"]


def run(args, tmp_path, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WDBOUND_CACHE_DIR": str(tmp_path / f"cache{processes}"),
           "WDBOUND_DIST_BACKEND": "gloo"}
    if processes == 1:
        command = [sys.executable, "-m", "wdbound", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-port", free_port(), "-m", "wdbound", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def close(a, b, rtol=1e-10):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b)) + 1e-300)


@pytest.mark.slow
def test_two_processes_equal_one_for_spectrum(tmp_path):
    results = {}
    for n in (1, 2):
        out = tmp_path / f"spec{n}.json"
        proc = run(["spectrum", CKPT, "--dtype", "float64", *SMALL, "--top-k", "3", "--json", out], tmp_path, n)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[n] = json.loads(out.read_text())
        # rank 0 alone prints: one "wrote" line, one result block
        assert proc.stdout.count("wrote ") == 1, proc.stdout
    one, two = results[1], results[2]
    assert two["provenance"]["processes"] == 2 and one["provenance"]["processes"] == 1
    assert close(one["top_eigenvalues"], two["top_eigenvalues"])
    assert close(one["trace"]["estimate"], two["trace"]["estimate"])
    # The single pass's union quadrature: nodes from nearly dependent directions of the probes' union amplify
    # the last-bit differences of the all-reduced sums (by up to 1 / RANK_TOL): 1e-6 x lambda_max.
    scale = abs(one["top_eigenvalues"][0])
    for a, b in zip(one["slq"]["nodes"], two["slq"]["nodes"]):
        assert len(a) == len(b) and np.max(np.abs(np.subtract(a, b))) <= 1e-6 * scale
    assert one["zero_rows"] == two["zero_rows"] and one["logit_shift"] == two["logit_shift"]
    d1 = np.load(tmp_path / "spec1.diagonal.npy")
    d2 = np.load(tmp_path / "spec2.diagonal.npy")
    assert np.max(np.abs(d1 - d2)) <= 1e-10 * np.abs(d1).max()


@pytest.mark.slow
def test_two_processes_equal_one_for_err(tmp_path):
    results = {}
    for n in (1, 2):
        out = tmp_path / f"err{n}.json"
        proc = run(["err", CKPT, *SMALL, "--theorem-probes", "4", "--theorem-steps", "20", "--exact", "off", "--rtol",
                    "0", "--diagonal", "hutchinson", "--theorem", "on", "--json", out], tmp_path, n)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[n] = json.loads(out.read_text())
    for form in ("adamw", "l2-adam"):
        a, b = results[1][form], results[2][form]
        for key in ("err_mean", "phi", "theorem_term"):
            assert close(a[key], b[key]), (form, key, a[key], b[key])
        assert close(a["err_mean_interval"], b["err_mean_interval"])
