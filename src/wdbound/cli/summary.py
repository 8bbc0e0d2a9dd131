"""`wdbound summary`: checkpoints and their recorded facts."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import WdboundError
from .base import app, console, print_error, say


# ---------------------------------------------------------------- summary

@app.command(short_help="List checkpoints and their recorded facts.")
def summary(paths: List[Path] = typer.Argument(..., help="Checkpoint files or folders of them."),
            json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the rows (with each file's sha256) and the files that did not load as JSON.")) -> None:
    """List checkpoints: architecture, optimizer, parameters, eta, lambda, b, n, test accuracy."""
    from ..checkpoints import checkpoint_paths, summarise
    from ..io_utils import check_output, write_json_atomic
    from ..provenance import library_versions

    check_output(json_path)
    rows, failures = [], []
    for path in checkpoint_paths(paths):
        try:
            rows.append(summarise(path))
        except WdboundError as exc:
            print_error(exc)
            failures.append({"path": str(path), "error": str(exc)})
    table = Table(title="checkpoints")
    for column in ("checkpoint", "arch", "optimizer", "params d", "epochs", "eta (last)", "lambda (last)", "b", "n",
                   "test acc %"):
        table.add_column(column, justify="left" if column in ("checkpoint", "arch", "optimizer") else "right")

    def shown(value, fmt="{}"):
        return "?" if value is None else fmt.format(value)

    for row in rows:
        table.add_row(Path(row.path).name, row.arch, shown(row.optimizer), str(row.params), shown(row.epochs),
                      shown(row.eta, "{:.3g}"), shown(row.lam, "{:.3g}"), shown(row.batch_size), shown(row.n_train),
                      shown(None if row.test_acc is None else 100 * row.test_acc, "{:.2f}"))
    console.print(table)
    if json_path is not None:
        payload = {"checkpoints": [r.to_json() for r in rows], "failures": failures, "versions": library_versions()}
        say(f"wrote {write_json_atomic(json_path, payload)}")
    if failures:
        raise typer.Exit(2)
