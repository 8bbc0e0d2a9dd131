"""examples/quickstart.ipynb runs from top to bottom and computes what it says (the notebook's code cells are
executed in order in one namespace, in a temporary folder)."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(code) >= 4
    namespace: dict = {}
    for i, cell in enumerate(code):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[{i}]", "exec"), namespace)  # noqa: S102
    exact, slq = namespace["exact_err"], namespace["slq_err"]
    for form in ("adamw", "l2-adam"):
        low, high = slq[form].err_mean_interval.low, slq[form].err_mean_interval.high
        assert exact[form].method == "exact" and low <= exact[form].err_mean <= high  # the interval covers
    assert namespace["fig"] is not None and (tmp_path / "updates.png").read_bytes()[:4] == b"\x89PNG"
    assert namespace["top"].converged
    summary, small = namespace["summary"], namespace["small"]
    assert summary.loc[summary.quantity == "lambda_1", "value"].item() == pytest.approx(namespace["top"].values[0], rel=1e-3)
    assert set(small.index) >= {"all"} and ((small >= 0) & (small <= 1)).all()
