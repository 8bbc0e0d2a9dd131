"""The options the analysis commands share (one definition, one help text) and what turns them into library
inputs: the cache, the checkpoint and the spectrum settings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import defaults
from ..errors import WdboundError
from .base import parse_kwargs

# Flags whose default differs from the analysis commands' (err's, else table's, else train's) on purpose:
# (flag, command) -> why. Everything else that two commands share has one default.
_TRAINS = "it trains a model, so it needs a value; err and table only override what a checkpoint records"
DIFFERENT_DEFAULTS = {
    ("--arch", "train"): _TRAINS, ("--arch", "scale-freeness"): _TRAINS,
    ("--batch-size", "train"): _TRAINS, ("--batch-size", "scale-freeness"): _TRAINS,
    ("--lr", "train"): _TRAINS, ("--lr", "scale-freeness"): _TRAINS,
    ("--wd", "train"): _TRAINS, ("--wd", "scale-freeness"): _TRAINS + " (AdamW's 0.05 for the paired runs)",
    ("--data", "train"): _TRAINS, ("--data", "scale-freeness"): _TRAINS,
    ("--epochs", "train"): _TRAINS, ("--epochs", "scale-freeness"): _TRAINS + " (short paired runs)",
    ("--optimizer", "train"): "the training rule to train with",
    ("--optimizer", "table"): "each checkpoint records its rule; the flag only fills plain state_dicts",
    ("--eps", "scale-freeness"): "Adam's epsilon values to compare (a comma list)",
    ("--out", "train"): "required: the checkpoint to write",
    ("--exact", "spectrum"): "spectrum is the estimator (off); err and table use the dense Hessian where it is "
                             "cheap (auto)",
    ("--probes", "spectrum"): "spectrum's single pass: 2-5 probes by d for the density, top-k and trace; err and "
                              "table spend on one long run for the bound integrals",
    ("--steps", "spectrum"): "as --probes: 40 steps per probe, stopped early by the accuracy targets",
    ("--dtype", "spectrum"): "float32 HVPs for the density and top-k; the bounds' small eigenvalues need float64",
    ("--diag-probes", "spectrum"): "no extra probes (0); err adds up to 16 when Q's diagonal is estimated (auto)",
    ("--probes", "check"): "a baseline is recorded with 4 short runs so CI checks the whole zoo in minutes",
    ("--steps", "check"): "as --probes",
}


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
    exact_overview = typer.Option("off", "--exact", help="Dense Hessian (models up to 20,000 parameters) for exact values: on, off, or auto (on up to 10,000 parameters).")
    exact_auto = typer.Option("auto", "--exact", help="Exact values from the dense Hessian: auto (up to 10,000 parameters, d HVPs), on (up to 20,000) or off (SLQ with intervals).")
    theorem = typer.Option("auto", help="Theorem 6/7 terms: auto (computed when the spectrum is exact, where they cost no HVP; otherwise not, and the output says how many HVPs --theorem on would add), on or off.")
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
    rho = typer.Option(None, help="Prior variance rho of N(0, rho I). Default: 1/sqrt(input dimension) of the model "
                                  "(the paper: of order 1/sqrt(d_i)); 0.125 for 8x8 digits.")
    sigma_floor = typer.Option(defaults.SIGMA_FLOOR, help="Singular values (and H_ii) below this are raised to it; the mass affected is reported.")
    tau = typer.Option(defaults.TAU, help="Confidence: the bound holds with probability 1 - tau.")
    trace = typer.Option(defaults.SPECTRUM_TRACE, help="Trace estimator: deflated (tr over the Krylov space of the run, exact: the single pass's union or a top-k run of at least 40 steps; + Hutchinson on its complement; Chen & Hallman 2023) or hutchinson (the SLQ probes' z^T H z, no extra HVP).")
    trace_probes = typer.Option(defaults.TRACE_PROBES, help="Deflated trace: samples of the first block (the single pass's leave-one-out samples count; at least 2 fresh probes).")
    spectrum_probes = typer.Option(None, help=f"SLQ Rademacher probes k (density, the single pass, the Hutchinson diagonal). Default: from the dimension d, the fewest (at least {defaults.SPECTRUM_MIN_PROBES}, at most {defaults.SPECTRUM_PROBES}) whose worst-case density sampling error W1 <= {defaults.SPECTRUM_SAMPLING_TOL:g} x the spectrum's range: {defaults.SPECTRUM_PROBES} below d = 100,000 (on the zoo: W1 below PyHessian's default density on 9 of 10 seeds), 2 from d = 250,000 (docs/decisions.md).")
    spectrum_steps = typer.Option(defaults.SPECTRUM_STEPS, help="Lanczos steps m per SLQ probe (at most, with --single-pass: the run stops when the targets below are met).")
    spectrum_single_pass = typer.Option(defaults.SINGLE_PASS, "--single-pass/--separate-top", help="Single pass (default): top-k, the trace's deflation space and the density all from the SLQ probes' Krylov spaces (Rayleigh-Ritz on their union, each value with an error bound: its residual, tightened by the gap to the other Ritz values; a separate top-k Lanczos run only if the union cannot certify top-k). It keeps the probes' bases: the memory plan caps its steps to what fits, and it is off with --lanczos low-memory. --separate-top: a top-k Lanczos run of its own first.")
    spectrum_top_rtol = typer.Option(defaults.SPECTRUM_TOP_RTOL, help="Single pass: target for the top-k error bounds, |theta - lambda| <= top-rtol x |theta| (the residual r, or r^2/gap when the gap to the other Ritz values exceeds 10 r: Parlett 1998, 11.7; the gap is estimated from the Ritz values, as Lanczos codes do).")
    spectrum_density_tol = typer.Option(defaults.SPECTRUM_DENSITY_TOL, help=f"Single pass: every {defaults.SPECTRUM_CHECK_EVERY} steps, stop once top-k is certified and the density (converged Ritz pairs as exact atoms) moved by W1 <= density-tol x lambda_max since the last check (two estimates within e of the density are <= 2e apart: the default aims at W1 ~1e-3 x lambda_max; 0: all --steps).")
    spectrum_dtype = typer.Option(defaults.SPECTRUM_DTYPE, help="HVP precision: float32 (default here: 5x faster HVPs through convolutions on CPU; Lanczos vectors, recurrences and quadrature stay float64; top-k residuals certified to --top-rtol) or float64 (small eigenvalues to full precision; what err uses).")
    spectrum_ends = typer.Option(defaults.SPECTRUM_ENDS, "--ends/--no-ends", help=f"Also find the lower end of the spectrum (up to {defaults.ENDS_MAX_STEPS} HVPs; err's quadrature intervals need it; recorded as 'support').")
    fsdp = typer.Option(False, "--fsdp", help="Under torchrun: shard the model with FSDP2 over the processes and take every figure from finite-difference HVPs, their measured error added to each bound and interval (docs/scale.md).")
    spectrum_trace_rtol = typer.Option(defaults.SPECTRUM_TRACE_RTOL, help=f"Accuracy target of the deflated trace: the SLQ probes' own leave-one-out samples and a first block up to --trace-probes, then the probes its standard error says are missing (at most {defaults.TRACE_MAX_PROBES} in all), until it is <= trace-rtol x |trace| (0: one block).")
    spectrum_per_layer = typer.Option(False, "--per-layer", help="One spectrum per parameter tensor (its diagonal Hessian block; with --params, the matching ones): top-1, trace, density.")
    spectrum_backend = typer.Option("wdbound", help="wdbound (default) or pyhessian: PyHessian 0.1's estimators on the same model, data and loss, for a cross-check (pip install 'wdbound[pyhessian]').")
    workers = typer.Option(0, help="DataLoader worker processes for imagefolder / cifar10 data (results do not depend on it).")



def make_cache(cache_dir: Optional[Path], no_cache: bool):
    """The spectrum cache; in a multi-process run rank 0 writes it and no rank reads it."""
    from ..cache import Cache, NoCache, WriteOnlyCache
    from ..distributed import is_main, shard

    if no_cache or not is_main():
        return NoCache()
    cache = WriteOnlyCache(cache_dir) if shard() is not None else Cache(cache_dir)
    cache.check_writable()
    return cache


def load(path: Path, arch, arch_kwarg, lr, wd, batch_size, n_train, dtype: str = "float32", model_factory=None):
    """The checkpoint as the flags ask: ``--arch`` / ``--model-factory`` / ``--arch-kwarg`` and fact overrides."""
    from ..checkpoints import load_checkpoint
    from ..curvature import resolve_dtype

    if model_factory is not None:
        if arch is not None:
            raise WdboundError("give either --arch or --model-factory, not both", "model_factory")
        arch = f"factory:{model_factory}"
        arch_kwarg = arch_kwarg or []
    return load_checkpoint(path, arch=arch, arch_kwargs=parse_kwargs(arch_kwarg) if (arch_kwarg or model_factory)
                           else None, lr=lr, wd=wd, batch_size=batch_size, n_train=n_train, dtype=resolve_dtype(dtype))


# The options that say which model and which evaluation set a run used: `spectrum` records them beside the cache
# and `err` without a checkpoint takes them (where its own are at their defaults).
RECORDED = ("arch", "arch_kwarg", "model_factory", "data", "split", "max_samples", "subset_seed", "loss", "params",
            "device", "hvp_batch_size", "workers")

# The SpectrumSettings fields set from the option of the same name by every analysis command.
COMMON_SETTINGS = ("data", "split", "max_samples", "probes", "steps", "seed", "device", "dtype", "hvp", "loss",
                   "memory", "lanczos", "tf32", "workers", "subset_seed")


def load_from(opts: dict, **facts):
    """:func:`load` of a command's options (``opts``: click's ``ctx.params``, possibly completed) with the
    training-fact overrides in ``facts`` (lr, wd, batch_size, n_train)."""
    return load(Path(opts["checkpoint"]), opts.get("arch"), opts.get("arch_kwarg") or [], facts.get("lr"),
                facts.get("wd"), facts.get("batch_size"), facts.get("n_train"), opts.get("dtype", "float32"),
                opts.get("model_factory"))


def settings_from(opts: dict, keys: tuple[str, ...] = (), **fixed):
    """The validated SpectrumSettings of a command's options: the shared ones, the command's own ``keys`` (same
    name as the field) and the values in ``fixed``."""
    from ..spectrum import SpectrumSettings

    values = {name: opts[name] for name in COMMON_SETTINGS + keys if name in opts}
    values.update(batch_size=opts["hvp_batch_size"], params=tuple(opts.get("params") or ()), **fixed)
    settings = SpectrumSettings(**values)
    settings.validate()
    return settings
