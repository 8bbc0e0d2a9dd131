"""`wdbound spectrum`: top-k, density, trace and diagonal of one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import defaults
from .base import app, console, err_console, say
from .options import Opt, load_from, make_cache, settings_from
from ..progress import BarObserver, progress_bar


# ---------------------------------------------------------------- spectrum

@app.command(short_help="Hessian spectrum: top-k, density, trace, diagonal.")
def spectrum(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt wdbound/1, .safetensors, or a plain state_dict with --arch)."),
    data: Optional[str] = Opt.data, split: str = Opt.split, max_samples: Optional[int] = Opt.max_samples,
    probes: Optional[int] = typer.Option(None, help=f"SLQ Rademacher probes k (density, the single pass, the Hutchinson diagonal). Default: from the dimension d, the fewest (at least {defaults.SPECTRUM_MIN_PROBES}, at most {defaults.SPECTRUM_PROBES}) whose worst-case density sampling error W1 <= {defaults.SPECTRUM_SAMPLING_TOL:g} x the spectrum's range: {defaults.SPECTRUM_PROBES} below d = 100,000 (on the zoo: W1 below PyHessian's default density on 9 of 10 seeds), 2 from d = 250,000 (docs/decisions.md)."),
    steps: int = typer.Option(defaults.SPECTRUM_STEPS, help="Lanczos steps m per SLQ probe (at most, with --single-pass: the run stops when the targets below are met)."),
    single_pass: bool = typer.Option(defaults.SINGLE_PASS, "--single-pass/--separate-top", help="Single pass (default): top-k, the trace's deflation space and the density all from the SLQ probes' Krylov spaces (Rayleigh-Ritz on their union, each value with an error bound: its residual, tightened by the gap to the other Ritz values; a separate top-k Lanczos run only if the union cannot certify top-k). It keeps the probes' bases: the memory plan caps its steps to what fits, and it is off with --lanczos low-memory. --separate-top: a top-k Lanczos run of its own first."),
    top_rtol: float = typer.Option(defaults.SPECTRUM_TOP_RTOL, help="Single pass: target for the top-k error bounds, |theta - lambda| <= top-rtol x |theta| (the residual r, or r^2/gap when the gap to the other Ritz values exceeds 10 r: Parlett 1998, 11.7; the gap is estimated from the Ritz values, as Lanczos codes do)."),
    density_tol: float = typer.Option(defaults.SPECTRUM_DENSITY_TOL, help=f"Single pass: every {defaults.SPECTRUM_CHECK_EVERY} steps, stop once top-k is certified and the density (converged Ritz pairs as exact atoms) moved by W1 <= density-tol x lambda_max since the last check (two estimates within e of the density are <= 2e apart: the default aims at W1 ~1e-3 x lambda_max; 0: all --steps)."),
    top_k: int = Opt.top_k, diag_probes: int = Opt.diag_probes, seed: int = Opt.seed, device: str = Opt.device,
    dtype: str = typer.Option(defaults.SPECTRUM_DTYPE, help="HVP precision: float32 (default here, an overview: 5x faster HVPs through convolutions on CPU; Lanczos vectors, recurrences and quadrature stay float64; top-k residuals certified to --top-rtol) or float64 (small eigenvalues to full precision; what err uses)."),
    hvp: str = Opt.hvp, hvp_batch_size: int = Opt.hvp_batch_size, exact: str = Opt.exact_overview,
    ends: bool = typer.Option(defaults.SPECTRUM_ENDS, "--ends/--no-ends", help=f"Also find the lower end of the spectrum (up to {defaults.ENDS_MAX_STEPS} HVPs; err's quadrature intervals need it; recorded as 'support')."),
    arch: Optional[str] = Opt.arch, arch_kwarg: List[str] = Opt.arch_kwarg,
    model_factory: Optional[str] = Opt.model_factory, loss: str = Opt.loss,
    cache_dir: Optional[Path] = Opt.cache_dir, no_cache: bool = Opt.no_cache,
    memory: str = Opt.memory, lanczos: str = Opt.lanczos, tf32: bool = Opt.tf32, params: List[str] = Opt.params,
    workers: int = Opt.workers, subset_seed: int = Opt.subset_seed, trace: str = Opt.trace,
    trace_probes: int = Opt.trace_probes,
    trace_rtol: float = typer.Option(defaults.SPECTRUM_TRACE_RTOL, help=f"Accuracy target of the deflated trace: the SLQ probes' own leave-one-out samples and a first block up to --trace-probes, then the probes its standard error says are missing (at most {defaults.TRACE_MAX_PROBES} in all), until it is <= trace-rtol x |trace| (0: one block)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="One spectrum per parameter tensor (its diagonal Hessian block; with --params, the matching ones): top-1, trace, density."),
    backend: str = typer.Option("wdbound", help="wdbound (default) or pyhessian: PyHessian 0.1's estimators on the same model, data and loss, for a cross-check (pip install 'wdbound[pyhessian]')."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure with its provenance as JSON (plus <stem>.diagonal.npy)."),
    plot: Optional[Path] = typer.Option(None, help="Write the log-scale density plot (PNG/PDF/SVG by suffix)."),
) -> None:
    """Hessian spectrum of a checkpoint: top eigenvalues, SLQ density, trace and diagonal (+ exact with --exact)."""
    from ..io_utils import check_output, write_json_atomic
    from ..models import count_parameters
    from ..plots import check_plot_path, plot_density
    from ..spectrum import analyse_spectrum, per_layer_json, per_layer_spectra, resolve_exact, write_spectrum_json

    check_output(json_path)
    check_output(plot)
    check_plot_path(plot)
    opts = dict(ctx.params)
    ckpt = load_from(opts)
    settings = settings_from(opts, keys=SPECTRUM_KEYS, diagonal="hutchinson",
                             exact=resolve_exact(exact, count_parameters(ckpt.model)))
    cache = make_cache(cache_dir, no_cache)
    with progress_bar() as bar:
        run = per_layer_spectra if per_layer else analyse_spectrum
        result = run(ckpt, settings, cache, BarObserver(bar))
    record_run(opts)
    if per_layer:
        render_layers(result, checkpoint.name)
        if json_path is not None:
            say(f"wrote {write_json_atomic(json_path, per_layer_json(ckpt, settings, result))}")
        return
    render_spectrum(result)
    if plot is not None:
        plot_density(result, plot, f"{checkpoint.name}: Hessian spectral density ({settings.split} split)")
        say(f"wrote {plot}")
    if json_path is not None:
        say("wrote {} and {}".format(*write_spectrum_json(result, json_path)))


SPECTRUM_KEYS = ("top_k", "diag_probes", "backend", "trace", "trace_probes", "trace_rtol", "ends", "single_pass",
                 "top_rtol", "density_tol")


def record_run(opts: dict) -> None:
    """Record this run beside the cache for ``wdbound err`` without a checkpoint; a cache folder that cannot be
    written is said in one warning line (the spectrum itself is done)."""
    from ..cache import LastSpectrum, default_cache_dir
    from .options import RECORDED

    try:
        LastSpectrum.now(opts["checkpoint"], {name: opts[name] for name in RECORDED}).write(
            opts["cache_dir"] or default_cache_dir())
    except OSError as exc:
        err_console.print(f"warning: could not record this run for `wdbound err` ({exc.strerror})",
                          highlight=False, markup=False, soft_wrap=True)


def render_layers(layers, label: str) -> None:
    """``spectrum --per-layer``: one row per parameter tensor."""
    table = Table("parameter", "d", "top-1", "trace", "+/-", "neg. mass", "zero rows", "HVPs",
                  title=f"{label}: per-layer Hessian blocks")
    for layer in layers:
        s = layer.spectrum
        table.add_row(layer.name, str(s.d), f"{s.top.values[0]:.6g}", f"{s.trace.estimate:.6g}",
                      f"{s.trace.stderr:.2g}", f"{100 * s.negative_mass:.2f}%", str(len(s.zero_rows)), str(s.hvps))
    console.print(table)


def render_spectrum(result) -> None:
    """The figures of one spectrum, with the zero rows, the logit shift and the exact values when present."""
    top = ", ".join(f"{v:.6g}" for v in result.top.values)
    diag = result.diagonal.summary()
    nodes, _ = result.slq.measure()
    say(f"d = {result.d} parameters, n_eval = {result.n_eval} examples ({result.provenance['settings']['split']} split)")
    backend = result.provenance.get("backend", "wdbound")
    if result.provenance.get("top_from") == "dense Hessian":
        say(f"top {len(result.top.values)} eigenvalues: {top}  (exact: eigenvalues of the dense Hessian)")
    elif backend == "wdbound":
        source = ("Rayleigh-Ritz on the union of the SLQ probes' Krylov spaces, "
                  if result.provenance.get("top_from") == "slq union" else "Lanczos, ")
        say(f"top {len(result.top.values)} eigenvalues: {top}  ({source}{result.top.steps} steps, "
            f"error bound <= {result.top.tol:g}*|theta|: {'converged' if result.top.converged else 'NOT converged'}; "
            f"largest {max(float(b) for b in result.top.bounds):.1e})")
    else:
        say(f"backend {backend}: {result.provenance.get('note', '')}")
        say(f"top {len(result.top.values)} eigenvalues: {top}  (power iteration, relative change <= 1e-3)")
    reused = result.provenance.get("trace_leave_one_out") or 0
    if result.trace.method == "exact":
        say(f"trace: {result.trace.estimate:.6g} (exact: the dense Hessian's diagonal summed)")
    else:
        say(f"trace: {result.trace.estimate:.6g} +/- {result.trace.stderr:.2g} (one standard error; "
            f"{result.trace.method}, {len(result.trace.samples)} probes"
            + (f", {reused} of them the SLQ probes, deflated leave-one-out" if reused else "") + ")")
    say(f"SLQ ({result.provenance['settings']['probes']} probes): Ritz values in [{nodes.min():.4g}, {nodes.max():.4g}]; negative eigenvalue mass {100 * result.negative_mass:.2f}% "
        f"({100 * result.resolved_negative_mass:.2f}% below -1e-3 x lambda_max; nearer 0 the side is within the "
        "quadrature's resolution)")
    if backend == "wdbound":
        say(f"zero rows: {len(result.zero_rows)} coordinates have an exactly zero Hessian row (inputs the data never "
            "activates); they are deflated and counted as exact zero eigenvalues")
        say(f"logit shift: {result.shift_directions} directions of the linear head add the same number to every logit "
            "(cross-entropy is invariant): exact zero eigenvalues, deflated")
    say(f"diagonal{' (exact)' if not result.diagonal.probes else ''}: mean {diag['mean']:.4g}, "
        f"{diag['nonpositive']} entries <= 0, of which {diag['exact_zero']} exactly 0 (weights the data never moves: "
        "zero Hessian rows)")
    if result.exact_eigenvalues is not None:
        ev = result.exact_eigenvalues
        rel = abs(result.top.values[0] - ev[-1]) / abs(ev[-1])
        check = "" if result.provenance.get("top_from") == "dense Hessian" else f" (top-1 rel. error {rel:.1e})"
        say(f"exact: lambda_max {ev[-1]:.10g}{check}, trace {ev.sum():.6g}, "
            f"{int((abs(ev) <= 1e-10 * abs(ev).max()).sum())} eigenvalues |lambda| <= 1e-10*max, "
            f"{int((result.exact_diagonal == 0).sum())} zero diagonal entries")
    say(f"{result.hvps} HVPs in {result.wall_seconds:.1f} s" + (" (from the cache; key "
        f"{result.provenance.get('cache_key')})" if result.cached else ""))
