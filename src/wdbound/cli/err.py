"""`wdbound err`: Corollary 3 and the Theorem 6/7 terms of one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import defaults
from ..errors import WdboundError
from .base import app, console, err_console, print_error, say
from .options import Opt, load_from, make_cache, settings_from
from ..progress import BarObserver, progress_bar


@app.command(short_help="err_AdamW vs err_l2-Adam and Theorem 6/7 terms.")
def err(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint to evaluate (default: the checkpoint of the most recent `wdbound spectrum` run, on the same data; stderr says which)."),
    optimizer: str = typer.Option("both", help="Whose bound: a training rule, adamw, adamw-d, adamprox, adams (Theorem 6's form, err_AdamW) or l2-adam, l2-adam-d, adal (Theorem 7's, err_l2-Adam); or both."),
    form: Optional[str] = typer.Option(None, hidden=True, help="Old spelling of --optimizer (adamw, l2-adam or both)."),
    rho: Optional[float] = Opt.rho, tau: float = Opt.tau, sigma_floor: float = Opt.sigma_floor,
    sweep: List[str] = typer.Option([], help="Re-evaluate for several values, e.g. rho=0.01,0.1,1 or sigma-floor=1e-8,1e-6,1e-4 "
                                             "(also tau, wd, lr); repeatable. Uses the same spectrum."),
    data: Optional[str] = Opt.data, split: str = Opt.split, max_samples: Optional[int] = Opt.max_samples, probes: int = Opt.probes,
    steps: Optional[int] = Opt.steps, diag_probes: Optional[int] = Opt.err_diag_probes, seed: int = Opt.seed,
    theorem_probes: int = Opt.theorem_probes, theorem_steps: int = Opt.theorem_steps, device: str = Opt.device,
    dtype: str = Opt.dtype, hvp: str = Opt.hvp, hvp_batch_size: int = Opt.hvp_batch_size, exact: str = Opt.exact_auto, theorem: str = Opt.theorem, diagonal: str = Opt.diagonal, rtol: float = Opt.rtol, max_hvps: Optional[int] = Opt.max_hvps,
    arch: Optional[str] = Opt.arch, arch_kwarg: List[str] = Opt.arch_kwarg, model_factory: Optional[str] = Opt.model_factory,
    loss: str = Opt.loss, lr: Optional[float] = Opt.lr, wd: Optional[float] = Opt.wd, batch_size: Optional[int] = Opt.batch_size,
    n_train: Optional[int] = Opt.n_train, cache_dir: Optional[Path] = Opt.cache_dir, no_cache: bool = Opt.no_cache,
    memory: str = Opt.memory, lanczos: str = Opt.lanczos, tf32: bool = Opt.tf32, params: List[str] = Opt.params,
    workers: int = Opt.workers, subset_seed: int = Opt.subset_seed, fsdp: bool = Opt.fsdp,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the figures, their inputs and the spectrum provenance as JSON."),
) -> None:
    """Corollary 3 (err_AdamW vs err_l2-Adam, the Table I quantity), Phi, and the exact Theorem 6/7 terms."""
    from ..analysis import bound_inputs, evaluate_err, parse_sweep
    from ..io_utils import check_output, write_json_atomic
    from ..optim import bound_forms

    check_output(json_path)
    opts = with_last_spectrum(ctx) if checkpoint is None else dict(ctx.params)
    forms = bound_forms(old_form(form, optimizer) if form is not None else optimizer)
    sweeps = [parse_sweep(item) for item in sweep]
    ckpt = load_from(opts, lr=lr, wd=wd, batch_size=batch_size, n_train=n_train)
    inputs = bound_inputs(ckpt, rho=rho, tau=tau, sigma_floor=sigma_floor, params=tuple(opts["params"]))
    if fsdp:
        return sharded_err_command(ckpt, opts, bool(sweeps), inputs, forms, json_path)
    settings, with_theorem = err_settings(opts, inputs.d)
    with progress_bar() as bar:
        report = evaluate_err(ckpt, settings, inputs, forms, sweeps=sweeps, cache=make_cache(cache_dir, no_cache),
                              observer=BarObserver(bar, on_failed=print_error), label=ckpt.path.name,
                              theorem=with_theorem)
    render_err(report, ckpt.path.name, settings)
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, report.to_json())}")


def sharded_err_command(ckpt, opts: dict, sweeps: bool, inputs, forms, json_path: Optional[Path]) -> None:
    """``err --fsdp``: :func:`wdbound.fsdp.sharded_err` at err's probes and steps (SLQ: no dense spectrum, no
    Theorem term, no sweep) with a progress bar, its table, its JSON (rank 0)."""
    if sweeps or opts["theorem"] == "on" or opts["exact"] == "on":
        raise WdboundError("--fsdp gives err/d of Corollary 3 by SLQ: --sweep, --theorem on and --exact on are "
                           "not supported there", "fsdp")
    settings, _ = err_settings({**opts, "exact": "off", "theorem": "off"}, inputs.d)
    from ..distributed import is_main
    from ..fsdp import expected_sharded_hvps, sharded_err
    from ..io_utils import write_json_atomic
    from .spectrum import say_sharded_memory, say_sharded_run

    with progress_bar() as bar:
        observer = BarObserver(bar, on_failed=print_error)
        observer.start(ckpt.path.name, expected_sharded_hvps(settings, inputs.d, "err"))
        report = sharded_err(ckpt, settings, inputs, forms, observer.hvps)
        observer.done(report.run.hvps)
    run = report.run
    say_sharded_run(run, settings.split)
    table = Table(title=escape(f"{ckpt.path.name}: err/d sharded over {run.world} processes (SLQ on "
                               "finite-difference HVPs, [interval covering the exact value, widened for their error])"))
    table.add_column("quantity")
    for item in report.errs:
        table.add_column(FORM_TITLES[item.form], justify="right")
    table.add_row("err_mean = err/d (Table I)", *[_interval(item.err_mean, item.interval) for item in report.errs])
    table.add_row("eigenvalue shift allowed (eps)", *[f"{item.eps:.2g}" for item in report.errs])
    console.print(table)
    p = report.inputs
    say(f"inputs: d={p.d} n={p.n} b={p.b} eta={p.eta:g} lambda={p.lam:g} rho={p.rho:g} tau={p.tau:g} "
        f"sigma_floor={p.sigma_floor:g}; {run.provenance['probes']} x {run.provenance['steps']} SLQ; "
        f"{run.hvps} HVPs in {run.seconds:.1f} s; Theorem 6/7 terms not computed (--fsdp)")
    say_sharded_memory(run.memory)
    if json_path is not None and is_main():
        say(f"wrote {write_json_atomic(json_path, report.to_json())}")


def old_form(form: str, optimizer: str) -> str:
    """``--form``, the old spelling of ``--optimizer``: its value, said once on stderr."""
    if optimizer != "both" and optimizer != form:
        raise WdboundError("--form is the old spelling of --optimizer; give one of them", "optimizer")
    if form not in ("adamw", "l2-adam", "both"):
        raise WdboundError(f"unknown --form {form!r}; use --optimizer with a training rule or both", "optimizer")
    err_console.print(f"note: --form is now spelled --optimizer {form}", highlight=False, markup=False)
    return form


def with_last_spectrum(ctx: typer.Context) -> dict:
    """The command's options with the checkpoint of the most recent ``wdbound spectrum`` run and, for every
    option recorded with it that this command left at its default, the recorded value (the same model, data,
    split, subset and loss); says on stderr which checkpoint and when."""
    from ..cache import LastSpectrum, default_cache_dir

    opts = dict(ctx.params)
    root = opts["cache_dir"] or default_cache_dir()
    last = LastSpectrum.read(root)
    if last is None:
        raise WdboundError(f"no checkpoint given and no `wdbound spectrum` run recorded in {root}: run "
                           "`wdbound spectrum CKPT` first, or name the checkpoint", "checkpoint")
    opts["checkpoint"] = Path(last.checkpoint)
    taken = []
    for name, value in last.options.items():
        if name in opts and ctx.get_parameter_source(name).name == "DEFAULT" and opts[name] != value:
            opts[name] = value
            taken.append(name.replace("_", "-"))
    err_console.print(f"checkpoint {shown_path(last.checkpoint)}, from the `wdbound spectrum` run of "
                      f"{last.when.replace('T', ' ').replace('+00:00', ' UTC')}"
                      + (f" (its {', '.join('--' + t for t in taken)})" if taken else ""),
                      highlight=False, markup=False, soft_wrap=True)
    return opts


def shown_path(path: str) -> str:
    """``path`` relative to the working folder when it lies inside it, else as recorded (absolute)."""
    import os

    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def err_settings(opts: dict, d: int):
    """The validated SpectrumSettings of ``err``'s options for a model of ``d`` parameters, and whether the
    Theorem 6/7 terms are computed. Without them Q's diagonal is not needed: the spectrum's diagonal is then
    the SLQ probes' Hutchinson estimate, which costs no HVP."""
    from ..analysis import resolve_theorem
    from ..spectrum import resolve_exact

    exact = resolve_exact(opts["exact"], d)
    with_theorem = resolve_theorem(opts["theorem"], exact)
    diagonal, diag_probes = opts["diagonal"], opts["diag_probes"]
    if not with_theorem:
        diagonal, diag_probes = "hutchinson", diag_probes or 0
    elif diag_probes is None:
        diag_probes = defaults.q_diagonal_probes(d, opts["probes"], opts["theorem_probes"], diagonal)
    settings = settings_from(opts, top_k=1, diag_probes=diag_probes, exact=exact, diagonal=diagonal,
                             keys=("rtol", "max_hvps", "theorem_probes", "theorem_steps"))
    return settings, with_theorem


