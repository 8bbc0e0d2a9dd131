"""Command-line interface: parse, call the library, render. The only module that knows about the terminal."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, defaults
from .errors import Interrupted, WdboundError, about
from .progress import Observer

# torch.jit's deprecation notice fires on import of torchvision; it says nothing about the user's run.
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Hessian spectra of trained networks and the AdamW / l2-Adam generalization-bound terms "
                       "of Zhou et al. (TPAMI 2024).")
# Off a terminal (pipes, CI logs) rich would wrap at 80 columns; tables read better wider.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"wdbound {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """wdbound: weight-decay generalization bounds from Hessian spectra."""


# The library's parameter names whose flag is not "--" + the name with dashes.
FLAGS = {"eta": "--lr", "lam": "--wd", "b": "--batch-size", "n": "--n-train"}


def flag_of(param: str) -> str:
    """The flag that sets the library parameter ``param`` (``eta`` -> ``--lr``, ``top_k`` -> ``--top-k``).

    >>> flag_of("eta"), flag_of("sigma_floor")
    ('--lr', '--sigma-floor')
    """
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def print_error(exc: BaseException | str) -> None:
    """One line on stderr, never wrapped, never interpreted as markup, ending with the flag that fixes it when
    the library named a parameter; control characters that came in with the input (a key, a path) are shown
    escaped, so the error stays one line."""
    text = str(exc)
    param = getattr(exc, "param", None)
    if param and flag_of(param) not in text:
        text = f"{text} (pass {flag_of(param)})"
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    err_console.print(f"error: {text}", highlight=False, soft_wrap=True, markup=False)


def say(text: str) -> None:
    """Print one plain line on stdout (no markup, no highlighting, never wrapped)."""
    console.print(text, highlight=False, soft_wrap=True, markup=False)


def progress_bar():
    """rich's bar on a terminal; elsewhere (log files, CI, nohup) a :class:`LogProgress` line every ~10 s."""
    if not err_console.is_terminal:
        return LogProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=False)


