"""Train a registered model with one of the paper's optimizers and write a checkpoint."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .data import DataSpec, iterate_batches, load_dataset, num_classes
from .errors import WdboundError, check_seed
from .models import build_model, count_parameters
from .optim import lr_at, make_optimizer, optimizer_spec
from .provenance import library_versions


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of one training run (``wdbound train``, the zoo, scale-freeness runs)."""

    model: str = "digits-mlp"
    optimizer: str = "adamw"
    data: str = "digits"
    epochs: int = 30
    lr: float = 1e-3
    wd: float = 5e-4  # λ, or c1 for the -D variants
    wd_gamma: float | None = None  # γ of λ_k = c1 γ^k (-D variants)
    schedule: str = "constant"
    lr_min: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)
    batch_size: int = 64
    seed: int = 0
    arch_kwargs: dict = field(default_factory=dict)
    image_size: int | None = None
    record_updates: bool = False  # store update-magnitude histograms (counts per bin per layer) every epoch
    adal_norm: str = "global"  # AdaL: l1 norm over the whole gradient (the paper) or per tensor
    wd_base_batch: int | None = None  # SWD paper's Rule 2: λ is multiplied by batch_size / wd_base_batch
    eps: float = 1e-8  # Adam's ε (scale-freeness needs it small)
    dtype: str = "float32"  # parameters and inputs (float64 for scale-freeness runs: no rounding drift)
    loss_scale: float = 1.0  # train on loss_scale * loss (scale-freeness)
    grad_scale: dict = field(default_factory=dict)  # parameter name -> factor on its gradient coordinates
    curves: str | None = None  # record curvature over training (wdbound.Monitor): log, epochs or every:N

    def weight_decay(self) -> float:
        """λ (or c1) actually used: ``wd`` scaled by the weight-decay linear scaling rule when asked."""
        if self.wd_base_batch is None:
            return self.wd
        if self.wd_base_batch < 1:
            raise WdboundError(f"base batch {self.wd_base_batch} must be >= 1", "scale_wd_with_batch")
        return self.wd * self.batch_size / self.wd_base_batch


StepCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)

# What the checkpoint's λ ("lam", used by the bounds) means for each rule.
LAM_READING = {
    "decoupled": "lambda of the last step (c1 gamma^k for -D)",
    "l2": "lambda of the last step (c1 gamma^k for -D)",
    "proximal": "lambda of the proximal step x <- (x - eta p)/(1 + eta lambda), read as AdamW's decoupled lambda",
    "stable": "effective decoupled decay lambda / sqrt(mean v_hat) of the last step (AdamS); lam_nominal is lambda",
    "adal": "lambda added to the gradient before AdaL's l1 scaling (coupled, read as l2-Adam's lambda)",
}


def _update_histograms(optimizer, names: dict) -> dict[str, list[int]]:
    from .updates import optimizer_histograms

    group = optimizer.param_groups[0]
    state = {names[param]: s for param, s in optimizer.state.items()}
    return optimizer_histograms(state, group["betas"], group["eps"])


