"""`wdbound updates`: update-magnitude histograms."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .base import app, console, say


# ---------------------------------------------------------------- updates

@app.command(short_help="Update-magnitude histograms of Adam-type runs.")
def updates(
    paths: List[Path] = typer.Argument(..., help="Checkpoints (or folders) written by `wdbound train`."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also one histogram per layer, grouped by depth."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write counts per bin (per layer, per recorded epoch) and the summaries."),
    plot: Optional[Path] = typer.Option(None, help="Write the histograms (PNG/PDF/SVG): final state overlaid, per layer with --per-layer, "
                                                     "and over training when the checkpoints recorded it."),
) -> None:
    """Histograms of |update|/lr = |m_hat/(sqrt(v_hat)+eps)| per coordinate, log2 bins from 2^-27 to 1."""
    from ..checkpoints import checkpoint_paths, read_meta
    from ..io_utils import check_output, write_json_atomic
    from ..plots import check_plot_path, plot_updates
    from ..updates import checkpoint_entry, updates_json

    check_output(json_path)
    check_output(plot)
    check_plot_path(plot)
    entries = [checkpoint_entry(read_meta(path), path) for path in checkpoint_paths(paths)]
    render_updates(entries, per_layer)
    if plot is not None:
        plot_updates(entries, plot, per_layer=per_layer)
        say(f"wrote {plot}")
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, updates_json(entries))}")


def _update_cells(st) -> list[str]:
    return [str(st.count), f"{st.median_log2:.2f}", f"{st.iqr_log2:.2f}", f"{100 * st.frac_low:.2f}%",
            f"{100 * st.frac_high:.2f}%"]


def render_updates(entries, per_layer: bool) -> None:
    """The summary per checkpoint and, with ``per_layer``, per parameter tensor."""
    table_ = Table(title="update magnitudes |m_hat/(sqrt(v_hat)+eps)| (log2 bins 2^-27 .. 1)")
    for column in ("checkpoint", "optimizer", "coordinates", "median log2", "IQR (log2 units)", "<= 2^-27", ">= 1",
                   "recorded epochs"):
        table_.add_column(column, justify="left" if column in ("checkpoint", "optimizer") else "right")
    for e in entries:
        table_.add_row(e.checkpoint, str(e.optimizer), *_update_cells(e.stats), str(len(e.over_training)))
    console.print(table_)
    if not per_layer:
        return
    layer_table = Table(title="per layer (depth = order of the module in the network)")
    for column in ("checkpoint", "depth", "parameter", "count", "median log2", "IQR", "<= 2^-27", ">= 1"):
        layer_table.add_column(column, justify="left" if column in ("checkpoint", "parameter") else "right")
    for e in entries:
        for name, st in e.layer_stats.items():
            layer_table.add_row(e.checkpoint, str(e.depths[name]), name, *_update_cells(st))
    console.print(layer_table)
