"""`wdbound spectrum`: top-k, density, trace and diagonal of one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .base import app, console, err_console, print_error, say
from .options import Opt, load_from, make_cache, settings_from
from ..progress import BarObserver, progress_bar


# ---------------------------------------------------------------- spectrum

@app.command(short_help="Hessian spectrum: top-k, density, trace, diagonal.")
def spectrum(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt wdbound/1, .safetensors, or a plain state_dict with --arch)."),
    data: Optional[str] = Opt.data, split: str = Opt.split, max_samples: Optional[int] = Opt.max_samples,
    probes: Optional[int] = Opt.spectrum_probes, steps: int = Opt.spectrum_steps, single_pass: bool = Opt.spectrum_single_pass,
    top_rtol: float = Opt.spectrum_top_rtol, density_tol: float = Opt.spectrum_density_tol, top_k: int = Opt.top_k,
    diag_probes: int = Opt.diag_probes, seed: int = Opt.seed, device: str = Opt.device, dtype: str = Opt.spectrum_dtype,
    hvp: str = Opt.hvp, hvp_batch_size: int = Opt.hvp_batch_size, exact: str = Opt.exact_overview, ends: bool = Opt.spectrum_ends,
    arch: Optional[str] = Opt.arch, arch_kwarg: List[str] = Opt.arch_kwarg, model_factory: Optional[str] = Opt.model_factory,
    loss: str = Opt.loss, cache_dir: Optional[Path] = Opt.cache_dir, no_cache: bool = Opt.no_cache, memory: str = Opt.memory,
    lanczos: str = Opt.lanczos, tf32: bool = Opt.tf32, params: List[str] = Opt.params, workers: int = Opt.workers,
    subset_seed: int = Opt.subset_seed, trace: str = Opt.trace, trace_probes: int = Opt.trace_probes,
    trace_rtol: float = Opt.spectrum_trace_rtol, per_layer: bool = Opt.spectrum_per_layer, backend: str = Opt.spectrum_backend, fsdp: bool = Opt.fsdp,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure with its provenance as JSON (plus <stem>.diagonal.npy)."),
    plot: Optional[Path] = typer.Option(None, help="Write the log-scale density plot (PNG/PDF/SVG by suffix)."),
) -> None:
    """Hessian spectrum of a checkpoint: top eigenvalues, SLQ density, trace and diagonal (+ exact with --exact)."""
    from ..io_utils import check_output
    from ..models import count_parameters
    from ..plots import check_plot_path
    from ..spectrum import analyse_spectrum, per_layer_spectra, resolve_exact

    check_output(json_path, plot)
    check_plot_path(plot)
    opts = dict(ctx.params)
    ckpt = load_from(opts)
    settings = settings_from(opts, keys=SPECTRUM_KEYS, diagonal="hutchinson",
                             exact=not fsdp and resolve_exact(exact, count_parameters(ckpt.model)))
    if fsdp:
        return sharded_spectrum_command(ckpt, settings, json_path, per_layer or plot is not None)
    cache = make_cache(cache_dir, no_cache)
    with progress_bar() as bar:
        run = per_layer_spectra if per_layer else analyse_spectrum
        result = run(ckpt, settings, cache, BarObserver(bar, on_failed=print_error))
    record_run(opts)
    if per_layer:
        return write_layers(result, ckpt, settings, json_path)
    render_spectrum(result)
    write_spectrum_outputs(result, plot, json_path, f"{checkpoint.name}: Hessian spectral density ({settings.split} split)")


def sharded_spectrum_command(ckpt, settings, json_path: Optional[Path], unsupported: bool) -> None:
    """``spectrum --fsdp``: :func:`wdbound.fsdp.sharded_spectrum` with a progress bar, its figures, its JSON."""
    from ..distributed import is_main
    from ..errors import WdboundError
    from ..fsdp import SHARDED_TRACE_PROBES, expected_sharded_hvps, sharded_spectrum
    from ..io_utils import write_json_atomic
    from ..models import count_parameters

    if unsupported:
        raise WdboundError("--fsdp gives top-k, trace and density: --per-layer and --plot are not supported there",
                           "fsdp")
    with progress_bar() as bar:
        observer = BarObserver(bar, on_failed=print_error)
        observer.start(ckpt.path.name, expected_sharded_hvps(settings, count_parameters(ckpt.model)))
        result = sharded_spectrum(ckpt, settings, observer.hvps)
        observer.done(result.run.hvps)
    run = result.run
    say_sharded_run(run, settings.split)
    top = ", ".join(f"{v:.6g} +/- {b:.2g}" for v, b in zip(result.top.values, result.top.bounds))
    say(f"top {len(result.top.values)} eigenvalues ({result.top.steps} Lanczos steps): {top}")
    say(f"trace: {result.trace:.6g} +/- {result.trace_bar:.2g} (Hutchinson, {SHARDED_TRACE_PROBES} probes; the bar is "
        "one standard error + eta |trace|)")
    nodes = result.nodes
    say(f"SLQ ({run.provenance['probes']} x {run.provenance['steps']}): Ritz values in [{nodes.min():.4g}, "
        f"{nodes.max():.4g}]; negative eigenvalue mass "
        f"{100 * float(result.weights[nodes < 0].sum() / result.weights.sum()):.2f}%")
    say_sharded_memory(run.memory)
    say(f"{run.hvps} HVPs in {run.seconds:.1f} s")
    if json_path is not None and is_main():  # rank 0 alone writes
        say(f"wrote {write_json_atomic(json_path, result.to_json())}")


def say_sharded_run(run, split: str) -> None:
    """The first lines of ``--fsdp``: the sizes and the HVP's measured error."""
    e = run.error
    say(f"d = {run.dim} parameters sharded over {run.world} processes ({run.local_dim} on each), "
        f"n_eval = {run.n_eval} examples ({split} split)")
    say(f"finite-difference HVPs ({e.dtype}): products at eps and 2 eps differ by delta = {e.relative:.2g} at the "
        f"chosen step; every bound is widened by eta = {e.eta:.2g} (10 delta) of its value")
    say(f"{run.zero_rows} exactly-zero Hessian rows (every product exactly 0 there) deflated: counted as exact zero "
        "eigenvalues")


