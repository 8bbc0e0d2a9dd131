"""`wdbound check`: the bounds regression check."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import defaults
from .base import app, console, print_error, say
from .options import Opt
from ..progress import BarObserver, progress_bar


# ---------------------------------------------------------------- check

@app.command(short_help="Regression-check bounds and committed reports.")
def check(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Check only these baseline checkpoints (default: all); with --update on a new baseline, the checkpoints to record."),
    baseline: Path = typer.Option(Path("reports/baseline.json"), help="Baseline JSON (format wdbound-baseline/1)."),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline (atomically) with the values computed now and say what changed; creates it if missing."),
    junit: Optional[Path] = typer.Option(None, help="Also write the results as JUnit XML (one testcase per checkpoint and metric)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write every comparison (baseline, now, difference, tolerance and its rule, verdict) with the baseline's settings as JSON."),
    probes: int = typer.Option(defaults.CHECK_PROBES, help="New baselines only: SLQ probes k."), steps: int = typer.Option(defaults.CHECK_STEPS, help="New baselines only: Lanczos steps m."),
    seed: int = typer.Option(0, help="New baselines only: seed of every probe."),
    max_samples: Optional[int] = typer.Option(None, help="New baselines only: N examples of the test split (a seeded random subset)."),
    table: Optional[Path] = typer.Option(None, help="Also check a committed table1.json against this code: made by this release, its checkpoints unchanged, and --table-cells exact cells recomputed (no cache) to the same err/d, top eigenvalue and accuracy."),
    table_cells: int = typer.Option(4, help="With --table: exact cells to recompute (one per model first)."), device: str = Opt.device, memory: str = Opt.memory,
) -> None:
    """Recompute the bounds of a baseline's checkpoints with its settings and seeds; exit 1 if any moved beyond tolerance."""
    from dataclasses import replace as with_

    from ..check import Baseline, run_check, verify_table
    from ..io_utils import check_output

    check_output(junit, json_path)
    chosen = list(checkpoints or [])
    base = Baseline.open(baseline, update=update, checkpoints=chosen, probes=probes, steps=steps, seed=seed,
                         max_samples=max_samples)
    with progress_bar() as bar:
        report = run_check(base, checkpoints=chosen, device=device, memory=memory, observer=BarObserver(bar, on_failed=print_error))
        tabled = (verify_table(table, cells=table_cells, device=device, memory=memory, observer=BarObserver(bar, on_failed=print_error))
                  if table is not None else None)
    render_check(report, baseline)
    if tabled is not None:
        render_table_check(tabled, table)
        report = with_(report, results=report.results + tabled.results, seconds=report.seconds + tabled.seconds)
    write_check_outputs(report, base, junit, json_path)
    if update:
        write_baseline(base, report, baseline)
        return
    for r in report.failed:
        print_error(f"regression: {r.checkpoint} {r.metric} moved {r.difference:.3g} (tolerance {r.tolerance:.3g})")
    if report.failed:
        raise typer.Exit(1)


def write_check_outputs(report, base, junit: Optional[Path], json_path: Optional[Path]) -> None:
    """The JUnit XML and the JSON of the comparisons, when asked (each atomically)."""
    from ..io_utils import write_json_atomic, write_text_atomic

    if junit is not None:
        say(f"wrote {write_text_atomic(junit, report.junit())}")
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, report.to_json(base))}")


def render_table_check(tabled, table: Path) -> None:
    """The committed table's comparisons, and one error line naming what disagrees."""
    render_check(tabled, table)
    if tabled.failed:
        print_error(f"{table} disagrees with this code: "
                    + "; ".join(f"{Path(r.checkpoint).name} {r.metric}" for r in tabled.failed[:4])
                    + " (regenerate it with `make demo`)")


def write_baseline(base, report, baseline: Path) -> None:
    """``--update``: rewrite the baseline (atomically) and say which values changed."""
    base.updated(report).write()
    say(f"wrote {baseline}: {len(report.recorded)} checkpoints; {len(report.changed)} metric values changed"
        + "".join(f"\n  {Path(r.checkpoint).name} {r.metric}: {r.baseline:.10g} -> {r.now:.10g}"
                  for r in report.changed[:20]))


def render_check(report, baseline: Path) -> None:
    """Every comparison, the changed files and the one-line verdict."""
    out = Table(title=f"wdbound check against {baseline} ({report.checkpoints} checkpoints, {report.seconds:.0f} s)")
    for column in ("checkpoint", "metric", "baseline", "now", "difference", "tolerance", "result"):
        out.add_column(column, justify="left" if column in ("checkpoint", "metric", "result") else "right")
    for r in report.results:
        out.add_row(Path(r.checkpoint).name, r.metric, f"{r.baseline:.10g}", f"{r.now:.10g}", f"{r.difference:.3g}",
                    f"{r.tolerance:.3g} ({r.reason})", "PASS" if r.passed else "FAIL")
    if report.results:
        console.print(out)
    for path in report.changed_files:
        say(f"note: {path} changed since the baseline (sha256 differs)")
    say(f"{len(report.results) - len(report.failed)} passed, {len(report.failed)} failed; largest relative drift "
        f"{report.worst_relative_drift:.2g}")