FORM_TITLES = {"adamw": "AdamW (Thm 6)", "l2-adam": "l2-Adam (Thm 7)"}


def _interval(value: float, interval, digits: int = 6) -> str:
    text = f"{value:.{digits}g}"
    if interval is None or interval.low == interval.high:
        return text
    return f"{text} [{interval.low:.{digits}g}, {interval.high:.{digits}g}]"


def _theorem(figures, digits: int = 6) -> str:
    return _interval(figures.theorem.term, figures.theorem.interval, digits) if figures.theorem else "nan"


def render_err(report, name: str, settings) -> None:
    """The err table, the adaptive SLQ's outcome, the checkpoint's own form, the inputs and every sweep."""
    spectrum = report.evaluation.spectrum
    console.print(err_table(report, name))
    render_refinement(report.evaluation.analysis.refinement, settings)
    if report.theorem_extra_hvps:
        say(f"Theorem 6/7 terms not computed: --theorem on adds at most {report.theorem_extra_hvps:,} HVPs "
            "(their Lanczos runs and Q's diagonal)")
    say_own_form(report)
    p = report.evaluation.inputs
    say(f"inputs: d={p.d} n={p.n} b={p.b} eta={p.eta:g} lambda={p.lam:g} rho={p.rho:g} tau={p.tau:g} "
        f"sigma_floor={p.sigma_floor:g}; {len(spectrum.zero_rows)} exactly-zero Hessian rows deflated (exact zero "
        f"eigenvalues); spectrum: {spectrum.hvps} HVPs, {spectrum.wall_seconds:.1f} s"
        + (" (cached)" if spectrum.cached else "") + f"; HVPs this run: {report.evaluation.analysis.hvps}")
    for sweep_name, rows in report.sweeps.items():
        render_sweep(sweep_name, rows, report.forms)


