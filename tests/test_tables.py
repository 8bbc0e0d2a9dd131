"""Table I layout, formats and the end-to-end command."""

import json

import pytest

from conftest import run_cli
from wdbound.analysis import BoundFigures
from wdbound.estimators.quadrature_interval import Interval
from wdbound.tables import (DASH, CSV_FIELDS, TableRow, family_variant, findings, grid, latex, layout, long_grid,
                           markdown, model_label, resolve_layout, summary_counts, to_csv)


def _figures(err, interval, method="slq", se=0.01):
    return BoundFigures("adamw", method, 100 * err, 100 * se, err, se, Interval(err, *interval), 0.02, 1.0, 0.0, 0)


def _row(model, epochs, optimizer, err, acc, se=0.01, interval=None, method="slq"):
    """A table row whose err/d interval is err +/- 4 se unless given."""
    family, variant = family_variant(optimizer)
    interval = interval or (err - 4 * se, err + 4 * se)
    return TableRow(f"{model}-{optimizer}-e{epochs}.pt", model, epochs, optimizer, family, variant, family,
                    test_acc=acc, figures=_figures(err, interval, method, se))


ROWS = [_row("net", 10, "adamw", 3.40, 0.70), _row("net", 10, "adamw-d", 3.38, 0.71),
        _row("net", 10, "l2-adam", 3.80, 0.69), _row("net", 10, "l2-adam-d", 3.30, 0.72),
        _row("net", 40, "adamw", 3.2, 0.8),  # partners missing
        _row("net", 40, "adamprox", 3.1, 0.8)]  # outside Table I


def test_family_variant_and_label():
    assert family_variant("adamw-d") == ("adamw", "decaying")
    assert family_variant("l2-adam") == ("l2-adam", "constant")
    assert family_variant("adamprox") == (None, None)
    assert model_label("digits-mlp", {"num_classes": 10}) == "digits-mlp"
    assert model_label("digits-mlp", {"num_classes": 10, "depth": 8}) == "digits-mlp(depth=8)"


def test_grid_cells_missing_partners_and_outside():
    lay = layout(ROWS)
    assert lay.groups == [("net", 10), ("net", 40)]
    assert [r.optimizer for r in lay.outside] == ["adamprox"]
    header, (err_row, acc_row) = grid(lay)
    assert header[1] == "net, 10 ep: AdamW / AdamW-D" and header[2] == "net, 10 ep: l2-Adam / l2-Adam-D"
    assert err_row[1:] == ["3.400 / 3.380", "3.800 / 3.300", f"3.200 / {DASH}", f"{DASH} / {DASH}"]
    assert acc_row[1:3] == ["70.0 / 71.0", "69.0 / 72.0"]


def test_duplicate_cell_kept_out_of_table():
    lay = layout(ROWS[:4] + [_row("net", 10, "adamw", 9.9, 0.1)])
    assert len(lay.duplicates) == 1 and lay.cells[("net", 10, "adamw", "constant")].err_mean == 3.40


def test_findings():
    found = {(f.epochs, f.variant): f for f in findings(layout(ROWS))}
    const, dec = found[(10, "constant")], found[(10, "decaying")]
    assert const.err_holds is True and const.acc_holds is True and const.err_resolved is True
    # The rows' intervals are +/- 4 stderr: [3.36, 3.44] and [3.76, 3.84] are disjoint.
    assert const.err_gap == pytest.approx(0.40) and const.adamw.err_interval == pytest.approx((3.36, 3.44))
    assert dec.err_holds is False and dec.acc_holds is False
    assert found[(40, "constant")].err_holds is None and not found[(40, "constant")].paired
    entry = const.to_json()
    assert entry["err_adamw_interval"] == pytest.approx([3.36, 3.44]) and entry["err_gap"] == pytest.approx(0.40)
    assert set(entry) == {"model", "epochs", "variant", "err_adamw", "err_l2", "err_gap", "err_adamw_interval",
                          "err_l2_interval", "exact", "err_holds", "err_resolved", "acc_adamw", "acc_l2",
                          "acc_holds"}
    assert found[(40, "constant")].to_json() == {"model": "net", "epochs": 40, "variant": "constant",
                                                 "err_holds": None, "acc_holds": None}
    json.dumps([f.to_json() for f in found.values()])


def test_findings_resolved_only_when_intervals_disjoint():
    a = _row("net", 10, "adamw", 3.40, 0.70, interval=(3.1, 3.7))  # overlap: gap positive, not resolved
    l2 = _row("net", 10, "l2-adam", 3.80, 0.69, interval=(3.6, 4.0))
    (f,) = [x for x in findings(layout([a, l2])) if x.variant == "constant"]
    assert f.err_holds is True and f.err_resolved is False and f.exact is False
    a = _row("net", 10, "adamw", 3.40, 0.70, interval=(3.1, 3.59))
    (f,) = [x for x in findings(layout([a, l2])) if x.variant == "constant"]
    assert f.err_resolved is True
    a = _row("net", 10, "adamw", 3.40, 0.70, interval=(3.4, 3.4), method="exact")
    l2 = _row("net", 10, "l2-adam", 3.80, 0.69, interval=(3.8, 3.8), method="exact")
    found = findings(layout([a, l2]))
    assert found[0].exact is True and "1 of 1 are resolved (1 from exact spectra)" in summary_counts(found)


