"""The regression check (check.py): tolerance rules, baselines, run_check, JUnit; and `wdbound check` end to end."""

import json
import math

import pytest

from conftest import run_cli
from wdbound.check import (Baseline, CheckReport, Comparison, compare, junit_xml, metrics_of, run_check,
                           tolerance_for)
from wdbound.errors import WdboundError


def test_tolerance_is_the_largest_rule():
    rules = {"stderr_factor": 4.0, "rel": 1e-6}
    tol, reason = tolerance_for("trace", {"value": 100.0, "stderr": 0.5}, 0.25, rules, {})
    assert (tol, reason) == (pytest.approx(4 * math.sqrt(2) * 0.5), "stderr")  # the larger of the two stderrs
    tol, reason = tolerance_for("trace", {"value": 100.0, "stderr": 0.0}, 0.0, rules, {})
    assert (tol, reason) == (pytest.approx(1e-4), "rel")
    tol, reason = tolerance_for("trace", {"value": 100.0}, math.nan, rules, {"trace": {"abs": 3.0}})
    assert (tol, reason) == (3.0, "explicit abs")
    tol, reason = tolerance_for("trace", {"value": 100.0}, math.nan, rules, {"trace": {"rel": 0.1}})
    assert tol == pytest.approx(10.0) and reason == "explicit rel"


def test_compare_and_junit():
    entry = {"path": "a.pt", "metrics": {"trace": {"value": 10.0, "stderr": 0.1},
                                         "phi": {"value": 2.0, "stderr": 0.0}, "err_mean": {"value": 1.0}}}
    now = {"trace": {"value": 10.5, "stderr": 0.1}, "phi": {"value": 2.0, "stderr": 0.0}}
    results = compare(entry, now, {"stderr_factor": 4.0, "rel": 1e-6}, {})
    by_metric = {r.metric: r for r in results}
    assert by_metric["trace"].passed and by_metric["trace"].difference == pytest.approx(0.5)  # 0.5 <= 4*sqrt(2)*0.1
    assert by_metric["phi"].passed and not by_metric["err_mean"].passed  # missing now: fails
    assert Comparison("a", "m", math.nan, math.nan, 0.0, "rel").passed  # two NaNs agree
    xml = junit_xml(results, 1.5)
    assert 'tests="3" failures="1"' in xml and xml.count("<failure") == 1 and 'time="1.500"' in xml
    report = CheckReport(results, {}, [], 1.5, 1)
    assert [r.metric for r in report.failed] == ["err_mean"] and report.junit() == xml
    assert report.worst_relative_drift == pytest.approx(0.05) or math.isnan(report.worst_relative_drift)


def test_metrics_of_a_table_row():
    from wdbound.analysis import BoundFigures
    from wdbound.bounds import BoundInputs
    from wdbound.tables import TableRow

    figures = BoundFigures("adamw", "slq", 500.0, 8.0, 5.0, 0.08, None, 0.0, 3.0, 0.0, 0)
    inputs = BoundInputs(d=100, n=1000, b=16, eta=1e-3, lam=0.05, rho=0.1)
    row = TableRow("x.pt", "m", 1, "adamw", top_eigenvalue=7.0, top_residual=1e-9, trace=12.0, trace_stderr=0.5,
                   inputs=inputs, figures=figures)
    metrics = metrics_of(row)
    assert metrics["top_eigenvalue"] == {"value": 7.0, "stderr": 1e-9}
    assert metrics["err_mean"] == {"value": 5.0, "stderr": 0.08}
    # Phi = sqrt(8/n) sqrt(err + c0): d Phi / d err = 4 / (n Phi), times the stderr of err (the sum).
    assert metrics["phi"]["stderr"] == pytest.approx(4 / (1000 * 3.0) * 8.0)
    assert set(metrics_of(TableRow("y.pt", "m", 1, "adal")) ) == {"top_eigenvalue", "trace"}


