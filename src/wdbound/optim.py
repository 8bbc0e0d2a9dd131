"""The optimizers whose checkpoints the bounds compare (shared/SPEC.md, "Optimizers").

All four share Adam's moment estimates and differ only in how the weight
decay λ_k enters:

* ``adamw``     x ← (1 − η λ) x − η m̂/(√v̂ + ε)                 (decoupled)
* ``l2-adam``   g ← g + λ x, then the Adam step                   (coupled, "l2")
* ``adamw-d``   as adamw with λ_k = c1 γ^k
* ``l2-adam-d`` as l2-adam with λ_k = c1 γ^k

Here k counts completed steps: the first step uses λ_0 = c1, the t-th step
(1-based) uses c1 γ^(t−1). ``last_lam`` is the λ of the last step taken, the
value the bounds use for a -D checkpoint. ε sits outside the square root, as
in torch.optim.Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import WdboundError


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    coupling: str  # "decoupled" (AdamW) or "l2" (l2-Adam)
    decaying: bool  # λ_k = c1 γ^k

    @property
    def family(self) -> str:
        """``adamw`` or ``l2-adam``: which bound form (Theorem 6 or 7) applies."""
        return "adamw" if self.coupling == "decoupled" else "l2-adam"


OPTIMIZERS = {
    "adamw": OptimizerSpec("adamw", "decoupled", False),
    "adamw-d": OptimizerSpec("adamw-d", "decoupled", True),
    "l2-adam": OptimizerSpec("l2-adam", "l2", False),
    "l2-adam-d": OptimizerSpec("l2-adam-d", "l2", True),
}


def optimizer_spec(name: str) -> OptimizerSpec:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise WdboundError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}", "--optimizer") from None


def adam_direction(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int,
                   betas: tuple[float, float], eps: float) -> torch.Tensor:
    """The bias-corrected Adam direction m̂ / (√v̂ + ε) after ``step`` updates of the moments."""
    if step < 1:
        raise WdboundError("the Adam direction needs at least one step of moment updates")
    beta1, beta2 = betas
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return m_hat / (v_hat.sqrt() + eps)


class AdamFamily(torch.optim.Optimizer):
    """Adam with decoupled (AdamW) or coupled (l2-Adam) weight decay λ_k = c1 γ^k.

    ``weight_decay`` is c1 (λ itself when ``decay_gamma`` = 1). Learning rates
    are read from each param group at every step, so any schedule can set them.

    >>> p = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = AdamFamily([p], lr=0.1, weight_decay=0.5, coupling="decoupled")
    >>> p.grad = torch.tensor([2.0]); opt.step()
    >>> round(p.item(), 6)  # (1 - 0.1*0.5)*1 - 0.1 * 2/(2 + 1e-8)
    0.85
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_gamma: float = 1.0, coupling: str = "decoupled") -> None:
        if lr <= 0:
            raise WdboundError(f"learning rate {lr} must be > 0", "--lr")
        if weight_decay < 0:
            raise WdboundError(f"weight decay {weight_decay} must be >= 0", "--wd")
        if not 0 < decay_gamma <= 1:
            raise WdboundError(f"decay gamma {decay_gamma} must lie in (0, 1]", "--wd-gamma")
        if coupling not in ("decoupled", "l2"):
            raise ValueError(f"coupling must be 'decoupled' or 'l2', got {coupling!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps <= 0:
            raise WdboundError(f"bad Adam constants betas={betas}, eps={eps}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay_gamma=decay_gamma)
        super().__init__(params, defaults)
        self.coupling = coupling
        self.steps_taken = 0
        self.last_lam = weight_decay
        self.last_lr = lr

    def current_lam(self, group: dict) -> float:
        return group["weight_decay"] * group["decay_gamma"] ** self.steps_taken

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lam = self.current_lam(group)
            lr = group["lr"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if self.coupling == "l2" and lam:
                    grad = grad.add(param, alpha=lam)
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                beta1, beta2 = group["betas"]
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                direction = adam_direction(state["exp_avg"], state["exp_avg_sq"], state["step"], group["betas"], group["eps"])
                if self.coupling == "decoupled" and lam:
                    param.mul_(1 - lr * lam)
                param.add_(direction, alpha=-lr)
            self.last_lam = lam
            self.last_lr = lr
        self.steps_taken += 1
        return loss


def make_optimizer(name: str, params, *, lr: float, wd: float, gamma: float | None = None,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> AdamFamily:
    """Build a named optimizer. For -D variants ``wd`` is c1 and ``gamma`` is required."""
    spec = optimizer_spec(name)
    if spec.decaying and gamma is None:
        raise WdboundError(f"{name} needs the decay factor gamma of lambda_k = c1 * gamma^k", "--wd-gamma")
    return AdamFamily(params, lr=lr, betas=betas, eps=eps, weight_decay=wd,
                      decay_gamma=gamma if spec.decaying else 1.0, coupling=spec.coupling)


# ---------------------------------------------------------------- learning-rate schedules

SCHEDULES = ("constant", "cosine", "step")


def lr_at(step: int, total_steps: int, *, schedule: str, lr: float, lr_min: float = 0.0,
          milestones: tuple[float, ...] = (0.5, 0.75), factor: float = 0.1) -> float:
    """Learning rate used at ``step`` (0-based) of ``total_steps``.

    ``cosine`` anneals from ``lr`` towards ``lr_min``, reaching it one step
    after the last; ``step`` multiplies by ``factor`` at each milestone (a
    fraction of training).
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        import math

        return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * step / max(total_steps, 1)))
    if schedule == "step":
        passed = sum(step >= m * total_steps for m in milestones)
        return lr * factor ** passed
    raise WdboundError(f"unknown learning-rate schedule {schedule!r}; use {', '.join(SCHEDULES)}", "--schedule")