def say_sharded_memory(plan) -> None:
    """The per-rank memory line of ``--fsdp``: the planned peak and its parts, and the largest peak measured."""
    from ..memory import human_bytes

    if plan is None:
        return
    measured = f"; measured peak {human_bytes(plan.peak_measured)}" if plan.peak_measured else ""
    say(f"memory per rank: planned peak {human_bytes(plan.peak)} (before the analysis {human_bytes(plan.baseline)}, "
        f"shards {human_bytes(plan.shard)}, largest unit gathered {human_bytes(plan.gathered)}, examples "
        f"{human_bytes(plan.data)}, activations {human_bytes(plan.activations)}, Lanczos vectors "
        f"{human_bytes(plan.lanczos)} ({plan.mode}), runtime {human_bytes(plan.runtime)})"
        + (f" within {human_bytes(plan.budget)} ({plan.budget_source})" if plan.budget else "") + measured)


def write_spectrum_outputs(result, plot: Optional[Path], json_path: Optional[Path], title: str) -> None:
    """The density plot and the JSON (plus the diagonal's .npy) when asked, each written atomically."""
    from ..plots import plot_density
    from ..spectrum import write_spectrum_json

    if plot is not None:
        plot_density(result, plot, title)
        say(f"wrote {plot}")
    if json_path is not None:
        say("wrote {} and {}".format(*write_spectrum_json(result, json_path)))


SPECTRUM_KEYS = ("top_k", "diag_probes", "backend", "trace", "trace_probes", "trace_rtol", "ends", "single_pass",
                 "top_rtol", "density_tol")


def record_run(opts: dict) -> None:
    """Record this run beside the cache for ``wdbound err`` without a checkpoint; a cache folder that cannot be
    written is said in one warning line (the spectrum itself is done)."""
    from ..cache import LastSpectrum, default_cache_dir
    from ..distributed import is_main
    from .options import RECORDED

    if not is_main():  # under torchrun, rank 0 alone writes
        return
    try:
        LastSpectrum.now(opts["checkpoint"], {name: opts[name] for name in RECORDED}).write(
            opts["cache_dir"] or default_cache_dir())
    except OSError as exc:
        err_console.print(f"warning: could not record this run for `wdbound err` ({exc.strerror})",
                          highlight=False, markup=False, soft_wrap=True)


def write_layers(layers, ckpt, settings, json_path: Optional[Path]) -> None:
    """``spectrum --per-layer``: the table, and the JSON when asked."""
    from ..io_utils import write_json_atomic
    from ..spectrum import per_layer_json

    render_layers(layers, ckpt.path.name)
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, per_layer_json(ckpt, settings, layers))}")


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
    diag = result.diagonal.summary()
    nodes, _ = result.slq.measure()
    say(f"d = {result.d} parameters, n_eval = {result.n_eval} examples ({result.provenance['settings']['split']} split)")
    backend = result.provenance.get("backend", "wdbound")
    say_top(result, backend)
    say_trace(result)
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


def say_top(result, backend: str) -> None:
    """The top-k line: the values and where they come from (dense Hessian, Lanczos with its error bound, or a
    cross-check backend)."""
    top = ", ".join(f"{v:.6g}" for v in result.top.values)
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


def say_trace(result) -> None:
    """The trace line: exact, or the estimate with one standard error and how it was sampled."""
    reused = result.provenance.get("trace_leave_one_out") or 0
    if result.trace.method == "exact":
        say(f"trace: {result.trace.estimate:.6g} (exact: the dense Hessian's diagonal summed)")
    else:
        say(f"trace: {result.trace.estimate:.6g} +/- {result.trace.stderr:.2g} (one standard error; "
            f"{result.trace.method}, {len(result.trace.samples)} probes"
            + (f", {reused} of them the SLQ probes, deflated leave-one-out" if reused else "") + ")")
