"""`wdbound table`: Table I on checkpoints or a runs file."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import defaults
from .base import app, console, parse_kwargs, print_error, say
from .options import Opt, make_cache
from ..progress import BarObserver, progress_bar


# ---------------------------------------------------------------- table

@app.command(short_help="Table I on your checkpoints or a runs file.")
def table(
    ctx: typer.Context,
    paths: Optional[List[Path]] = typer.Argument(None, help="Checkpoints or folders of them (e.g. checkpoints/); or give --runs."),
    runs: Optional[Path] = typer.Option(None, help="A runs file (.csv or .toml), one row per checkpoint: path, arch, arch_kwargs, model_factory, optimizer, lr, wd, batch_size, n_train, epochs, label, test_acc (docs/runs.md). The flags below fill what a row leaves empty."),
    out: Path = typer.Option(Path("reports"), help="Folder for table1.{md,csv,tex,json} and the plots."),
    format: str = typer.Option("md,csv,tex", "--format", help="Comma-separated subset of md, csv, tex (JSON is always written)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write density plots per checkpoint and one comparison per model."), rho: Optional[float] = Opt.rho, tau: float = Opt.tau, sigma_floor: float = Opt.sigma_floor,
    data: Optional[str] = Opt.data, split: str = Opt.split, max_samples: Optional[int] = Opt.max_samples,
    probes: int = typer.Option(defaults.TABLE_PROBES, help="SLQ probes k per checkpoint (as `err`: few, long Lanczos runs; the zoo is exact under --exact auto)."),
    steps: Optional[int] = typer.Option(defaults.TABLE_STEPS, help=f"Lanczos steps m per probe (default: {defaults.STEPS}, at most d)."),
    seed: int = Opt.seed, device: str = Opt.device, dtype: str = Opt.dtype, hvp: str = Opt.hvp,
    hvp_batch_size: int = Opt.hvp_batch_size, cache_dir: Optional[Path] = Opt.cache_dir, no_cache: bool = Opt.no_cache,
    exact: str = Opt.exact_auto, rtol: float = Opt.rtol, max_hvps: Optional[int] = Opt.max_hvps,
    memory: str = Opt.memory, lanczos: str = Opt.lanczos, tf32: bool = Opt.tf32, workers: int = Opt.workers, subset_seed: int = Opt.subset_seed,
    layout_name: str = typer.Option("auto", "--layout", help="Markdown layout: long (one row per model and epochs), paper (Table I's column pairs), or auto (long above three groups). The LaTeX keeps the paper's."),
    arch: Optional[str] = Opt.arch, arch_kwarg: List[str] = Opt.arch_kwarg, model_factory: Optional[str] = Opt.model_factory, loss: str = Opt.loss,
    optimizer: Optional[str] = typer.Option(None, help="The training rule of plain state_dicts (adamw, adamw-d, l2-adam, l2-adam-d, adamprox, adams, adal): it picks the bound form and Table I's column."),
    lr: Optional[float] = Opt.lr, wd: Optional[float] = Opt.wd, batch_size: Optional[int] = Opt.batch_size, n_train: Optional[int] = Opt.n_train, epochs: Optional[int] = typer.Option(None, help="Training length in epochs of plain state_dicts (Table I's row)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write table1.json (every cell, finding and setting) at this path."), fsdp: bool = Opt.fsdp,
) -> None:
    """Table I (err in bound, test accuracy; constant / decaying; AdamW vs l2-Adam) on your checkpoints."""
    from ..io_utils import check_output, check_output_folder, write_json_atomic
    from ..tables import run_table, table_items, table_settings

    check_output_folder(out)
    check_output(json_path)
    settings = table_settings(rho=rho, tau=tau, sigma_floor=sigma_floor, exact=exact, layout=layout_name, plots=plots, fsdp=fsdp,
                              formats=[f.strip() for f in format.split(",") if f.strip()], **spectrum_options(ctx.params))
    items = table_items(paths, runs, arch=arch, arch_kwargs=parse_kwargs(arch_kwarg) if arch_kwarg else None,
                        model_factory=model_factory, optimizer=optimizer, lr=lr, wd=wd, batch_size=batch_size,
                        n_train=n_train, epochs=epochs)
    with progress_bar() as bar:
        report = run_table(items, settings, cache=make_cache(cache_dir, no_cache), observer=BarObserver(bar, on_failed=print_error))
    if report.failures and not report.rows and not report.interrupted:
        raise typer.Exit(2)  # every checkpoint failed (each said why): no empty table is written
    render_table(report, out)
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, report.to_json())}")
    if report.interrupted or report.failures:
        raise typer.Exit(report.interrupted or 2)


def spectrum_options(opts: dict) -> dict:
    """The SpectrumSettings fields a table takes from its options."""
    from .options import COMMON_SETTINGS

    return {**{name: opts[name] for name in COMMON_SETTINGS}, "batch_size": opts["hvp_batch_size"],
            "rtol": opts["rtol"], "max_hvps": opts["max_hvps"]}


def render_table(report, out: Path) -> None:
    """Table I, the findings, and the files written (the report is written here, atomically)."""
    from ..tables import finding_lines, summary_counts

    console.print(rich_table(*report.grid()))
    say(summary_counts(report.findings))
    for line in finding_lines(report.findings):
        say(line)
    tables, figures = report.write(out)
    say(f"wrote {', '.join(map(str, tables))}" + (f" and {len(figures)} plots under {out}" if figures else "")
        + f" ({len(report.rows)} checkpoints, {report.wall_seconds:.0f} s)")


def rich_table(header: list[str], rows: list[list[str]]) -> Table:
    """Table I as a rich table."""
    out = Table(title="Table I on these checkpoints (err/d of the trained-with form; constant / decaying)")
    for i, column in enumerate(header):
        out.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*row)
    return out