def test_findings_without_accuracy():
    """A checkpoint whose accuracy is unknown (labels that are not class indices) still gets its err/d
    comparison; the accuracy verdict is None and every format says so instead of failing."""
    a = _row("net", 10, "adamw", 3.40, None)
    l2 = _row("net", 10, "l2-adam", 3.80, 0.69)
    lay = layout([a, l2])
    found = findings(lay)
    assert found[0].err_holds is True and found[0].acc_holds is None
    assert "Accuracy AdamW >= l2-Adam holds in 0 of 0." in summary_counts(found)
    md = markdown(lay, found, "s", [], layout_name="long")
    assert "acc not known for both" in md and f"3.400 [3.360, 3.440]; {DASH}" in md
    assert "3.400 [3.360, 3.440]" in markdown(lay, found, "s", [], layout_name="paper")


def test_long_layout():
    rows = list(ROWS[:4])
    rows[0] = _row("net", 10, "adamw", 3.40, 0.70, interval=(3.4, 3.4), method="exact")
    rows[2] = _row("net", 10, "l2-adam", 3.80, 0.69, interval=(3.7, 3.9))
    lay = layout(rows)
    header, body = long_grid(lay)
    assert header == ["model, epochs", "AdamW", "AdamW-D", "l2-Adam", "l2-Adam-D"]
    assert body[0][0] == "net, 10 ep" and body[0][1] == "3.400 (exact); 70.0%"
    assert body[0][3] == "3.800 [3.700, 3.900]; 69.0%"
    assert resolve_layout("auto", lay) == "paper" and resolve_layout("long", lay) == "long"
    many = layout([_row(f"m{i}", 10, "adamw", 3.0, 0.5) for i in range(4)])
    assert resolve_layout("auto", many) == "long"
    assert "| model, epochs |" in markdown(lay, findings(lay), "s", [], layout_name="long")


def test_markdown_latex_csv():
    lay = layout(ROWS)
    md = markdown(lay, findings(lay), "Settings: test", ["bad.pt: corrupt"])
    assert "| err in bound (err/d) | 3.400 / 3.380 | 3.800 / 3.300 |" in md
    assert "The paper's Table I" in md and "3.43 / 3.40" in md and "3.85 / 3.82" in md
    assert "does NOT hold" in md and "bad.pt: corrupt" in md and "adamprox" in md
    assert "## Every optimizer" in md and "| net, 40 ep | adamprox | — | 3.100 [3.060, 3.140] | 80.0 | — |" in md
    tex = latex(lay)
    assert tex.count(r"\toprule") == 1 and r"\multicolumn{2}{c}{net, 10 ep}" in tex
    assert "3.800 / 3.300" in tex and "---" in tex  # the dash of a missing partner
    lines = to_csv(ROWS).splitlines()
    assert lines[0].split(",") == CSV_FIELDS + ["wdbound_version", "commit"] and len(lines) == 1 + len(ROWS)


