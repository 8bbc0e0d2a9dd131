"""The optimizers whose checkpoints the bounds compare (docs/maths.md, "The optimizers").

All share Adam's moment estimates m̂, v̂ and the direction p = m̂/(√v̂ + ε);
they differ in how the weight decay λ_k enters:

* ``adamw``     x ← (1 − η λ) x − η p                             (decoupled)
* ``l2-adam``   g ← g + λ x, then the Adam step                   (coupled, "l2")
* ``adamw-d``   as adamw with λ_k = c1 γ^k
* ``l2-adam-d`` as l2-adam with λ_k = c1 γ^k
* ``adamprox``  x ← (x − η p)/(1 + λ η)                           (proximal; adamw_proximal_scale_freeness.txt)
* ``adams``     x ← (1 − η λ/√mean(v̂)) x − η p                   (stable weight decay, p = 0.5;
  scheduling_weight_decay_swd.txt, Algorithm 2; the mean is over every coordinate of every parameter)
* ``adal``      g ← g + λ x; ĝ = ‖g‖₁ g with the l1 norm over the whole gradient (``adal_norm="tensor"``: per
  parameter tensor); Adam's moments on ĝ; step size α_t = α/√t (adal_gradient_transformation.txt,
  Algorithm 1; the paper's experiments add weight decay through torch's Adam, i.e. coupled, before the
  transformation)

Here k counts completed steps: the first step uses λ_0 = c1, the t-th step
(1-based) uses c1 γ^(t−1). ``last_lam`` is the λ of the last step taken, the
value the bounds use for a -D checkpoint; for AdamS it is the *effective*
decoupled decay λ/√mean(v̂) of the last step (``last_lam_nominal`` keeps λ).
``last_lr`` is the step size of the last step (α/√t for AdaL). ε sits outside
the square root, as in torch.optim.Adam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import WdboundError

RULES = ("decoupled", "l2", "proximal", "stable", "adal")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer of the papers: its update rule and the options it takes."""

    name: str
    coupling: str  # one of RULES: how λ enters the step
    decaying: bool  # λ_k = c1 γ^k

    @property
    def family(self) -> str:
        """Which bound form applies: ``adamw`` (Theorem 6; decay outside the adaptive step: AdamW, AdamProx,
        AdamS) or ``l2-adam`` (Theorem 7; decay through the gradient: l2-Adam, AdaL)."""
        return "adamw" if self.coupling in ("decoupled", "proximal", "stable") else "l2-adam"


OPTIMIZERS = {
    "adamw": OptimizerSpec("adamw", "decoupled", False),
    "adamw-d": OptimizerSpec("adamw-d", "decoupled", True),
    "l2-adam": OptimizerSpec("l2-adam", "l2", False),
    "l2-adam-d": OptimizerSpec("l2-adam-d", "l2", True),
    "adamprox": OptimizerSpec("adamprox", "proximal", False),
    "adams": OptimizerSpec("adams", "stable", False),
    "adal": OptimizerSpec("adal", "adal", False),
}


def bound_form(optimizer: str) -> str | None:
    """The bound form for a checkpoint of ``optimizer``: Corollary 3's AdamW form for decay outside the
    adaptive step (AdamW(-D), AdamProx, AdamS), the l2-Adam form for decay through the gradient (l2-Adam(-D),
    AdaL); None for an optimizer wdbound does not know."""
    spec = OPTIMIZERS.get(optimizer)
    return spec.family if spec is not None else None


def bound_forms(optimizer: str) -> tuple[str, ...]:
    """The bound forms ``wdbound err --optimizer NAME`` evaluates: ``both`` gives both forms; a training rule gives
    the form of its bound (Theorem 6 for adamw, adamw-d, adamprox, adams; Theorem 7 for l2-adam, l2-adam-d,
    adal). An unknown name is a one-line error listing the accepted ones.

    >>> bound_forms("adamw-d"), bound_forms("adal"), bound_forms("both")
    (('adamw',), ('l2-adam',), ('adamw', 'l2-adam'))
    """
    if optimizer == "both":
        return ("adamw", "l2-adam")
    spec = OPTIMIZERS.get(optimizer)
    if spec is None:
        raise WdboundError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}, or both",
                           "optimizer")
    return (spec.family,)