def err_table(report, name: str) -> Table:
    """The figures of every form: err/d with its interval, err, Phi, the mass under the floor, the Theorem
    term, and (exact) the SLQ cross-check and the near-null split."""
    forms, figures, spectrum = report.forms, report.figures, report.evaluation.spectrum
    exact = spectrum.exact_eigenvalues is not None
    method = "exact (dense Hessian)" if exact else "SLQ, [interval covering the exact value]"
    table = Table(title=escape(f"{name}: generalization-bound terms (trained with {report.trained_with}; {method})"))
    table.add_column("quantity")
    for form in forms:
        table.add_column(FORM_TITLES[form], justify="right")
    table.add_row("err_mean = err/d (Table I)", *[_interval(figures[f].err_mean, figures[f].err_mean_interval)
                                                  for f in forms])
    if not exact:
        table.add_row("  stderr over probes", *[f"{figures[f].err_mean_stderr:.2g}" for f in forms])
    table.add_row("err (sum over d)", *[f"{figures[f].err_sum:.6g}" for f in forms])
    table.add_row("Phi (Corollary 3)", *[f"{figures[f].phi:.6g}" for f in forms])
    table.add_row("mass below sigma floor", *[_interval(figures[f].mass_below_floor,
                                                        figures[f].mass_below_floor_interval, 4) for f in forms])
    if all(figures[f].theorem is not None for f in forms):
        table.add_row("Theorem term (Q = diag(H)^-1/2)", *[_theorem(figures[f]) for f in forms])
        table.add_row("Phi (Theorem)", *[f"{figures[f].theorem.phi:.6g}" for f in forms])
        table.add_row("H_ii raised to floor", *[str(figures[f].theorem.diag_floored) for f in forms])
    else:
        table.add_row("Theorem term (Q = diag(H)^-1/2)", *["not computed" for _ in forms])
    if exact:
        table.add_row("SLQ cross-check err_mean", *[_interval(figures[f].slq.err_mean, figures[f].slq.err_mean_interval)
                                                    for f in forms])
        split = figures[forms[0]].near_zero
        table.add_row("near-null: zero rows / logit shift / raised to floor",
                      *[f"{split.deflated_zero_rows} / {split.deflated_logit_shift} / {split.raised_to_floor}"
                        for _ in forms])
    return table