@pytest.mark.slow
def test_table_end_to_end(tiny_checkpoint, tmp_path, capsys):
    import shutil

    import pandas as pd

    from wdbound.checkpoints import save_checkpoint
    from wdbound.train import TrainConfig, train

    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "tiny-adamw.pt")
    model, contents = train(TrainConfig(model="digits-mlp", optimizer="l2-adam", epochs=3, lr=3e-3, wd=1e-3,
                                        arch_kwargs={"hidden": 16}, seed=0))
    save_checkpoint(folder / "tiny-l2-adam.pt", model, **contents)
    (folder / "broken.pt").write_bytes(b"garbage")
    out = tmp_path / "reports"
    code, stdout, err = run_cli(["table", folder, "--out", out, "--probes", "3", "--steps", "15",
                                 "--max-samples", "100"], capsys)
    assert code == 2  # one checkpoint failed; the rest completed
    assert "broken.pt" in err and len([l for l in err.splitlines() if l.startswith("error:")]) == 1
    for name in ("table1.md", "table1.csv", "table1.tex", "table1.json", "spectra-digits-mlp-hidden16.png",
                 "density/tiny-adamw.png", "density/tiny-l2-adam.png"):
        assert (out / name).is_file(), name
    payload = json.loads((out / "table1.json").read_text())
    frame = pd.read_csv(out / "table1.csv")
    assert len(frame) == 2 == len(payload["cells"])
    for cell in payload["cells"]:
        line = frame[frame.checkpoint == cell["checkpoint"]].iloc[0]
        for key in ("err_mean", "err_mean_stderr", "err_sum", "phi", "test_acc", "trace", "top_eigenvalue", "eta"):
            assert line[key] == pytest.approx(cell[key], rel=1e-12), key
    forms = {c["optimizer"]: c["form"] for c in payload["cells"]}
    assert forms == {"adamw": "adamw", "l2-adam": "l2-adam"}
    assert "broken.pt" in payload["failures"][0]
    md = (out / "table1.md").read_text()
    assert "digits-mlp(hidden=16), 3 ep: AdamW / AdamW-D" in md and f"/ {DASH}" in md
    # A second run reuses every spectrum from the cache.
    code, stdout, _ = run_cli(["table", folder / "tiny-adamw.pt", folder / "tiny-l2-adam.pt", "--out", out,
                               "--probes", "3", "--steps", "15", "--max-samples", "100", "--format", "md"], capsys)
    assert code == 0
    assert all(c["cached"] for c in json.loads((out / "table1.json").read_text())["cells"])
    code, _, err = run_cli(["table", folder / "tiny-adamw.pt", "--out", out, "--format", "pdf"], capsys)
    assert code == 2 and "--format" in err
    # --exact auto (d = 1,210): every cell exact, and the table says so.
    assert all(c["method"] == "exact" for c in payload["cells"]) and "(2 of 2 checkpoints exact" in md
    # --exact off: SLQ cells with intervals in the CSV; an exact run's value lies inside them.
    slq_out = tmp_path / "slq"
    code, _, err = run_cli(["table", folder / "tiny-adamw.pt", folder / "tiny-l2-adam.pt", "--out", slq_out,
                            "--probes", "6", "--steps", "20", "--max-samples", "100", "--exact", "off", "--rtol", "0",
                            "--layout", "long", "--no-plots"], capsys)
    assert code == 0, err
    frame = pd.read_csv(slq_out / "table1.csv")
    exact = {c["checkpoint"]: c["err_mean"] for c in json.loads((out / "table1.json").read_text())["cells"]}
    for _, line in frame.iterrows():
        assert line["method"] == "slq" and line["err_mean_low"] <= exact[line["checkpoint"]] <= line["err_mean_high"]
    assert "| model, epochs | AdamW | AdamW-D | l2-Adam | l2-Adam-D |" in (slq_out / "table1.md").read_text()
    # Each SLQ cell says how its HVPs split: the top-1 run, both ends (the top run's steps included), the SLQ.
    for cell in json.loads((slq_out / "table1.json").read_text())["cells"]:
        support = cell["support"]
        assert 0 < cell["top_steps"] <= support["steps"] and support["low"] < 0 < cell["top_eigenvalue"]
        assert cell["top_eigenvalue"] <= support["high"] and cell["hvps"] >= support["steps"] + 6 * 20
    assert all(c["top_steps"] == 0 for c in payload["cells"])  # exact: from the dense Hessian
    bad = tmp_path / "bad"
    code, _, err = run_cli(["table", folder / "tiny-adamw.pt", "--out", bad, "--layout", "wide"], capsys)
    assert code == 2 and "--layout" in err and not bad.exists()


def test_csv_by_pandas_equals_the_standard_library_writer():
    """table1.csv is written by pandas; its bytes are what csv.DictWriter writes from the same cells (empty
    cells for None, Python's repr of floats, ints kept ints beside empty cells)."""
    import csv
    import io

    made = {"wdbound": "9.9", "commit": "0123abcd", "dirty": True}
    rows = ROWS + [TableRow("bare.pt", "net", 10, "sgd")]  # no figures: many empty cells
    fields = CSV_FIELDS + ["wdbound_version", "commit"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cell = {**row.to_json(), "wdbound_version": "9.9", "commit": "0123abcd+dirty"}
        writer.writerow({k: ("" if cell.get(k) is None else cell.get(k)) for k in fields})
    assert to_csv(rows, made) == buffer.getvalue()


def test_report_to_pandas_has_every_number_of_table1_json():
    from wdbound.spectrum import SpectrumSettings
    from wdbound.tables import TableSettings, build_report

    report = build_report(ROWS, TableSettings(SpectrumSettings()))
    frame = report.to_pandas()
    assert len(frame) == len(ROWS) and list(frame["checkpoint"]) == [r.checkpoint for r in ROWS]
    for cell, (_, row) in zip(report.to_json()["cells"], frame.iterrows()):
        for key, value in cell.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert row[key] == pytest.approx(value, nan_ok=True), key
    assert frame.groupby("family")["err_mean"].mean()["l2-adam"] == pytest.approx((3.80 + 3.30) / 2)
    found = report.findings_to_pandas()
    assert len(found) == len(report.findings) and {"err_holds", "err_resolved", "err_gap"} <= set(found.columns)
    assert found["err_holds"].tolist() == [f.err_holds for f in report.findings]