def optimizer_spec(name: str) -> OptimizerSpec:
    """The spec of an optimizer name; an unknown name is a one-line error listing the known ones."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise WdboundError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}", "optimizer") from None


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
    """Adam with weight decay λ_k = c1 γ^k entering by one of :data:`RULES` (see the module docstring).

    ``weight_decay`` is c1 (λ itself when ``decay_gamma`` = 1). Learning rates
    are read from each param group at every step, so any schedule can set them.

    >>> p = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = AdamFamily([p], lr=0.1, weight_decay=0.5, coupling="decoupled")
    >>> p.grad = torch.tensor([2.0]); opt.step()
    >>> round(p.item(), 6)  # (1 - 0.1*0.5)*1 - 0.1 * 2/(2 + 1e-8)
    0.85
    >>> q = torch.nn.Parameter(torch.tensor([1.0]))
    >>> prox = AdamFamily([q], lr=0.1, weight_decay=0.5, coupling="proximal")
    >>> q.grad = torch.tensor([2.0]); prox.step()
    >>> round(q.item(), 6)  # (1 - 0.1 * 1) / (1 + 0.1*0.5)
    0.857143
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_gamma: float = 1.0, coupling: str = "decoupled",
                 adal_norm: str = "global") -> None:
        if not lr > 0:
            raise WdboundError(f"learning rate {lr} must be > 0", "lr")
        if not weight_decay >= 0:
            raise WdboundError(f"weight decay {weight_decay} must be >= 0", "wd")
        if not 0 < decay_gamma <= 1:
            raise WdboundError(f"decay gamma {decay_gamma} must lie in (0, 1]", "wd_gamma")
        if coupling not in RULES:
            raise ValueError(f"coupling must be one of {RULES}, got {coupling!r}")
        if adal_norm not in ("global", "tensor"):
            raise WdboundError(f"AdaL norm {adal_norm!r}: use global or tensor", "adal_norm")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or not eps > 0:
            raise WdboundError(f"bad Adam constants betas={betas}, eps={eps}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay_gamma=decay_gamma)
        super().__init__(params, defaults)
        self.coupling = coupling
        self.adal_norm = adal_norm
        self.steps_taken = 0
        self.last_lam = weight_decay
        self.last_lam_nominal = weight_decay
        self.last_lr = lr

    def current_lam(self, group: dict) -> float:
        """λ at the present step (λ_k = c1 γ^k for the -D variants)."""
        return group["weight_decay"] * group["decay_gamma"] ** self.steps_taken

    def _gradients(self) -> dict:
        """Each parameter's gradient as the rule sees it: + λx for l2 and AdaL, then AdaL's ‖g‖₁ factor."""
        grads = {}
        for group in self.param_groups:
            lam = self.current_lam(group)
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if self.coupling in ("l2", "adal") and lam:
                    grad = grad.add(param, alpha=lam)
                grads[param] = grad
        if self.coupling == "adal":
            if self.adal_norm == "global":
                norm = sum(g.abs().sum() for g in grads.values())
                grads = {p: g * norm for p, g in grads.items()}
            else:
                grads = {p: g * g.abs().sum() for p, g in grads.items()}
        return grads

    @torch.no_grad()
    def step(self, closure=None):
        """One step of the group's update rule (AdamW, l2-Adam, AdamProx, AdamS or AdaL)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = self._gradients()
        directions = {}
        v_sum, v_count = 0.0, 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param not in grads:
                    continue
                grad = grads[param]
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                directions[param] = adam_direction(state["exp_avg"], state["exp_avg_sq"], state["step"],
                                                   group["betas"], group["eps"])
                if self.coupling == "stable":
                    v_sum += float((state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sum())
                    v_count += param.numel()
        # AdamS: one isotropic decay for all coordinates, λ / sqrt(mean v̂) (v̂ of every parameter).
        stable_scale = 1.0 / math.sqrt(v_sum / v_count) if self.coupling == "stable" and v_sum > 0 else 0.0
        for group in self.param_groups:
            lam = self.current_lam(group)
            lr = group["lr"] / math.sqrt(self.steps_taken + 1) if self.coupling == "adal" else group["lr"]
            effective = lam * stable_scale if self.coupling == "stable" else lam
            for param in group["params"]:
                if param not in directions:
                    continue
                if self.coupling in ("decoupled", "stable") and effective:
                    param.mul_(1 - lr * effective)
                param.add_(directions[param], alpha=-lr)
                if self.coupling == "proximal" and lam:
                    param.div_(1 + lr * lam)
            self.last_lam, self.last_lam_nominal, self.last_lr = effective, lam, lr
        self.steps_taken += 1
        return loss


def make_optimizer(name: str, params, *, lr: float, wd: float, gamma: float | None = None,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                   adal_norm: str = "global") -> AdamFamily:
    """Build a named optimizer. For -D variants ``wd`` is c1 and ``gamma`` is required."""
    spec = optimizer_spec(name)
    if spec.decaying and gamma is None:
        raise WdboundError(f"{name} needs the decay factor gamma of lambda_k = c1 * gamma^k", "wd_gamma")
    return AdamFamily(params, lr=lr, betas=betas, eps=eps, weight_decay=wd,
                      decay_gamma=gamma if spec.decaying else 1.0, coupling=spec.coupling, adal_norm=adal_norm)


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
    raise WdboundError(f"unknown learning-rate schedule {schedule!r}; use {', '.join(SCHEDULES)}", "schedule")
