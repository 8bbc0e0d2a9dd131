"""Scale-freeness, measured: train twice from the same seed, on the loss and on a rescaled loss, and compare.

An optimizer is *scale-free* when multiplying the loss (or, per coordinate,
some gradient coordinates) by a constant c > 0 leaves its iterates unchanged
(adamw_proximal_scale_freeness.txt, Sections 3 and 4.2). Adam's direction
m̂/(√v̂ + ε) is invariant to c only as ε → 0; AdamW and AdamProx keep their
decay outside that direction and inherit the invariance, while l2-Adam adds
λx to the gradient before the normalisation and loses it. ε breaks the
invariance wherever √v̂ is not large compared with ε.

:func:`drift` runs the two trainings with identical seeds and batch order and
returns the per-epoch maximum and relative parameter difference. The runs use
float64 by default, so a power-of-two c gives bit-identical iterates for a
scale-free rule and any drift is the optimizer's, not rounding's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .errors import WdboundError
from .train import TrainConfig, train

# Relative drift below this after the last epoch reads "scale-free here" (float64 rounding is ~1e-16; a
# rule that is not scale-free drifts by percent).
SCALE_FREE_TOL = 1e-6


@dataclass(frozen=True)
class EpochDrift:
    """Parameter difference between the plain and the rescaled run after one epoch."""

    epoch: int
    max_abs: float  # max_i |x_i - x'_i|
    relative: float  # ||x - x'|| / ||x||

    def to_json(self) -> dict:
        """The fields by name."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class DriftReport:
    """One (optimizer, ε) pair of runs."""

    optimizer: str
    eps: float
    scale: float
    layer: str | None  # None: the whole loss was scaled; else this parameter's gradient coordinates
    epochs: tuple[EpochDrift, ...]

    @property
    def scale_free(self) -> bool:
        """The relative drift after the last epoch is within SCALE_FREE_TOL."""
        return self.epochs[-1].relative <= SCALE_FREE_TOL

    def to_json(self) -> dict:
        """The pair of runs as JSON (with the verdict and its tolerance)."""
        return {"optimizer": self.optimizer, "eps": self.eps, "scale": self.scale, "layer": self.layer,
                "scale_free": self.scale_free, "tolerance": SCALE_FREE_TOL,
                "epochs": [e.to_json() for e in self.epochs]}


def _snapshots(config: TrainConfig, on_step=None) -> list[torch.Tensor]:
    flats: list[torch.Tensor] = []

    def keep(_epoch: int, model: torch.nn.Module) -> None:
        flats.append(torch.cat([p.detach().reshape(-1).double().clone() for p in model.parameters()]))

    train(config, on_step, on_epoch=keep)
    return flats


def drift(config: TrainConfig, scale: float, layer: str | None = None, on_step=None) -> DriftReport:
    """Train ``config`` and the same config on ``scale`` × loss (or with ``layer``'s gradient × ``scale``);
    return the per-epoch parameter drift between the two."""
    if not (scale > 0 and math.isfinite(scale)):
        raise WdboundError(f"scale {scale:g} must be a positive number", "scale")
    rescaled = replace(config, loss_scale=scale) if layer is None else replace(config, grad_scale={layer: scale})
    plain, other = _snapshots(config, on_step), _snapshots(rescaled, on_step)
    epochs = tuple(EpochDrift(i + 1, float((a - b).abs().max()), float((a - b).norm() / max(float(a.norm()), 1e-300)))
                   for i, (a, b) in enumerate(zip(plain, other)))
    return DriftReport(config.optimizer, config.eps, scale, layer, epochs)


@dataclass(frozen=True)
class ScaleFreenessStudy:
    """``wdbound scale-freeness``: one :class:`DriftReport` per (optimizer, ε), all from one base config."""

    base: TrainConfig
    scale: float
    layer: str | None
    reports: tuple[DriftReport, ...]

    def to_json(self) -> dict:
        """The settings and every pair of runs."""
        b = self.base
        return {"model": b.model, "data": b.data, "epochs": b.epochs, "lr": b.lr, "wd": b.wd,
                "batch_size": b.batch_size, "seed": b.seed, "dtype": b.dtype, "scale": self.scale,
                "layer": self.layer, "runs": [r.to_json() for r in self.reports]}


def parse_eps(text: str) -> list[float]:
    """``"1e-8,1e-16"`` -> [1e-8, 1e-16]; every value must be a number > 0."""
    try:
        values = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise WdboundError(f"eps {text!r}: use numbers separated by commas", "eps") from None
    if not values or any(not e > 0 for e in values):
        raise WdboundError(f"eps {text!r}: every epsilon must be > 0", "eps")
    return values


def study(base: TrainConfig, optimizers: list[str], eps_values: list[float], scale: float, layer: str | None = None,
          on_pair=None) -> ScaleFreenessStudy:
    """:func:`drift` for every optimizer and ε (the -D variants with γ = 0.9999); ``on_pair()`` after each pair."""
    from .optim import optimizer_spec

    for name in optimizers:
        optimizer_spec(name)
    reports = []
    for name in optimizers:
        for eps in eps_values:
            config = replace(base, optimizer=name, eps=eps, wd_gamma=0.9999 if name.endswith("-d") else None)
            reports.append(drift(config, scale, layer))
            if on_pair is not None:
                on_pair()
    return ScaleFreenessStudy(base, scale, layer, tuple(reports))