def say_own_form(report) -> None:
    """Which form is the checkpoint's own and which shown form is a counterfactual comparison."""
    if report.own_form is None:
        return
    own = FORM_TITLES[report.own_form]
    lam = f" (lambda read as: {report.lam_reading})" if report.lam_reading else ""
    others = [FORM_TITLES[f] for f in report.forms if f != report.own_form]
    if not others:
        say(f"{report.trained_with} trained this checkpoint: {own} is its own bound form{lam}")
    elif report.own_form in report.forms:
        say(f"{report.trained_with} trained this checkpoint: its own bound form is {own}{lam}; "
            f"{others[0]} is a counterfactual comparison")
    else:
        say(f"{report.trained_with} trained this checkpoint, whose own bound form is {own}{lam}: {others[0]} "
            "shown here is a counterfactual comparison")


def render_refinement(refinement, settings) -> None:
    """What the adaptive SLQ did (nothing when it was off or the spectrum exact)."""
    if refinement is None or refinement.status in ("off", "exact"):
        return
    if refinement.status == "met":
        say(f"adaptive SLQ: every err/d interval within rtol {refinement.rtol:g} "
            f"({refinement.probes} probes x {refinement.steps} steps, {refinement.hvps} extra HVPs)")
    else:
        say(f"adaptive SLQ: HVP cap {settings.refine_cap()} reached before rtol {refinement.rtol:g}: widest err/d interval "
            f"is +/- {100 * refinement.worst_relative_half_width:.2g}% ({refinement.probes} probes x {refinement.steps} "
            "steps); raise --max-hvps, or use --exact on for models up to 20,000 parameters")


def render_sweep(name: str, rows, forms: list[str]) -> None:
    """One line per swept value: err/d, Phi, the Theorem term and the mass under the floor of each form."""
    table = Table(title=f"sweep over {name} (same spectrum; everything else fixed)")
    table.add_column(name, justify="right")
    for form in forms:
        for label in ("err_mean", "Phi", "Theorem term", "mass < floor"):
            table.add_column(f"{FORM_TITLES[form].split(' ')[0]} {label}", justify="right")
    for row in rows:
        cells = [f"{row.value:g}"]
        for form in forms:
            fig = row.figures[form]
            cells += [_interval(fig.err_mean, fig.err_mean_interval, 5), f"{fig.phi:.4g}", _theorem(fig, 5),
                      f"{fig.mass_below_floor:.3g}"]
        table.add_row(*cells)
    console.print(table)