def test_baseline_new_select_settings_and_errors(tiny_checkpoint, tmp_path):
    path = tmp_path / "b.json"
    with pytest.raises(WdboundError, match="no such baseline"):
        Baseline.load(path)
    with pytest.raises(WdboundError, match="name the checkpoints"):
        Baseline.open(path, update=True)
    base = Baseline.open(path, update=True, checkpoints=[tiny_checkpoint], probes=3, steps=10, max_samples=80)
    assert not base.exists and [e["path"] for e in base.entries] == [str(tiny_checkpoint)]
    settings, rho, tau, floor = base.settings(device="cpu")
    assert (settings.probes, settings.steps, settings.max_samples, settings.exact, settings.rtol) == (3, 10, 80, False, 0.0)
    assert (rho, tau, floor) == (None, 0.05, 1e-6)
    assert base.select() == base.entries
    base.write()
    loaded = Baseline.load(path)
    with pytest.raises(WdboundError, match="not in the baseline"):
        loaded.select([tmp_path / "other.pt"])
    path.write_text(json.dumps({**loaded.data, "settings": {"spectrum": {"probes": 0}, "tau": 0.05}}))
    with pytest.raises(WdboundError, match="unusable settings"):
        Baseline.load(path).settings()


@pytest.mark.slow
def test_run_check_records_then_reproduces_bit_for_bit(tiny_checkpoint, tmp_path):
    base = Baseline.new(tmp_path / "b.json", [tiny_checkpoint], probes=3, steps=10, max_samples=80)
    first = run_check(base, device="cpu")
    assert first.results == [] and first.checkpoints == 1  # nothing recorded yet: nothing to compare
    sha, metrics = first.recorded[str(tiny_checkpoint)]
    assert len(sha) == 64 and set(metrics) == {"err_mean", "phi", "top_eigenvalue", "trace"}
    recorded = base.updated(first)
    assert recorded.entries[0]["metrics"] == metrics and "torch" in recorded.data["updated_with"]
    assert base.entries[0]["metrics"] == {}  # updated() returns a copy
    again = run_check(recorded, device="cpu")
    assert len(again.results) == 4 and not again.failed and again.worst_relative_drift == 0
    assert again.changed == [] and again.changed_files == []


# ---------------------------------------------------------------- wdbound check (CLI)

def _baseline(tmp_path, capsys, ckpt):
    baseline = tmp_path / "baseline.json"
    code, out, err = run_cli(["check", "--update", "--baseline", baseline, ckpt, "--probes", "3", "--steps", "10",
                              "--max-samples", "80"], capsys)
    assert code == 0, err
    return baseline


def test_check_passes_untouched_and_fails_edited_baseline(tiny_checkpoint, tmp_path, capsys):
    baseline = _baseline(tmp_path, capsys, tiny_checkpoint)
    data = json.loads(baseline.read_text())
    assert data["format"] == "wdbound-baseline/1"
    assert set(data["checkpoints"][0]["metrics"]) == {"err_mean", "phi", "top_eigenvalue", "trace"}
    junit = tmp_path / "check.xml"
    code, out, err = run_cli(["check", "--baseline", baseline, "--junit", junit], capsys)
    assert code == 0, err
    assert "0 failed" in out and "largest relative drift 0" in out  # same seeds, same software: bit-identical
    assert 'failures="0"' in junit.read_text()
    # Move err_mean by 10 tolerances: exit 1, the metric named, JUnit failure.
    metric = data["checkpoints"][0]["metrics"]["err_mean"]
    metric["value"] += 10 * 4 * 2**0.5 * metric["stderr"]
    baseline.write_text(json.dumps(data))
    report = tmp_path / "check.json"
    code, out, err = run_cli(["check", "--baseline", baseline, "--junit", junit, "--json", report], capsys)
    assert code == 1 and "err_mean" in err and "FAIL" in out
    xml = junit.read_text()
    assert 'failures="1"' in xml and "<failure" in xml and "err_mean" in xml
    payload = json.loads(report.read_text())  # the printed table as JSON, with the settings behind it
    assert payload["passed"] is False and payload["settings"] == data["settings"]
    failed = [r for r in payload["results"] if not r["passed"]]
    assert [r["metric"] for r in failed] == ["err_mean"] and failed[0]["baseline"] == metric["value"]
    assert failed[0]["difference"] == pytest.approx(failed[0]["now"] - failed[0]["baseline"])
    # An explicit per-metric tolerance wider than the edit makes it pass again.
    data["tolerances"] = {"err_mean": {"abs": 100.0}}
    baseline.write_text(json.dumps(data))
    code, _, err = run_cli(["check", "--baseline", baseline], capsys)
    assert code == 0, err
    # --update rewrites it and reports the change.
    code, out, _ = run_cli(["check", "--baseline", baseline, "--update"], capsys)
    assert code == 0 and "1 metric values changed" in out
    code, _, _ = run_cli(["check", "--baseline", baseline], capsys)
    assert code == 0