class LogProgress:
    """Progress for a stderr that is not a terminal: one plain line per task at most every ``interval``
    seconds (``$WDBOUND_PROGRESS_INTERVAL``, default 10): done / planned (HVPs: at most), elapsed, ETA. The
    subset of rich's ``Progress`` the commands use."""

    def __init__(self, interval: float | None = None) -> None:
        import os
        import time

        self.clock = time.monotonic
        self.interval = float(os.environ.get("WDBOUND_PROGRESS_INTERVAL", 10.0)) if interval is None else interval
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total=None, info: str = "", **_fields) -> int:
        """Start a task; returns its id."""
        now = self.clock()
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": 0, "start": now,
                                       "last": now, "info": info, "upper": bool(_fields.get("upper"))}
        return len(self.tasks) - 1

    def advance(self, task: int, amount: float = 1) -> None:
        """Add ``amount`` to a task's progress."""
        self.update(task, completed=self.tasks[task]["completed"] + amount)

    def update(self, task: int, *, total=None, completed=None, info: str | None = None, **_fields) -> None:
        """Set a task's total / progress / info; logs a line when ``interval`` seconds have passed."""
        state = self.tasks[task]
        if total is not None:
            state["total"] = total
        if completed is not None:
            state["completed"] = completed
        if info is not None:
            state["info"] = info
        now = self.clock()
        if now - state["last"] >= self.interval:
            state["last"] = now
            self._log(state, now)

    def _log(self, state: dict, now: float) -> None:
        elapsed, done, total = now - state["start"], state["completed"], state["total"]
        # An HVP total is an upper estimate (the single pass and the trace stop at their targets): so is its ETA.
        bound = " at most" if state["upper"] else ""
        planned = (f"{done:g}/{total:g}{bound} ({100 * done / total:.0f}%)" if total else f"{done:g}")
        eta = (f", ETA{bound} {_clock(elapsed * (total - done) / done)}" if total and 0 < done < total else "")
        err_console.print(f"[progress] {state['description']}: {planned}, elapsed {_clock(elapsed)}{eta}"
                          + (f" ({state['info']})" if state["info"] else ""), highlight=False, markup=False,
                          soft_wrap=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def show_plan(plan) -> None:
    """The memory plan, on stderr before the first HVP."""
    err_console.print(plan.summary(), highlight=False, markup=False, soft_wrap=True)


def deprecated_alias(old: str, old_value, new: str, new_value, default):
    """The value of a renamed flag: the new spelling's, or the old one's with a warning that says so (both given
    and different is an error)."""
    if old_value is None:
        return new_value
    if new_value != default and new_value != old_value:
        raise WdboundError(f"{old} is the old spelling of {new}; give one of them", new.lstrip("-"))
    err_console.print(f"warning: {old} is deprecated here; use {new} {old_value}")
    return old_value


def parse_kwargs(items: List[str]) -> dict:
    """``key=value`` pairs with JSON values where they parse (``depth=4``, ``cifar_stem=false``)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise WdboundError(f"--arch-kwarg {item!r} is not key=value", "arch_kwarg")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# ---------------------------------------------------------------- train

@app.command(short_help="Train a model with one of the papers' optimizers.")
def train(
    arch: str = typer.Option("digits-mlp", help="Architecture registry name (digits-mlp, digits-cnn, digits-vit, resnet18, resnet50, vit_b_16, timm:NAME)."),
    model: Optional[str] = typer.Option(None, help="Deprecated spelling of --arch (still accepted; says so)."),
    optimizer: str = typer.Option("adamw", help="The training rule: adamw, adamw-d, l2-adam, l2-adam-d, adamprox, adams (stable weight decay) or adal (docs/maths.md, \"The optimizers\")."),
    data: str = typer.Option("digits", help="Data spec: digits, cifar10:PATH or imagefolder:PATH."),
    epochs: int = typer.Option(30, help="Passes over the training set."),
    lr: float = typer.Option(1e-3, help="Peak learning rate eta (dimensionless step size)."),
    wd: float = typer.Option(5e-4, help="Weight decay lambda; for -D variants the constant c1 of lambda_k = c1*gamma^k."),
    wd_gamma: Optional[float] = typer.Option(None, help="gamma of lambda_k = c1*gamma^k, per iteration (-D variants only; paper: 0.99999)."),
    schedule: str = typer.Option("constant", help="Learning-rate schedule: constant, cosine (to --lr-min) or step (x0.1 at 50% and 75%)."),
    lr_min: float = typer.Option(0.0, help="Final learning rate of the cosine schedule."),
    batch_size: int = typer.Option(64, help="Minibatch size b (examples per step)."),
    seed: int = typer.Option(0, help="Seed of the initialisation and the batch order."),
    arch_kwarg: List[str] = typer.Option([], help="Architecture argument key=value, repeatable (e.g. depth=8)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels for imagefolder data (default 32)."),
    record_updates: bool = typer.Option(False, "--record-updates", help="Store update-magnitude histograms (counts per log2 bin per layer) after every epoch, for `wdbound updates`."),
    adal_norm: str = typer.Option("global", help="AdaL only: l1 norm over the whole gradient (global, the paper) or per parameter tensor (tensor)."),
    scale_wd_with_batch: Optional[int] = typer.Option(None, help="Weight-decay linear scaling rule (SWD paper, Rule 2): use --wd * batch-size / BASE_BATCH."),
    eps: float = typer.Option(1e-8, help="Adam's epsilon (outside the square root)."),
    out: Path = typer.Option(..., help="Checkpoint to write (.pt or .safetensors); written atomically."),
) -> None:
    """Train a model with one of the paper's optimizers and write a wdbound checkpoint."""
    from .io_utils import check_output

    check_output(out)
    from .checkpoints import save_checkpoint
    from .train import TrainConfig, train as run_training

    model = deprecated_alias("--model", model, "--arch", arch, "digits-mlp")
    config = TrainConfig(model=model, optimizer=optimizer, data=data, epochs=epochs, lr=lr, wd=wd, wd_gamma=wd_gamma,
                         schedule=schedule, lr_min=lr_min, batch_size=batch_size, seed=seed,
                         arch_kwargs=parse_kwargs(arch_kwarg), image_size=image_size,
                         record_updates=record_updates, adal_norm=adal_norm, wd_base_batch=scale_wd_with_batch,
                         eps=eps)
    with progress_bar() as bar:
        task = bar.add_task(f"train {model} / {optimizer}", total=None, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.4f}")

        net, contents = run_training(config, on_step)
    save_checkpoint(out, net, **contents)
    metrics, facts = contents["metrics"], contents["train"]
    say(f"wrote {out}: {facts['parameters']} parameters, test acc {100 * metrics['test_acc']:.2f}%, "
                  f"test loss {metrics['test_loss']:.4f}, last eta {facts['eta']:.3g}, last lambda {facts['lam']:.3g}")


# ---------------------------------------------------------------- progress

class BarObserver(Observer):
    """The library's progress drawn on a rich bar (or ``[progress]`` lines off a terminal), the memory plan on
    stderr, failed items as one error line each."""

    def __init__(self, bar, items_label: str = "checkpoints") -> None:
        self.bar, self.items_label = bar, items_label
        self.task = self.overall = None
        self.planned: tuple[str, int | None] = ("", None)

    def items(self, total: int) -> None:
        self.overall = self.bar.add_task(self.items_label, total=total, info="")

    def plan(self, plan) -> None:
        show_plan(plan)
        label, total = self.planned
        if total:
            err_console.print(f"HVP plan for {label}: at most {total:,} Hessian-vector products",
                              highlight=False, markup=False, soft_wrap=True)

    def start(self, label: str, total: int | None) -> None:
        self.planned = (label, total)
        self.task = self.bar.add_task(f"HVPs {label}", total=total, info="", upper=True)

    def hvps(self, count: int) -> None:
        self.bar.advance(self.task, count)

    def done(self, hvps: int) -> None:
        self.bar.update(self.task, total=max(hvps, 1), completed=max(hvps, 1), info="cached" if hvps == 0 else "")

    def item(self, label: str) -> None:
        if self.overall is not None:
            self.bar.advance(self.overall)
        elif self.task is not None:
            self.bar.update(self.task, info=label)

    def failed(self, label: str, error: WdboundError) -> None:
        print_error(about(label, error))


# ---------------------------------------------------------------- scale-freeness

@app.command("scale-freeness", short_help="Is an optimizer scale-free? (paired runs)")
def scale_freeness(
    arch: str = typer.Option("digits-mlp", help="Architecture registry name."),
    model: Optional[str] = typer.Option(None, help="Deprecated spelling of --arch (still accepted; says so)."),
    optimizer: str = typer.Option("adamw,adamprox,l2-adam", help="Training rules to test, comma-separated."),
    scale: float = typer.Option(1024.0, help="The constant c: train on c * loss (or, with --layer, that parameter's gradient times c). A power of two keeps float rounding out of the comparison."),
    layer: Optional[str] = typer.Option(None, help="Scale only this parameter's gradient coordinates (e.g. 0.weight): the paper's per-coordinate definition."),
    eps: str = typer.Option("1e-8,1e-16", help="Adam's epsilon values to try, comma-separated (scale-freeness holds as eps -> 0)."),
    data: str = typer.Option("digits", help="Data spec."),
    epochs: int = typer.Option(5, help="Epochs per run."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    wd: float = typer.Option(5e-2, help="Weight decay lambda."),
    batch_size: int = typer.Option(64, help="Minibatch size."),
    seed: int = typer.Option(0, help="Seed of both runs (identical initialisation and batch order)."),
    dtype: str = typer.Option("float64", help="float64 (default: no rounding drift) or float32."),
    arch_kwarg: List[str] = typer.Option([], help="Architecture argument key=value, repeatable."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the per-epoch drifts with the settings as JSON."),
) -> None:
    """Is the optimizer scale-free here? Train twice from one seed, on the loss and on c * loss, and report the drift."""
    from .io_utils import check_output, write_json_atomic
    from .scale_freeness import SCALE_FREE_TOL, parse_eps, study
    from .train import TrainConfig

    check_output(json_path)
    model = deprecated_alias("--model", model, "--arch", arch, "digits-mlp")
    names = [o.strip() for o in optimizer.split(",") if o.strip()]
    base = TrainConfig(model=model, data=data, epochs=epochs, lr=lr, wd=wd, batch_size=batch_size, seed=seed,
                       arch_kwargs=parse_kwargs(arch_kwarg), dtype=dtype)
    eps_values = parse_eps(eps)
    with progress_bar() as bar:
        task = bar.add_task("scale-freeness runs", total=len(names) * len(eps_values) * 2, info="")
        result = study(base, names, eps_values, scale, layer, on_pair=lambda: bar.advance(task, 2))
    target = f"gradient of {layer}" if layer else "loss"
    out = Table(title=f"scale-freeness: {target} x {scale:g}, {model}, {epochs} epochs, lr {lr:g}, wd {wd:g}, {dtype}")
    for column in ("optimizer", "eps", "relative drift per epoch", "max |dx| (last)", "scale-free here?"):
        out.add_column(column, justify="left" if column == "optimizer" else "right")
    for r in result.reports:
        out.add_row(r.optimizer, f"{r.eps:g}", " ".join(f"{e.relative:.1e}" for e in r.epochs),
                    f"{r.epochs[-1].max_abs:.2e}", "yes" if r.scale_free else "no")
    console.print(out)
    say(f"'scale-free here' = relative parameter drift <= {SCALE_FREE_TOL:g} after the last epoch "
        "(||x - x'|| / ||x||; both runs share seed and batch order)")
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, result.to_json())}")


# ---------------------------------------------------------------- summary

@app.command(short_help="List checkpoints and their recorded facts.")
def summary(paths: List[Path] = typer.Argument(..., help="Checkpoint files or folders of them."),
            json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the rows (with each file's sha256) and the files that did not load as JSON.")) -> None:
    """List checkpoints: architecture, optimizer, parameters, eta, lambda, b, n, test accuracy."""
    from .checkpoints import checkpoint_paths, summarise
    from .io_utils import check_output, write_json_atomic
    from .provenance import library_versions

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


# ---------------------------------------------------------------- shared options

class Opt:
    """Options shared by the analysis commands (one definition, one help text)."""

    data = typer.Option(None, help="Data spec to evaluate on: digits, cifar10:PATH, imagefolder:PATH (default: the checkpoint's training data).")
    split = typer.Option("test", help="Split the Hessian is evaluated on: test (the paper's choice) or train.")
    max_samples = typer.Option(None, help="Use N examples of the split, a random subset drawn with --subset-seed (recorded in the JSON; default: all).")
    subset_seed = typer.Option(0, help="Seed of the --max-samples subset (independent of --seed, which draws the probes).")
    probes = typer.Option(defaults.PROBES, help="SLQ Rademacher probes k (few, long runs: the err/d interval's width is the quadrature's, which more steps shrink; below 8 probes the probe part of the interval comes from a variance bound, docs/intervals.md).")
    steps = typer.Option(None, help=f"Lanczos steps m per probe (default: {defaults.STEPS}, at most d).")
    theorem_probes = typer.Option(defaults.THEOREM_PROBES, help="Probes of each Theorem 6/7 Lanczos run (their stderr is the probes' spread).")
    theorem_steps = typer.Option(defaults.THEOREM_STEPS, help="Lanczos steps of each Theorem 6/7 run.")
    top_k = typer.Option(defaults.TOP_K, help="How many largest eigenvalues to report (at most 300 from Lanczos; up to d with --exact on).")
    diag_probes = typer.Option(0, help="Extra Hutchinson probes for the diagonal, on top of the k SLQ probes.")
    err_diag_probes = typer.Option(None, "--diag-probes", help="Extra Hutchinson probes for the diagonal of Q, on top of the k SLQ probes (default: as many as make --theorem-probes samples when the diagonal is estimated, i.e. above 20,000 parameters with --diagonal auto).")
    seed = typer.Option(0, help="Seed of every random probe.")
    device = typer.Option("auto", help="auto (CUDA when present), cpu or cuda[:N].")
    dtype = typer.Option("float64", help="float64 (default; accurate small eigenvalues) or float32 (faster on GPU).")
    hvp = typer.Option("auto", help="HVP mode: auto (double backward through a gradient graph kept for the whole run when the memory plan has room for it; else double backward for models with convolutions or attention, forward-over-reverse otherwise: the faster one measured), forward-over-reverse or double-backward.")
    hvp_batch_size = typer.Option(512, help="Examples per streamed HVP chunk (memory knob; results do not depend on it).")
    exact = typer.Option("off", "--exact", help="Dense Hessian (models up to 20,000 parameters) for exact values: on, off, or auto (on up to 10,000 parameters).")
    exact_auto = typer.Option("auto", "--exact", help="Exact values from the dense Hessian: auto (up to 10,000 parameters, d HVPs), on (up to 20,000) or off (SLQ with intervals).")
    diagonal = typer.Option("auto", help="Diagonal for Q = diag(H)^-1/2 of the Theorem term: exact (d HVPs), hutchinson, or auto (exact up to 20,000 parameters).")
    rtol = typer.Option(defaults.RTOL, help="Adaptive SLQ: add probes / Lanczos steps until each err/d interval's half-width is <= rtol * err/d (0: fixed settings).")
    max_hvps = typer.Option(None, help="HVPs the adaptive SLQ may add to reach --rtol (default 0: the planned HVPs are what the run spends); when hit, the output says so and gives the wider interval.")
    arch = typer.Option(None, help="Architecture of a plain state_dict checkpoint (registry name).")
    model_factory = typer.Option(None, help="module:function building your own nn.Module (kwargs from --arch-kwarg); the state_dict or safetensors file is then loaded into it. This imports and runs your code.")
    loss = typer.Option("cross-entropy", help="Loss whose Hessian is analysed: cross-entropy (the paper's; the bounds assume it), label-smoothing:EPS, or mse (on one-hot targets).")
    arch_kwarg = typer.Option([], help="Architecture argument key=value for a plain state_dict, repeatable.")
    lr = typer.Option(None, help="Override eta, the last learning rate used in training.")
    wd = typer.Option(None, help="Override lambda, the weight decay at the last training step.")
    batch_size = typer.Option(None, help="Override b, the training minibatch size.")
    n_train = typer.Option(None, help="Override n, the training-set size.")
    cache_dir = typer.Option(None, help="Spectrum cache folder (default $WDBOUND_CACHE_DIR, else ~/.cache/wdbound).")
    no_cache = typer.Option(False, "--no-cache", help="Neither read nor write the spectrum cache.")
    memory = typer.Option("auto", help="Memory budget, e.g. 8GB or 16GiB; auto: 70% of the free RAM (85% of the free GPU memory on CUDA). The plan is printed before the first HVP; a plan that cannot fit stops the run up front.")
    lanczos = typer.Option("auto", help="Lanczos storage: auto (the memory plan decides), full (whole basis, full re-orthogonalisation) or low-memory (three-term recurrence in probe blocks, thick-restart top-k; docs/low-memory.md).")
    tf32 = typer.Option(False, "--tf32", help="Allow TF32 matmuls / convolutions on CUDA for float32 HVPs (faster, 10-bit mantissa). Off by default.")
    params = typer.Option([], "--params", help="Restrict the Hessian to parameters whose name matches this glob (e.g. 'layer4.*'), repeatable; the others are held fixed.")
    tau = typer.Option(defaults.TAU, help="Confidence: the bound holds with probability 1 - tau.")
    trace = typer.Option(defaults.SPECTRUM_TRACE, help="Trace estimator: deflated (tr over the Krylov space of the run, exact: the single pass's union or a top-k run of at least 40 steps; + Hutchinson on its complement; Chen & Hallman 2023) or hutchinson (the SLQ probes' z^T H z, no extra HVP).")
    trace_probes = typer.Option(defaults.TRACE_PROBES, help="Deflated trace: samples of the first block (the single pass's leave-one-out samples count; at least 2 fresh probes).")
    workers = typer.Option(0, help="DataLoader worker processes for imagefolder / cifar10 data (results do not depend on it).")


def make_cache(cache_dir: Optional[Path], no_cache: bool):
    """The spectrum cache; in a multi-process run rank 0 writes it and no rank reads it."""
    from .cache import Cache, NoCache, WriteOnlyCache
    from .distributed import is_main, shard

    if no_cache or not is_main():
        return NoCache()
    cache = WriteOnlyCache(cache_dir) if shard() is not None else Cache(cache_dir)
    cache.check_writable()
    return cache


def load(path: Path, arch, arch_kwarg, lr, wd, batch_size, n_train, dtype: str = "float32", model_factory=None):
    """The checkpoint as the flags ask: ``--arch`` / ``--model-factory`` / ``--arch-kwarg`` and fact overrides."""
    from .checkpoints import load_checkpoint
    from .curvature import resolve_dtype

    if model_factory is not None:
        if arch is not None:
            raise WdboundError("give either --arch or --model-factory, not both", "model_factory")
        arch = f"factory:{model_factory}"
        arch_kwarg = arch_kwarg or []
    return load_checkpoint(path, arch=arch, arch_kwargs=parse_kwargs(arch_kwarg) if (arch_kwarg or model_factory)
                           else None, lr=lr, wd=wd, batch_size=batch_size, n_train=n_train, dtype=resolve_dtype(dtype))


def spectrum_settings(data, split, max_samples, probes, steps, top_k, diag_probes, seed, device, dtype, hvp,
                      hvp_batch_size, exact, backend="wdbound", **more):
    """The validated SpectrumSettings of the shared analysis flags."""
    from .spectrum import SpectrumSettings

    settings = SpectrumSettings(data=data, split=split, max_samples=max_samples, probes=probes, steps=steps,
                                top_k=top_k, diag_probes=diag_probes, seed=seed, device=device, dtype=dtype, hvp=hvp,
                                batch_size=hvp_batch_size, exact=exact, backend=backend, **more)
    settings.validate()
    return settings


# ---------------------------------------------------------------- spectrum

@app.command(short_help="Hessian spectrum: top-k, density, trace, diagonal.")
def spectrum(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt wdbound/1, .safetensors, or a plain state_dict with --arch)."),
    data: Optional[str] = Opt.data, split: str = Opt.split, max_samples: Optional[int] = Opt.max_samples,
    probes: Optional[int] = typer.Option(None, help=f"SLQ Rademacher probes k (density, the single pass, the Hutchinson diagonal). Default: from the dimension d, the fewest (at least {defaults.SPECTRUM_MIN_PROBES}, at most {defaults.SPECTRUM_PROBES}) whose worst-case density sampling error W1 <= {defaults.SPECTRUM_SAMPLING_TOL:g} x the spectrum's range: {defaults.SPECTRUM_PROBES} below d = 100,000 (on the zoo: W1 below PyHessian's default density on 9 of 10 seeds), 2 from d = 250,000 (docs/decisions.md)."),
    steps: int = typer.Option(defaults.SPECTRUM_STEPS, help="Lanczos steps m per SLQ probe (at most, with --single-pass: the run stops when the targets below are met)."),
    single_pass: bool = typer.Option(defaults.SINGLE_PASS, "--single-pass/--separate-top", help="Single pass (default): top-k, the trace's deflation space and the density all from the SLQ probes' Krylov spaces (Rayleigh-Ritz on their union, each value with an error bound: its residual, tightened by the gap to the other Ritz values; a separate top-k Lanczos run only if the union cannot certify top-k). It keeps the probes' bases: the memory plan caps its steps to what fits, and it is off with --lanczos low-memory. --separate-top: a top-k Lanczos run of its own first."),
    top_rtol: float = typer.Option(defaults.SPECTRUM_TOP_RTOL, help="Single pass: target for the top-k error bounds, |theta - lambda| <= top-rtol x |theta| (the residual r, or r^2/gap when the gap to the other Ritz values exceeds 10 r: Parlett 1998, 11.7; the gap is estimated from the Ritz values, as Lanczos codes do)."),
    density_tol: float = typer.Option(defaults.SPECTRUM_DENSITY_TOL, help=f"Single pass: every {defaults.SPECTRUM_CHECK_EVERY} steps, stop once top-k is certified and the density (converged Ritz pairs as exact atoms) moved by W1 <= density-tol x lambda_max since the last check (two estimates within e of the density are <= 2e apart: the default aims at W1 ~1e-3 x lambda_max; 0: all --steps)."),
    top_k: int = Opt.top_k, diag_probes: int = Opt.diag_probes, seed: int = Opt.seed, device: str = Opt.device,
    dtype: str = typer.Option(defaults.SPECTRUM_DTYPE, help="HVP precision: float32 (default here: 5x faster HVPs through convolutions on CPU; Lanczos vectors, recurrences and quadrature stay float64; top-k residuals certified to --top-rtol) or float64 (small eigenvalues to full precision; what err uses)."),
    hvp: str = Opt.hvp, hvp_batch_size: int = Opt.hvp_batch_size, exact: str = Opt.exact,
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
    from .io_utils import check_output, write_json_atomic
    from .models import count_parameters
    from .plots import check_plot_path, plot_density
    from .spectrum import analyse_spectrum, per_layer_json, per_layer_spectra, resolve_exact, write_spectrum_json

    check_output(json_path)
    check_output(plot)
    check_plot_path(plot)
    ckpt = load(checkpoint, arch, arch_kwarg, None, None, None, None, dtype, model_factory)
    settings = spectrum_settings(data, split, max_samples, probes, steps, top_k, diag_probes, seed, device, dtype,
                                 hvp, hvp_batch_size, resolve_exact(exact, count_parameters(ckpt.model)), backend,
                                 diagonal="hutchinson", loss=loss, memory=memory, lanczos=lanczos, tf32=tf32,
                                 params=tuple(params), workers=workers, subset_seed=subset_seed, trace=trace,
                                 trace_probes=trace_probes, trace_rtol=trace_rtol, ends=ends,
                                 single_pass=single_pass, top_rtol=top_rtol, density_tol=density_tol)
    cache = make_cache(cache_dir, no_cache)
    with progress_bar() as bar:
        if per_layer:
            layers = per_layer_spectra(ckpt, settings, cache, BarObserver(bar))
        else:
            result = analyse_spectrum(ckpt, settings, cache, BarObserver(bar))
    if per_layer:
        render_layers(layers, checkpoint.name)
        if json_path is not None:
            say(f"wrote {write_json_atomic(json_path, per_layer_json(ckpt, settings, layers))}")
        return
    render_spectrum(result)
    if plot is not None:
        plot_density(result, plot, f"{checkpoint.name}: Hessian spectral density ({settings.split} split)")
        say(f"wrote {plot}")
    if json_path is not None:
        say("wrote {} and {}".format(*write_spectrum_json(result, json_path)))


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


# ---------------------------------------------------------------- err

RHO_HELP = ("Prior variance rho of N(0, rho I). Default: 1/sqrt(input dimension) of the model "
            "(the paper: of order 1/sqrt(d_i)); 0.125 for 8x8 digits.")
FORM_CHOICES = {"both": ["adamw", "l2-adam"], "adamw": ["adamw"], "l2-adam": ["l2-adam"]}


@app.command(short_help="err_AdamW vs err_l2-Adam and Theorem 6/7 terms.")
def err(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to evaluate."),
    form: str = typer.Option("both", help="Bound form: adamw (Theorem 6, err_AdamW), l2-adam (Theorem 7, err_l2-Adam) or both."),
    optimizer: Optional[str] = typer.Option(None, help="Deprecated spelling of --form (still accepted; says so). --optimizer names the training rule elsewhere."),
    rho: Optional[float] = typer.Option(None, help=RHO_HELP),
    tau: float = Opt.tau,
    sigma_floor: float = typer.Option(defaults.SIGMA_FLOOR, help="Singular values (and H_ii) below this are raised to it; the mass affected is reported."),
    sweep: List[str] = typer.Option([], help="Re-evaluate for several values, e.g. rho=0.01,0.1,1 or sigma-floor=1e-8,1e-6,1e-4 "
                                             "(also tau, wd, lr); repeatable. Uses the same spectrum."),
    data: Optional[str] = Opt.data, split: str = Opt.split, max_samples: Optional[int] = Opt.max_samples,
    probes: int = Opt.probes, steps: Optional[int] = Opt.steps, diag_probes: Optional[int] = Opt.err_diag_probes,
    seed: int = Opt.seed, theorem_probes: int = Opt.theorem_probes, theorem_steps: int = Opt.theorem_steps,
    device: str = Opt.device, dtype: str = Opt.dtype, hvp: str = Opt.hvp, hvp_batch_size: int = Opt.hvp_batch_size,
    exact: str = Opt.exact_auto, diagonal: str = Opt.diagonal, rtol: float = Opt.rtol, max_hvps: Optional[int] = Opt.max_hvps,
    arch: Optional[str] = Opt.arch, arch_kwarg: List[str] = Opt.arch_kwarg,
    model_factory: Optional[str] = Opt.model_factory, loss: str = Opt.loss,
    lr: Optional[float] = Opt.lr, wd: Optional[float] = Opt.wd, batch_size: Optional[int] = Opt.batch_size,
    n_train: Optional[int] = Opt.n_train, cache_dir: Optional[Path] = Opt.cache_dir, no_cache: bool = Opt.no_cache,
    memory: str = Opt.memory, lanczos: str = Opt.lanczos, tf32: bool = Opt.tf32, params: List[str] = Opt.params,
    workers: int = Opt.workers, subset_seed: int = Opt.subset_seed,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the figures, their inputs and the spectrum provenance as JSON."),
) -> None:
    """Corollary 3 (err_AdamW vs err_l2-Adam, the Table I quantity), Phi, and the exact Theorem 6/7 terms."""
    from .analysis import bound_inputs, evaluate_err, parse_sweep
    from .io_utils import check_output, write_json_atomic
    from .spectrum import resolve_exact

    check_output(json_path)
    asked = optimizer if optimizer is not None else form
    forms = FORM_CHOICES.get(asked)
    if forms is None:  # before the deprecation warning: a bad value is one line
        raise WdboundError(f"unknown --form {asked!r}; use adamw, l2-adam or both", "form")
    deprecated_alias("--optimizer", optimizer, "--form", form, "both")
    sweeps = [parse_sweep(item) for item in sweep]
    ckpt = load(checkpoint, arch, arch_kwarg, lr, wd, batch_size, n_train, dtype, model_factory)
    inputs = bound_inputs(ckpt, rho=rho, tau=tau, sigma_floor=sigma_floor, params=tuple(params))
    if diag_probes is None:
        diag_probes = defaults.q_diagonal_probes(inputs.d, probes, theorem_probes, diagonal)
    settings = spectrum_settings(data, split, max_samples, probes, steps, 1, diag_probes, seed, device, dtype, hvp,
                                 hvp_batch_size, resolve_exact(exact, inputs.d), diagonal=diagonal, rtol=rtol,
                                 max_hvps=max_hvps, loss=loss, memory=memory, lanczos=lanczos, tf32=tf32,
                                 params=tuple(params), workers=workers, subset_seed=subset_seed,
                                 theorem_probes=theorem_probes, theorem_steps=theorem_steps)
    with progress_bar() as bar:
        report = evaluate_err(ckpt, settings, inputs, forms, sweeps=sweeps, cache=make_cache(cache_dir, no_cache),
                              observer=BarObserver(bar), label=checkpoint.name)
    render_err(report, checkpoint.name, settings)
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, report.to_json())}")


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
    if exact:
        table.add_row("SLQ cross-check err_mean", *[_interval(figures[f].slq.err_mean, figures[f].slq.err_mean_interval)
                                                    for f in forms])
        split = figures[forms[0]].near_zero
        table.add_row("near-null: zero rows / logit shift / raised to floor",
                      *[f"{split.deflated_zero_rows} / {split.deflated_logit_shift} / {split.raised_to_floor}"
                        for _ in forms])
    console.print(table)
    render_refinement(report.evaluation.analysis.refinement, settings)
    if report.own_form is not None:
        say(f"{report.trained_with} trained this checkpoint: its own bound form is {FORM_TITLES[report.own_form]}"
            + (f" (lambda read as: {report.lam_reading})" if report.lam_reading else "")
            + "; the other form is a counterfactual comparison")
    p = report.evaluation.inputs
    say(f"inputs: d={p.d} n={p.n} b={p.b} eta={p.eta:g} lambda={p.lam:g} rho={p.rho:g} tau={p.tau:g} "
        f"sigma_floor={p.sigma_floor:g}; {len(spectrum.zero_rows)} exactly-zero Hessian rows deflated (exact zero "
        f"eigenvalues); spectrum: {spectrum.hvps} HVPs, {spectrum.wall_seconds:.1f} s"
        + (" (cached)" if spectrum.cached else "") + f"; HVPs this run: {report.evaluation.analysis.hvps}")
    for sweep_name, rows in report.sweeps.items():
        render_sweep(sweep_name, rows, forms)


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


# ---------------------------------------------------------------- table

@app.command(short_help="Table I on your checkpoints or a runs file.")
def table(
    paths: Optional[List[Path]] = typer.Argument(None, help="Checkpoints or folders of them (e.g. checkpoints/); or give --runs."),
    runs: Optional[Path] = typer.Option(None, help="A runs file (.csv or .toml), one row per checkpoint: path, arch, arch_kwargs, model_factory, optimizer, lr, wd, batch_size, n_train, epochs, label, test_acc (docs/runs.md). The flags below fill what a row leaves empty."),
    out: Path = typer.Option(Path("reports"), help="Folder for table1.{md,csv,tex,json} and the plots."),
    format: str = typer.Option("md,csv,tex", "--format", help="Comma-separated subset of md, csv, tex (JSON is always written)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write density plots per checkpoint and one comparison per model."),
    rho: Optional[float] = typer.Option(None, help=RHO_HELP),
    tau: float = Opt.tau,
    sigma_floor: float = typer.Option(defaults.SIGMA_FLOOR, help="Singular values below this are raised to it; the mass affected is reported."),
    data: Optional[str] = Opt.data, split: str = Opt.split, max_samples: Optional[int] = Opt.max_samples,
    probes: int = typer.Option(defaults.TABLE_PROBES, help="SLQ probes k per checkpoint (as `err`: few, long Lanczos runs; the zoo is exact under --exact auto)."),
    steps: Optional[int] = typer.Option(defaults.TABLE_STEPS, help=f"Lanczos steps m per probe (default: {defaults.STEPS}, at most d)."),
    seed: int = Opt.seed, device: str = Opt.device, dtype: str = Opt.dtype, hvp: str = Opt.hvp,
    hvp_batch_size: int = Opt.hvp_batch_size, cache_dir: Optional[Path] = Opt.cache_dir, no_cache: bool = Opt.no_cache,
    exact: str = Opt.exact_auto, rtol: float = Opt.rtol, max_hvps: Optional[int] = Opt.max_hvps,
    memory: str = Opt.memory, lanczos: str = Opt.lanczos, tf32: bool = Opt.tf32, workers: int = Opt.workers, subset_seed: int = Opt.subset_seed,
    layout_name: str = typer.Option("auto", "--layout", help="Markdown layout: long (one row per model and epochs), paper (Table I's column pairs), or auto (long above three groups). The LaTeX keeps the paper's."),
    arch: Optional[str] = Opt.arch, arch_kwarg: List[str] = Opt.arch_kwarg,
    model_factory: Optional[str] = Opt.model_factory, loss: str = Opt.loss,
    optimizer: Optional[str] = typer.Option(None, help="The training rule of plain state_dicts (adamw, adamw-d, l2-adam, l2-adam-d, adamprox, adams, adal): it picks the bound form and Table I's column."),
    lr: Optional[float] = Opt.lr, wd: Optional[float] = Opt.wd, batch_size: Optional[int] = Opt.batch_size,
    n_train: Optional[int] = Opt.n_train,
    epochs: Optional[int] = typer.Option(None, help="Training length in epochs of plain state_dicts (Table I's row)."),
) -> None:
    """Table I (err in bound, test accuracy; constant / decaying; AdamW vs l2-Adam) on your checkpoints."""
    from .checkpoints import checkpoint_paths
    from .io_utils import check_output_folder
    from .runs import RunSpec, read_runs
    from .spectrum import SpectrumSettings
    from .table import TableSettings, finding_lines, run_table, summary_counts

    check_output_folder(out)
    settings = TableSettings(SpectrumSettings(data=data, split=split, max_samples=max_samples, probes=probes,
                                              steps=steps, top_k=1, seed=seed, device=device, dtype=dtype, hvp=hvp,
                                              batch_size=hvp_batch_size, diagonal="hutchinson", rtol=rtol,
                                              max_hvps=max_hvps, memory=memory, lanczos=lanczos, tf32=tf32,
                                              workers=workers, subset_seed=subset_seed, loss=loss),
                             rho, tau, sigma_floor, exact, layout_name,
                             tuple(f.strip() for f in format.split(",") if f.strip()), plots)
    settings.validate()
    if arch is not None and model_factory is not None:
        raise WdboundError("give either --arch or --model-factory, not both", "model_factory")
    shared = RunSpec(Path(), arch, parse_kwargs(arch_kwarg) if arch_kwarg else None, model_factory, optimizer, lr,
                     wd, batch_size, n_train, epochs)
    if not paths and runs is None:
        raise WdboundError("name checkpoints (or a folder of them) or a --runs file", "paths")
    files = [RunSpec(p).with_defaults(shared) for p in checkpoint_paths(list(paths))] if paths else []
    files += [run.with_defaults(shared) for run in (read_runs(runs) if runs is not None else [])]
    with progress_bar() as bar:
        report = run_table(files, settings, cache=make_cache(cache_dir, no_cache), observer=BarObserver(bar))
    if report.failures and not report.rows and not report.interrupted:
        raise typer.Exit(2)  # every checkpoint failed (each said why): no empty table is written
    console.print(rich_table(*report.grid()))
    say(summary_counts(report.findings))
    for line in finding_lines(report.findings):
        say(line)
    tables, figures = report.write(out)
    say(f"wrote {', '.join(map(str, tables))}" + (f" and {len(figures)} plots under {out}" if figures else "")
        + f" ({len(report.rows)} checkpoints, {report.wall_seconds:.0f} s)")
    if report.interrupted or report.failures:
        raise typer.Exit(report.interrupted or 2)


def rich_table(header: list[str], rows: list[list[str]]) -> Table:
    """Table I as a rich table."""
    out = Table(title="Table I on these checkpoints (err/d of the trained-with form; constant / decaying)")
    for i, column in enumerate(header):
        out.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*row)
    return out


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
    from .checkpoints import checkpoint_paths, read_meta
    from .io_utils import check_output, write_json_atomic
    from .plots import check_plot_path, plot_updates
    from .updates import checkpoint_entry, updates_json

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


