"""`wdbound train` and `wdbound scale-freeness`: the papers' optimizers on a model."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .base import deprecated_alias, app, console, parse_kwargs, say
from ..progress import progress_bar


# ---------------------------------------------------------------- train

@app.command(short_help="Train a model with one of the papers' optimizers.")
def train(
    arch: str = typer.Option("digits-mlp", help="Architecture registry name (digits-mlp, digits-cnn, digits-vit, resnet18, resnet50, vit_b_16, timm:NAME)."),
    model: Optional[str] = typer.Option(None, hidden=True, help="Old spelling of --arch (still accepted; says so)."),
    optimizer: str = typer.Option("adamw", help="The training rule: adamw, adamw-d, l2-adam, l2-adam-d, adamprox, adams (stable weight decay) or adal (docs/maths.md, \"The optimizers\")."),
    data: str = typer.Option("digits", help="Data spec: digits, cifar10:PATH or imagefolder:PATH."),
    epochs: int = typer.Option(30, help="Passes over the training set."), lr: float = typer.Option(1e-3, help="Peak learning rate eta (dimensionless step size)."),
    wd: float = typer.Option(5e-4, help="Weight decay lambda; for -D variants the constant c1 of lambda_k = c1*gamma^k."),
    wd_gamma: Optional[float] = typer.Option(None, help="gamma of lambda_k = c1*gamma^k, per iteration (-D variants only; paper: 0.99999)."),
    schedule: str = typer.Option("constant", help="Learning-rate schedule: constant, cosine (to --lr-min) or step (x0.1 at 50% and 75%)."),
    lr_min: float = typer.Option(0.0, help="Final learning rate of the cosine schedule."),
    batch_size: int = typer.Option(64, help="Minibatch size b (examples per step)."), seed: int = typer.Option(0, help="Seed of the initialisation and the batch order."),
    arch_kwarg: List[str] = typer.Option([], help="Architecture argument key=value, repeatable (e.g. depth=8)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels for imagefolder data (default 32)."),
    record_updates: bool = typer.Option(False, "--record-updates", help="Store update-magnitude histograms (counts per log2 bin per layer) after every epoch, for `wdbound updates`."),
    adal_norm: str = typer.Option("global", help="AdaL only: l1 norm over the whole gradient (global, the paper) or per parameter tensor (tensor)."),
    scale_wd_with_batch: Optional[int] = typer.Option(None, help="Weight-decay linear scaling rule (SWD paper, Rule 2): use --wd * batch-size / BASE_BATCH."),
    eps: float = typer.Option(1e-8, help="Adam's epsilon (outside the square root)."),
    curves: Optional[str] = typer.Option(None, help="Record curvature over training into the checkpoint (loss, accuracy, sharpness, Adam's preconditioned sharpness, err/d of both forms, on the test split): log (steps 1, 2, 4, ...), epochs, or every:N; the last step is always recorded. See `wdbound curves`."),
    out: Path = typer.Option(..., help="Checkpoint to write (.pt or .safetensors); written atomically."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the training facts (eta, lambda, b, n, schedule), the metrics and the configuration as JSON."),
) -> None:
    """Train a model with one of the paper's optimizers and write a wdbound checkpoint."""
    from ..checkpoints import save_checkpoint
    from ..io_utils import check_output, write_json_atomic
    from ..train import TrainConfig

    check_output(out)
    check_output(json_path)
    model = deprecated_alias("--model", model, "--arch", arch, "digits-mlp")
    config = TrainConfig(model=model, optimizer=optimizer, data=data, epochs=epochs, lr=lr, wd=wd, wd_gamma=wd_gamma,
                         schedule=schedule, lr_min=lr_min, batch_size=batch_size, seed=seed,
                         arch_kwargs=parse_kwargs(arch_kwarg), image_size=image_size, record_updates=record_updates,
                         adal_norm=adal_norm, wd_base_batch=scale_wd_with_batch, eps=eps, curves=curves)
    net, contents = train_with_bar(config)
    save_checkpoint(out, net, **contents)
    metrics, facts = contents["metrics"], contents["train"]
    say(f"wrote {out}: {facts['parameters']} parameters, test acc {100 * metrics['test_acc']:.2f}%, "
        f"test loss {metrics['test_loss']:.4f}, last eta {facts['eta']:.3g}, last lambda {facts['lam']:.3g}")
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, train_json(out, config, contents))}")


def train_with_bar(config):
    """:func:`wdbound.train.train` with its steps on a progress bar."""
    from ..train import train as run_training

    with progress_bar() as bar:
        task = bar.add_task(f"train {config.model} / {config.optimizer}", total=None, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.4f}")

        return run_training(config, on_step)