@pytest.mark.parametrize("mutate, needle", [
    (lambda d, p: p.write_text("{not json"), "not readable JSON"),
    (lambda d, p: p.write_text(json.dumps({**d, "format": "wdbound-baseline/99"})), "unknown baseline format"),
    (lambda d, p: p.write_text(json.dumps({**d, "checkpoints": [{**d["checkpoints"][0], "path": "nope.pt"}]})),
     "missing"),
    (lambda d, p: p.write_text(json.dumps({**d, "checkpoints": [{"path": 3}]})), "malformed"),
    (lambda d, p: p.write_text("[]"), "not a wdbound baseline"),
])
def test_check_bad_baseline_exit_2(tiny_checkpoint, tmp_path, capsys, mutate, needle):
    baseline = _baseline(tmp_path, capsys, tiny_checkpoint)
    mutate(json.loads(baseline.read_text()), baseline)
    code, _, err = run_cli(["check", "--baseline", baseline], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_check_without_baseline_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["check", "--baseline", tmp_path / "none.json"], capsys)
    assert code == 2 and "--update" in err


@pytest.mark.slow
def test_check_table_passes_on_a_fresh_table_and_fails_on_a_doctored_one(tmp_path, tiny_checkpoint, capsys,
                                                                          monkeypatch):
    """`check --table`: a table1.json the code just made passes; a doctored err/d, another release's stamp or
    a changed checkpoint fails with exit 1 and says which cell (what keeps the committed reports/ true)."""
    monkeypatch.chdir(tiny_checkpoint.parent)
    baseline = tmp_path / "baseline.json"
    code, _, err = run_cli(["check", tiny_checkpoint.name, "--baseline", baseline, "--update", "--probes", "2",
                            "--steps", "8"], capsys)
    assert code == 0, err
    out = tmp_path / "reports"
    code, _, err = run_cli(["table", tiny_checkpoint.name, "--out", out, "--no-plots", "--no-cache",
                            "--format", "md"], capsys)
    assert code == 0, err
    table = out / "table1.json"
    payload = json.loads(table.read_text())
    assert payload["made_by"]["wdbound"] and payload["cells"][0]["method"] == "exact"
    assert "made by wdbound" in (out / "table1.md").read_text()
    args = ["check", "--baseline", baseline, "--table", table]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "err_mean" in stdout and "FAIL" not in stdout

    doctored = json.loads(table.read_text())
    doctored["cells"][0]["err_mean"] *= 1.001
    table.write_text(json.dumps(doctored))
    code, stdout, err = run_cli(args, capsys)
    assert code == 1 and "disagrees with this code" in err and "err_mean" in err

    doctored = json.loads(json.dumps(payload))
    doctored["made_by"]["wdbound"] = "0.0.1"
    table.write_text(json.dumps(doctored))
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "made by wdbound 0.0.1" in err

    doctored = json.loads(json.dumps(payload))
    doctored["cells"][0]["sha256"] = "0" * 64
    table.write_text(json.dumps(doctored))
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "sha256" in err


def test_table_cells_to_verify_prefers_one_per_model():
    from wdbound.check import table_cells_to_verify

    cells = [{"checkpoint": f"{m}-{i}.pt", "model": m, "method": "exact" if i else "slq"}
             for m in ("cnn", "mlp", "vit") for i in range(3)]
    chosen = table_cells_to_verify(cells, 4)
    assert [c["model"] for c in chosen[:3]] == ["cnn", "mlp", "vit"] and all(c["method"] == "exact" for c in chosen)
    assert len(chosen) == 4 and len({c["checkpoint"] for c in chosen}) == 4
    assert table_cells_to_verify(cells, 0) == []


def test_check_report_to_pandas_one_row_per_comparison():
    results = [Comparison("a.pt", "err_mean/adamw", 2.0, 2.0 + 1e-9, 1e-6, "rtol"),
               Comparison("a.pt", "top_eigenvalue", 1.0, 1.5, 1e-6, "rtol")]
    frame = CheckReport(results, {}, [], 1.0, 1).to_pandas()
    assert list(frame["passed"]) == [True, False]
    assert frame["difference"].tolist() == pytest.approx([1e-9, 0.5])
    assert not frame.groupby("checkpoint")["passed"].all()["a.pt"]