# ---------------------------------------------------------------- check

@app.command(short_help="Regression-check bounds and committed reports.")
def check(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Check only these baseline checkpoints (default: all); with --update on a new baseline, the checkpoints to record."),
    baseline: Path = typer.Option(Path("reports/baseline.json"), help="Baseline JSON (format wdbound-baseline/1)."),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline (atomically) with the values computed now and say what changed; creates it if missing."),
    junit: Optional[Path] = typer.Option(None, help="Also write the results as JUnit XML (one testcase per checkpoint and metric)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write every comparison (baseline, now, difference, tolerance and its rule, verdict) with the baseline's settings as JSON."),
    probes: int = typer.Option(defaults.CHECK_PROBES, help="New baselines only: SLQ probes k."),
    steps: int = typer.Option(defaults.CHECK_STEPS, help="New baselines only: Lanczos steps m."),
    seed: int = typer.Option(0, help="New baselines only: seed of every probe."),
    max_samples: Optional[int] = typer.Option(None, help="New baselines only: N examples of the test split (a seeded random subset)."),
    table: Optional[Path] = typer.Option(None, help="Also check a committed table1.json against this code: made by this release, its checkpoints unchanged, and --table-cells exact cells recomputed (no cache) to the same err/d, top eigenvalue and accuracy."),
    table_cells: int = typer.Option(4, help="With --table: exact cells to recompute (one per model first)."),
    device: str = Opt.device, memory: str = Opt.memory,
) -> None:
    """Recompute the bounds of a baseline's checkpoints with its settings and seeds; exit 1 if any moved beyond tolerance."""
    from dataclasses import replace as with_

    from .check import Baseline, run_check, verify_table
    from .io_utils import check_output, write_json_atomic, write_text_atomic

    check_output(junit)
    check_output(json_path)
    chosen = list(checkpoints or [])
    base = Baseline.open(baseline, update=update, checkpoints=chosen, probes=probes, steps=steps, seed=seed,
                         max_samples=max_samples)
    with progress_bar() as bar:
        report = run_check(base, checkpoints=chosen, device=device, memory=memory, observer=BarObserver(bar))
        tabled = (verify_table(table, cells=table_cells, device=device, memory=memory, observer=BarObserver(bar))
                  if table is not None else None)
    render_check(report, baseline)
    if tabled is not None:
        render_check(tabled, table)
        if tabled.failed:
            print_error(f"{table} disagrees with this code: "
                        + "; ".join(f"{Path(r.checkpoint).name} {r.metric}" for r in tabled.failed[:4])
                        + " (regenerate it with `make demo`)")
        report = with_(report, results=report.results + tabled.results, seconds=report.seconds + tabled.seconds)
    if junit is not None:
        say(f"wrote {write_text_atomic(junit, report.junit())}")
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, report.to_json(base))}")
    if update:
        base.updated(report).write()
        say(f"wrote {baseline}: {len(report.recorded)} checkpoints; {len(report.changed)} metric values changed"
            + "".join(f"\n  {Path(r.checkpoint).name} {r.metric}: {r.baseline:.10g} -> {r.now:.10g}"
                      for r in report.changed[:20]))
        return
    for r in report.failed:
        print_error(f"regression: {r.checkpoint} {r.metric} moved {r.difference:.3g} (tolerance {r.tolerance:.3g})")
    if report.failed:
        raise typer.Exit(1)


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


