"""Real SIGINT / SIGTERM during long commands: exit 130 / 143, nothing half-written, finished work kept."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "checkpoints"


def start(args, tmp_path):
    env = {**os.environ, "WDBOUND_CACHE_DIR": str(tmp_path / "cache"), "WDBOUND_PROGRESS_INTERVAL": "0.2",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "wdbound", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc, marker: str, timeout: float = 300) -> list[str]:
    """Read stderr lines until one contains ``marker``."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {marker!r}: {''.join(seen)[-2000:]}")


BASELINE = Path(__file__).resolve().parents[1] / "reports" / "baseline.json"
LONG = {
    "spectrum": lambda out: ["spectrum", ZOO / "digits-vit-adamw-e40.pt", "--exact", "on", "--no-cache", "--json",
                             out / "spec.json"],
    "err": lambda out: ["err", ZOO / "digits-vit-adamw-e40.pt", "--exact", "on", "--json", out / "err.json"],
    "check": lambda out: ["check", "--baseline", BASELINE, "--junit", out / "check.xml"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command, sig, code", [("spectrum", signal.SIGINT, 130), ("spectrum", signal.SIGTERM, 143),
                                                ("err", signal.SIGTERM, 143), ("check", signal.SIGINT, 130)])
def test_signal_during_a_long_command_writes_nothing(tmp_path, command, sig, code, monkeypatch):
    monkeypatch.chdir(BASELINE.parents[1])  # the baseline names its checkpoints relative to the repository
    out = tmp_path / "out"
    proc = start(LONG[command](out), tmp_path)
    wait_for(proc, "[progress] HVPs")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and f"interrupted by signal {int(sig)}" in err
    assert not out.exists() or not list(out.rglob("*"))


@pytest.mark.slow
def test_sigterm_during_table_keeps_the_finished_rows(tmp_path):
    """The first checkpoint finishes (exact, small MLP); SIGTERM lands in the second (a dense ViT Hessian): exit
    143, the table is written with the finished row and marked interrupted, the finished spectrum is cached."""
    out = tmp_path / "reports"
    proc = start(["table", ZOO / "digits-mlp-adamw-e10.pt", ZOO / "digits-vit-adamw-e40.pt", "--out", out,
                  "--format", "md"], tmp_path)
    wait_for(proc, "checkpoints: 1/2")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert (out / "table1.json").exists(), err[-3000:]
    payload = json.loads((out / "table1.json").read_text())
    assert payload["interrupted"] is True and [c["checkpoint"] for c in payload["cells"]] == ["digits-mlp-adamw-e10.pt"]
    assert "INTERRUPTED after 1 of 2" in (out / "table1.md").read_text()
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert list((tmp_path / "cache").rglob("*.npz"))  # the finished checkpoint's spectrum stays cached