def train_json(out: Path, config, contents: dict) -> dict:
    """``train --json``: the checkpoint written, its training facts (without the update histograms, which
    ``wdbound updates`` reads), its metrics and the configuration that produced it."""
    from dataclasses import asdict

    from ..provenance import library_versions

    facts = {k: v for k, v in contents["train"].items() if k not in ("update_histograms", "curves")}
    return {"checkpoint": str(out), "arch": contents["arch"], "arch_kwargs": contents.get("arch_kwargs"),
            "optimizer": (contents["optimizer"] or {}).get("name") if isinstance(contents["optimizer"], dict)
            else contents["optimizer"], "train": facts, "metrics": contents["metrics"], "config": asdict(config),
            "versions": library_versions()}


@app.command("scale-freeness", short_help="Is an optimizer scale-free? (paired runs)")
def scale_freeness(
    arch: str = typer.Option("digits-mlp", help="Architecture registry name."),
    model: Optional[str] = typer.Option(None, hidden=True, help="Old spelling of --arch (still accepted; says so)."),
    optimizers: str = typer.Option("adamw,adamprox,l2-adam", help="Training rules to test, comma-separated."),
    optimizer: Optional[str] = typer.Option(None, hidden=True, help="Old spelling of --optimizers (a list here)."),
    scale: float = typer.Option(1024.0, help="The constant c: train on c * loss (or, with --layer, that parameter's gradient times c). A power of two keeps float rounding out of the comparison."),
    layer: Optional[str] = typer.Option(None, help="Scale only this parameter's gradient coordinates (e.g. 0.weight): the paper's per-coordinate definition."),
    eps: str = typer.Option("1e-8,1e-16", help="Adam's epsilon values to try, comma-separated (scale-freeness holds as eps -> 0)."),
    data: str = typer.Option("digits", help="Data spec."), epochs: int = typer.Option(5, help="Epochs per run."),
    lr: float = typer.Option(1e-3, help="Learning rate."), wd: float = typer.Option(5e-2, help="Weight decay lambda."),
    batch_size: int = typer.Option(64, help="Minibatch size."),
    seed: int = typer.Option(0, help="Seed of both runs (identical initialisation and batch order)."),
    dtype: str = typer.Option("float64", help="float64 (here, unlike train's float32 models: no rounding drift between the two runs) or float32."),
    arch_kwarg: List[str] = typer.Option([], help="Architecture argument key=value, repeatable."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the per-epoch drifts with the settings as JSON."),
) -> None:
    """Is the optimizer scale-free here? Train twice from one seed, on the loss and on c * loss, and report the drift."""
    from ..io_utils import check_output, write_json_atomic
    from ..scale_freeness import parse_eps, study
    from ..train import TrainConfig

    check_output(json_path)
    model = deprecated_alias("--model", model, "--arch", arch, "digits-mlp")
    optimizers = deprecated_alias("--optimizer", optimizer, "--optimizers", optimizers, "adamw,adamprox,l2-adam")
    names = [o.strip() for o in optimizers.split(",") if o.strip()]
    base = TrainConfig(model=model, data=data, epochs=epochs, lr=lr, wd=wd, batch_size=batch_size, seed=seed,
                       arch_kwargs=parse_kwargs(arch_kwarg), dtype=dtype)
    eps_values = parse_eps(eps)
    with progress_bar() as bar:
        task = bar.add_task("scale-freeness runs", total=len(names) * len(eps_values) * 2, info="")
        result = study(base, names, eps_values, scale, layer, on_pair=lambda: bar.advance(task, 2))
    render_scale_freeness(result, f"gradient of {layer}" if layer else "loss", scale, base)
    if json_path is not None:
        say(f"wrote {write_json_atomic(json_path, result.to_json())}")


def render_scale_freeness(result, target: str, scale: float, base) -> None:
    """One row per (optimizer, eps): the drift per epoch, the last max |dx| and the verdict."""
    from ..scale_freeness import SCALE_FREE_TOL

    out = Table(title=f"scale-freeness: {target} x {scale:g}, {base.model}, {base.epochs} epochs, lr {base.lr:g}, "
                      f"wd {base.wd:g}, {base.dtype}")
    for column in ("optimizer", "eps", "relative drift per epoch", "max |dx| (last)", "scale-free here?"):
        out.add_column(column, justify="left" if column == "optimizer" else "right")
    for r in result.reports:
        out.add_row(r.optimizer, f"{r.eps:g}", " ".join(f"{e.relative:.1e}" for e in r.epochs),
                    f"{r.epochs[-1].max_abs:.2e}", "yes" if r.scale_free else "no")
    console.print(out)
    say(f"'scale-free here' = relative parameter drift <= {SCALE_FREE_TOL:g} after the last epoch "
        "(||x - x'|| / ||x||; both runs share seed and batch order)")