# ---------------------------------------------------------------- entry point

def main(argv: Optional[List[str]] = None) -> None:
    """Run the CLI. Bad input is one line on stderr and exit code 2 (SystemExit). Under torchrun with several
    processes, rank 0 alone prints and writes (see :mod:`wdbound.distributed`)."""
    from .distributed import finish, init_from_env, is_main

    previous = _raise_on_signals()
    try:
        init_from_env()
        if not is_main():
            console.quiet = err_console.quiet = True
        app(args=argv, prog_name="wdbound")
    except WdboundError as exc:
        print_error(exc)
        raise SystemExit(2) from None
    except Exception as exc:  # noqa: BLE001 - an allocation failure outside a planned phase is one line too
        from .memory import OutOfMemory, is_allocation_failure

        if not is_allocation_failure(exc):
            raise
        print_error(OutOfMemory("running wdbound", None))
        raise SystemExit(2) from None
    except Interrupted as exc:
        err_console.print(f"interrupted by signal {exc.signum}: finished results are kept (cache, table rows), "
                          "unfinished outputs were not written", highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(exc.code) from None
    finally:
        finish()
        _restore_signals(previous)


def _raise_on_signals() -> dict:
    """SIGINT and SIGTERM raise :class:`Interrupted` (exit 130 / 143) instead of click's generic abort;
    returns the handlers they replace."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame):
        raise Interrupted(signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)
