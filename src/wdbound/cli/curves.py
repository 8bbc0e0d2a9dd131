"""`wdbound curves`: curvature over training, from `train --curves` checkpoints or a monitor's JSON Lines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .base import app, console, say


@app.command(short_help="Curvature over training, from --curves runs.")
def curves(
    paths: List[Path] = typer.Argument(..., help="Checkpoints written by `wdbound train --curves`, folders of them, or JSON Lines files of wdbound.Monitor."),
    plot: Optional[Path] = typer.Option(None, help="Write the figure (PNG/PDF/SVG): a row per architecture; sharpness, preconditioned sharpness (with 38/eta) and err/d of both bound forms against the step, a line per run."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every record of every curve, and the step from which err/d of the AdamW form stays below the l2-Adam form's."),
    csv: Optional[Path] = typer.Option(None, help="Write one row per record (pandas), the scalars as columns."),
) -> None:
    """Sharpness, Adam's preconditioned sharpness and err/d of both bound forms over training, per run."""
    from ..curves import curves_to_pandas, read_curves
    from ..io_utils import check_output, write_json_atomic, write_text_atomic
    from ..plots import check_plot_path, plot_curves

    check_output(plot, json_path, csv)
    check_plot_path(plot)
    found = read_curves(paths)
    render_curves(found)
    if plot is not None:
        say(f"wrote {plot_curves(found, plot)}")
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, {'curves': [c.to_json() for c in found]})}")
    if csv is not None:
        say(f"wrote {write_text_atomic(csv, curves_to_pandas(found).to_csv(index=False))}")


def _cell(value, digits: int = 5) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def render_curves(found) -> None:
    """A table per run, and the step from which the paper's ordering holds."""
    for curve in found:
        table = Table(title=f"{curve.label} ({curve.optimizer or 'monitor'}, schedule {curve.schedule or '-'})")
        for column in ("step", "epoch", "loss", "accuracy", "lambda_max(H)", "lambda_max(P^-1 H)", "38/eta",
                       "err/d AdamW form", "err/d l2-Adam form", "HVPs"):
            table.add_column(column, justify="right")
        for r in curve.records:
            err = r.err_mean or {}
            table.add_row(str(r.step), _cell(r.epoch), _cell(r.loss), _cell(r.accuracy, 4),
                          _cell(r.sharpness[0] if r.sharpness else None), _cell(r.preconditioned_sharpness),
                          _cell(r.edge_of_stability()), _cell(err.get("adamw")), _cell(err.get("l2-adam")),
                          str(r.hvps))
        console.print(table)
        start = curve.ordering_from()
        say("err/d: the AdamW form stays below the l2-Adam form " + (f"from step {start} on" if start is not None
            else "not at the last record" if any(r.err_mean for r in curve.records) else "(err not recorded)"))
