"""A torchvision ResNet-18 state_dict end to end within a memory budget (the issue's new-user run)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch


@pytest.mark.slow
def test_resnet18_plain_state_dict_end_to_end_within_budget(tmp_path):
    """Plain torchvision resnet18 (ImageNet stem, 2 classes: both inferred from the shapes), an ImageFolder of
    four random 32x32 images read by a DataLoader worker, float32 HVPs, a 4 GiB budget: the plan picks the
    low-memory paths, the run finishes, and the measured peak of the fresh process stays inside the budget."""
    from PIL import Image
    from torchvision.models import resnet18

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "data" / "test" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "data" / "test" / label / f"{i}.png")
    torch.manual_seed(0)
    torch.save(resnet18(num_classes=2).state_dict(), tmp_path / "r18.pt")
    out = tmp_path / "r18.json"
    env = {**os.environ, "WDBOUND_CACHE_DIR": str(tmp_path / "cache"), "WDBOUND_PROGRESS_INTERVAL": "5"}
    proc = subprocess.run([sys.executable, "-m", "wdbound", "spectrum", tmp_path / "r18.pt", "--arch", "resnet18",
                           "--data", f"imagefolder:{tmp_path / 'data'}", "--dtype", "float32", "--memory", "4GiB",
                           "--probes", "2", "--steps", "3", "--top-k", "1", "--workers", "1", "--device", "cpu",
                           "--trace-probes", "2", "--trace-rtol", "0",
                           "--json", out], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.startswith("memory plan (4.00 GiB budget, --memory)")
    result = json.loads(out.read_text())
    prov = result["provenance"]
    assert result["d"] == 11_177_538 and result["n_eval"] == 4
    assert prov["arch_kwargs_inferred"] == {"num_classes": 2, "cifar_stem": False}
    assert prov["memory_plan"]["lanczos_mode"] == "low-memory" and prov["lanczos"] == "local"
    assert prov["memory_plan"]["restart"] == 20
    assert prov["memory_plan"]["planned_peak"] <= 4 * 2**30
    assert 0 < prov["peak_memory_bytes"] <= 4 * 2**30, prov["peak_memory_bytes"]
    assert prov["precision"] == {"hvp": "float32", "lanczos_vectors": "float64", "recurrence_and_quadrature": "float64",
                                 "tf32_matmul": None, "tf32_cudnn": None}
    assert result["top"]["converged"] and result["top_eigenvalues"][0] > 0
    assert np.isfinite(result["trace"]["estimate"])