def _curves_monitor(config: TrainConfig, model: nn.Module, optimizer, test_set, n_train: int):
    """The monitor of ``config.curves`` (None without): the over-training quantities on the test split in
    float64, every scheduled record taken (no time budget: the curves are what was asked for)."""
    if config.curves is None:
        return None
    from .monitor import TRAIN_QUANTITIES, Monitor, parse_schedule

    schedule, every = parse_schedule(config.curves)
    return Monitor(model, optimizer, test_set, schedule=schedule, every=every, budget=None,
                   quantities=TRAIN_QUANTITIES, batch_size_train=config.batch_size, n_train=n_train,
                   device="cpu", seed=config.seed)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) over ``dataset``."""
    model.eval()
    dtype = next(model.parameters()).dtype
    total_loss, correct, count = 0.0, 0, 0
    for inputs, labels in iterate_batches(dataset, batch_size):
        logits = model(inputs.to(dtype))
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
        count += labels.numel()
    return total_loss / count, correct / count


def check_takes_inputs(model: nn.Module, dataset, config: TrainConfig) -> None:
    """One example of ``dataset`` through ``model`` (eval mode, no gradient: no state or random stream moves);
    an architecture that cannot take the data's inputs is a one-line :class:`WdboundError` instead of a
    traceback from the first training step."""
    example = dataset[0][0]
    model.eval()
    try:
        with torch.no_grad():
            model(example[None].to(next(model.parameters()).dtype))
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise WdboundError(f"{config.model} cannot take the inputs of {config.data} (one example has shape "
                           f"{tuple(example.shape)}): {reason}", "arch") from None


def train(config: TrainConfig, on_step: StepCallback | None = None,
          on_epoch: Callable[[int, nn.Module], None] | None = None) -> tuple[nn.Module, dict]:
    """Train deterministically on CPU; return the model and the checkpoint contents.

    Same config and seed give bit-identical tensors: the model is initialised
    from ``torch.manual_seed(seed)`` and the batch order comes from a
    generator seeded with ``seed``.
    """
    spec = optimizer_spec(config.optimizer)
    if config.epochs < 1:
        raise WdboundError(f"epochs = {config.epochs} must be >= 1", "epochs")
    if config.batch_size < 1:
        raise WdboundError(f"batch size = {config.batch_size} must be >= 1", "batch_size")
    check_seed(config.seed)
    train_set = load_dataset(config.data, "train", config.image_size)
    test_set = load_dataset(config.data, "test", config.image_size)
    arch_kwargs = dict(config.arch_kwargs)
    arch_kwargs.setdefault("num_classes", num_classes(train_set))
    torch.manual_seed(config.seed)
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if config.dtype not in dtypes:
        raise WdboundError(f"unknown dtype {config.dtype!r}; use float32 or float64", "dtype")
    model = build_model(config.model, **arch_kwargs).to(dtypes[config.dtype])
    check_takes_inputs(model, train_set, config)
    names = {param: name for name, param in model.named_parameters()}
    unknown = set(config.grad_scale) - set(names.values())
    if unknown:
        raise WdboundError(f"no parameter named {', '.join(sorted(unknown))}; the model has "
                           f"{', '.join(names.values())}", "layer")
    wd = config.weight_decay()
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr=config.lr, wd=wd, gamma=config.wd_gamma,
                               eps=config.eps, adal_norm=config.adal_norm)
    generator = torch.Generator().manual_seed(config.seed)
    n_train = len(train_set)
    steps_per_epoch = -(-n_train // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    step = 0
    recorded: list[dict] = []
    monitor = _curves_monitor(config, model, optimizer, test_set, n_train)
    for epoch in range(config.epochs):
        model.train()
        if monitor is not None:
            monitor.epoch = epoch + 1  # records during an epoch carry its (1-based) number
        for inputs, labels in iterate_batches(train_set, config.batch_size, generator=generator):
            lr = lr_at(step, total_steps, schedule=config.schedule, lr=config.lr, lr_min=config.lr_min,
                       milestones=config.milestones)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs.to(dtypes[config.dtype])), labels)
            (loss * config.loss_scale if config.loss_scale != 1.0 else loss).backward()
            for param, name in names.items():
                if name in config.grad_scale and param.grad is not None:
                    param.grad.mul_(config.grad_scale[name])
            optimizer.step()
            step += 1
            if monitor is not None:
                monitor.step()
            if on_step is not None:
                on_step(step, total_steps, loss.item())
        if monitor is not None and monitor.schedule == "epochs":
            monitor.epoch_end(epoch + 1)
        if config.record_updates:
            recorded.append({"epoch": epoch + 1, "step": step,
                             "layers": _update_histograms(optimizer, names)})
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    if optimizer.last_lr <= 0:
        raise WdboundError("the last learning rate used was 0; the bounds need eta > 0",
                           "lr" if config.lr <= 0 else "lr_min")
    train_loss, _ = evaluate(model, train_set)
    test_loss, test_acc = evaluate(model, test_set)
    state = {
        names[param]: {"exp_avg": s["exp_avg"].clone(), "exp_avg_sq": s["exp_avg_sq"].clone(), "step": int(s["step"])}
        for param, s in optimizer.state.items()
    }
    group = optimizer.param_groups[0]
    contents = {
        "arch": config.model,
        "arch_kwargs": arch_kwargs,
        "optimizer": {
            "name": spec.name,
            "family": spec.family,
            "rule": spec.coupling,
            "hyper": {"lr": config.lr, "betas": list(group["betas"]), "eps": group["eps"],
                      "weight_decay": wd, "decay_gamma": config.wd_gamma if spec.decaying else 1.0,
                      "adal_norm": config.adal_norm if spec.coupling == "adal" else None,
                      "wd_scaling": ({"rule": "lambda * b / base_batch (SWD paper, Rule 2)", "wd": config.wd,
                                      "base_batch": config.wd_base_batch} if config.wd_base_batch else None)},
            "state": state,
        },
        "train": {
            "data": str(DataSpec.parse(config.data)),
            "n_train": n_train,
            "batch_size": config.batch_size,
            "epochs": config.epochs,
            "steps": total_steps,
            "lr_schedule": {"name": config.schedule, "lr": config.lr, "lr_min": config.lr_min,
                            "milestones": list(config.milestones)},
            "eta": optimizer.last_lr,
            "wd_schedule": ({"name": "exponential", "c1": wd, "gamma": config.wd_gamma, "steps": total_steps}
                            if spec.decaying else {"name": "constant", "wd": wd}),
            "lam": optimizer.last_lam,
            "lam_nominal": optimizer.last_lam_nominal,
            "lam_reading": LAM_READING[spec.coupling],
            "seed": config.seed,
            "command": " ".join(sys.argv),
            "versions": library_versions(),
            "parameters": count_parameters(model),
        },
        "metrics": {"train_loss": train_loss, "test_loss": test_loss, "test_acc": test_acc},
    }
    if monitor is not None:
        if not monitor.records or monitor.records[-1].step != step:
            monitor.record()  # the trained model's own record closes every curve
        contents["train"]["curves"] = {"schedule": config.curves, "quantities": list(monitor.quantities),
                                       "data": f"{DataSpec.parse(config.data)} test split, all examples, float64",
                                       "records": [r.to_json() for r in monitor.records]}
    if config.record_updates:
        contents["train"]["update_histograms"] = {"bins": "wdbound.updates (29 log2 bins, 2^-27 .. 1)",
                                                  "records": recorded}
    model.eval()
    return model, contents
