r"""Curvature while a model trains: sharpness, Adam's preconditioned sharpness and the trace, recorded from any
training loop without changing it.

Adam-family optimizers step along :math:`P^{-1}\hat m` with :math:`P = \mathrm{diag}(\sqrt{\hat v_t}) + \epsilon`
(bias-corrected second moment, :math:`\epsilon` outside the root). Cohen et al. (*Adaptive gradient methods at
the edge of stability*, 2022) show that the **preconditioned sharpness** :math:`\lambda_{max}(P^{-1}H)` is what
hovers near :math:`38/\eta` for Adam with :math:`\beta_1 = 0.9`. :math:`P^{-1}H` is similar to
:math:`P^{-1/2} H P^{-1/2}`, a symmetric operator: its top eigenvalues come from the same Lanczos run, with the
same residual bounds, as the sharpness :math:`\lambda_{max}(H)` itself.

A record never changes training: the Hessian is taken on a copy of the model (eval mode, the chosen dtype),
the optimizer's state is only read, and the global random states (torch, CUDA, NumPy, Python) are restored.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
>>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
>>> opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
>>> monitor = Monitor(model, opt, (x, y), every=2, budget=None,
...                   quantities=("loss", "sharpness", "preconditioned_sharpness"))
>>> for _ in range(4):
...     opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
...     record = monitor.step()
>>> [r.step for r in monitor.records], monitor.records[-1].preconditioned_sharpness > monitor.records[-1].sharpness[0]
([2, 4], True)
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import defaults
from .errors import WdboundError
from .sinks import sinks_for

QUANTITIES = ("loss", "accuracy", "sharpness", "preconditioned_sharpness", "trace", "err", "updates")
DEFAULT_QUANTITIES = ("loss", "accuracy", "sharpness", "preconditioned_sharpness")
NEEDS_OPTIMIZER = ("preconditioned_sharpness", "err", "updates")
SCHEDULES = ("every", "log", "epochs")
DEFAULT_BUDGET = 0.10  # the schedule's records may take at most this share of the training time
HVP_PER_GRADIENT = 3.0  # before the first record: an HVP is taken as 3 gradients (2-4 measured, benchmarks/compare.py)
FIRST_ESTIMATE_EXAMPLES = 16  # ... and a gradient as 3 forward passes, timed on this many evaluation examples
MIN_RUN_STEPS = 10  # a record waits until each of its Lanczos runs can take at least this many steps
# What `wdbound train --curves` records: the over-training figure's quantities (err exact below 10,000 parameters).
TRAIN_QUANTITIES = ("loss", "accuracy", "sharpness", "preconditioned_sharpness", "err")


def parse_schedule(text: str) -> tuple[str, int]:
    """``(schedule, every)`` from a command-line spelling: ``log``, ``epochs`` or ``every:N``.

    >>> parse_schedule("every:25"), parse_schedule("log")
    (('every', 25), ('log', 1))
    """
    name, _, count = text.partition(":")
    if name in ("log", "epochs") and not count:
        return name, 1
    if name == "every" and count.isdigit() and int(count) >= 1:
        return name, int(count)
    raise WdboundError(f"unknown schedule {text!r}; use log, epochs or every:N (N >= 1)", "curves")


@dataclass(frozen=True)
class MonitorRecord:
    """The curvature at one training step: each asked quantity (None when not asked) with its error bar (a
    Lanczos residual bound for the eigenvalues, one standard error for the trace), the HVPs planned before it
    started and spent, and its wall time."""

    step: int
    epoch: int | None
    loss: float | None = None
    accuracy: float | None = None  # fraction of the evaluation targets the argmax gets right
    sharpness: list[float] | None = None  # the top-k eigenvalues of H
    sharpness_bound: list[float] | None = None
    preconditioned_sharpness: float | None = None  # lambda_max(P^-1 H); the top-k in preconditioned_top
    preconditioned_top: list[float] | None = None
    preconditioned_bound: list[float] | None = None
    trace: float | None = None
    trace_stderr: float | None = None
    err_mean: dict[str, float] | None = None  # err/d per bound form (adamw, l2-adam)
    err_interval: dict[str, list[float]] | None = None  # each covers the exact value (a point when exact)
    err_inputs: dict | None = None  # eta, lambda, b, n, rho and the method that produced err/d
    updates: dict[str, list[int]] | None = None  # per parameter: counts of |m_hat/(sqrt(v_hat)+eps)| per log2 bin
    planned_hvps: int = 0
    hvps: int = 0
    seconds: float = 0.0
    due_step: int | None = None  # the step the schedule asked for, when the time budget moved the record later
    step_cap: int | None = None  # the Lanczos step cap the time budget set (None: the usual 300); see the bounds

    def to_json(self) -> dict:
        """Every field by name (one JSON Lines record)."""
        return asdict(self)

    def edge_of_stability(self) -> float:
        """Cohen et al.'s threshold for Adam's preconditioned sharpness, 38/η (β1 = 0.9), at the record's η
        (recorded with err; nan otherwise)."""
        eta = (self.err_inputs or {}).get("eta")
        return 38.0 / eta if eta else math.nan

    def scalars(self) -> dict[str, float]:
        """The record's numbers as flat scalars (what TensorBoard and W&B get): ``loss``, ``accuracy``,
        ``lambda_1`` .. ``lambda_k`` and their ``_bound``, ``preconditioned_sharpness``, ``trace``,
        ``err_mean/<form>`` with ``err_low/<form>`` and ``err_high/<form>``, ``hvps``, ``seconds``.

        >>> MonitorRecord(3, None, loss=0.5, sharpness=[2.0], sharpness_bound=[1e-9], hvps=7).scalars()
        {'loss': 0.5, 'lambda_1': 2.0, 'lambda_1_bound': 1e-09, 'hvps': 7.0, 'seconds': 0.0}
        """
        out: dict[str, float] = {}
        for name in ("loss", "accuracy"):
            if getattr(self, name) is not None:
                out[name] = float(getattr(self, name))
        for i, (value, bound) in enumerate(zip(self.sharpness or [], self.sharpness_bound or []), start=1):
            out[f"lambda_{i}"], out[f"lambda_{i}_bound"] = float(value), float(bound)
        for name in ("preconditioned_sharpness", "trace", "trace_stderr"):
            if getattr(self, name) is not None:
                out[name] = float(getattr(self, name))
        for form, value in (self.err_mean or {}).items():
            out[f"err_mean/{form}"] = float(value)
            out[f"err_low/{form}"], out[f"err_high/{form}"] = (float(v) for v in self.err_interval[form])
        out["hvps"], out["seconds"] = float(self.hvps), float(self.seconds)
        return out


class Monitor:
    """Records curvature during training: call :meth:`step` after each ``optimizer.step()`` (and, if you like,
    :meth:`epoch_end`); a record is taken when the schedule says so and the time budget allows.

    Parameters
    ----------
    model, optimizer:
        The model being trained and its optimizer (any ``torch.optim`` Adam-family optimizer for the
        preconditioned sharpness: Adam, AdamW, or wdbound's AdamW, l2-Adam, AdamProx, AdamS, AdaL).
    data:
        The evaluation data of the Hessian: ``(inputs, targets)``, a ``Dataset`` or a ``DataLoader`` (as
        :class:`wdbound.Hessian`); keep it small, it is what every record costs.
    every, schedule:
        ``schedule="every"``: a record every ``every`` steps; ``"log"``: at steps 1, 2, 4, 8, ... (``every``
        unused); ``"epochs"``: only at :meth:`epoch_end`.
    quantities:
        Any of ``loss``, ``accuracy``, ``sharpness``, ``preconditioned_sharpness``, ``trace``, ``err`` (err/d of
        both bound forms with their intervals, as :func:`wdbound.err`: exact below 10,000 parameters, d HVPs a
        record), ``updates`` (the update-magnitude histograms of ``wdbound updates``, from the optimizer's
        moments: no HVP). Default: loss, accuracy, sharpness and, with an optimizer, the preconditioned
        sharpness.
    budget:
        The share of training time the schedule's records may take (default 0.10). The monitor times the
        training between its calls and its own work. A record the schedule asks for is taken when the budget
        left (``budget`` x training time so far, minus the time records took) pays for its HVPs at the last
        record's seconds per HVP (before the first record: one timed forward pass of 16 evaluation examples,
        scaled to the evaluation set, a gradient taken as 3 forwards and an HVP as 3 gradients), with at least 10 Lanczos steps per eigenvalue run; each run is capped at the
        steps the budget pays for (``step_cap``; the residual bounds say how converged it is). Otherwise it
        waits for the first later step where it fits (``due_step`` says which step asked for it). ``None``:
        every scheduled record, whatever it costs. Explicit :meth:`record` and :meth:`epoch_end` calls always
        record.
    batch_size_train, n_train:
        b and n of the training run, which ``err`` needs; η and λ are read from the optimizer (the last step's:
        wdbound's optimizers record them, torch's are their groups' ``lr`` and ``weight_decay``).
    top_k:
        How many top eigenvalues of H (and of P^-1 H) to record.
    path, tensorboard, wandb, sinks:
        Where records go as they finish (besides ``records``): a JSON Lines file, a TensorBoard log directory
        (or ``SummaryWriter``), a W&B run (or True for the active run), and any objects with ``write(record)``
        and ``close()`` (:mod:`wdbound.sinks`).
    loss, dtype, device, seed, batch_size:
        As :class:`wdbound.Hessian` (the loss must return the mean over a batch).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, data, *, every: int = 100,
                 schedule: str = "every", quantities=None, budget: float | None = DEFAULT_BUDGET,
                 top_k: int = 1, path: str | Path | None = None, tensorboard=None, wandb=None, sinks=(),
                 loss=None, dtype: str = "float64", device: str = "auto", seed: int = 0, batch_size: int = 512,
                 batch_size_train: int | None = None, n_train: int | None = None) -> None:
        if quantities is None:
            quantities = [q for q in DEFAULT_QUANTITIES if optimizer is not None or q not in NEEDS_OPTIMIZER]
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown:
            raise WdboundError(f"unknown quantities {', '.join(unknown)}; use {', '.join(QUANTITIES)}", "quantities")
        if schedule not in SCHEDULES:
            raise WdboundError(f"unknown schedule {schedule!r}; use every, log or epochs", "schedule")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise WdboundError(f"every = {every!r} must be an integer >= 1", "every")
        if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget):
            raise WdboundError(f"budget = {budget!r} must be a share of the training time > 0, or None", "budget")
        asked = [q for q in quantities if q in NEEDS_OPTIMIZER]
        if asked and optimizer is None:
            raise WdboundError(f"{', '.join(asked)} need{'s' if len(asked) == 1 else ''} the optimizer", "optimizer")
        if "err" in quantities and (batch_size_train is None or n_train is None):
            raise WdboundError("err needs the training run's minibatch size and training-set size", "n_train",
                               ("batch_size_train", "n_train"))
        self.facts = (batch_size_train, n_train)
        self.model, self.optimizer, self.data = model, optimizer, data
        self.every, self.schedule, self.quantities, self.top_k = every, schedule, tuple(quantities), top_k
        self.budget = budget
        self.sinks = sinks_for(path, tensorboard, wandb, sinks)
        self.options = dict(loss=loss, dtype=dtype, device=device, seed=seed, batch_size=batch_size)
        self.steps, self.epoch = 0, None
        self.records: list[MonitorRecord] = []
        self.train_seconds = 0.0  # training time between the monitor's calls (its own records excluded)
        self.record_seconds = 0.0  # time spent in records
        self._since: float | None = None  # when the monitor last returned to the training loop
        self._waiting: int | None = None  # the step of a scheduled record the budget has held back
        self._cap = defaults.TOP_MAX_STEPS  # Lanczos steps per eigenvalue run of the next record
        self._first_seconds_per_hvp: float | None = None  # the first record's cost estimate (one timed forward)

    def due(self, step: int) -> bool:
        """Whether the schedule records at ``step`` (1-based)."""
        if self.schedule == "log":
            return step & (step - 1) == 0
        if self.schedule == "epochs":
            return False
        return step % self.every == 0

    def step(self) -> MonitorRecord | None:
        """Count one optimizer step; record when the schedule asks and the budget allows (returns the record,
        else None)."""
        self._count_training()
        self.steps += 1
        if self.due(self.steps) and self._waiting is None:
            self._waiting = self.steps
        if self._waiting is None or not self.affordable():
            self._since = time.perf_counter()
            return None
        due, self._waiting = self._waiting, None
        return self.record(due_step=due if due != self.steps else None)

    def epoch_end(self, epoch: int | None = None) -> MonitorRecord:
        """Record now, labelled with ``epoch`` (default: one more than the last)."""
        self._count_training()
        self.epoch = (0 if self.epoch is None else self.epoch + 1) if epoch is None else epoch
        return self.record()

    def affordable(self) -> bool:
        """Whether a record now keeps the records' share of the time within the budget (see ``budget``); sets
        the Lanczos step cap of that record."""
        self._cap = defaults.TOP_MAX_STEPS
        if self.budget is None:
            return True
        runs, fixed = self._eigen_runs(), self._fixed_hvps()
        allowed = (self.budget * self.train_seconds - self.record_seconds) / max(self._seconds_per_hvp(), 1e-12) - fixed
        if allowed < max(runs * MIN_RUN_STEPS, 1):
            return False
        if runs:
            self._cap = int(min(defaults.TOP_MAX_STEPS, allowed // runs))
        return True

    def overhead(self) -> float:
        """The records' time over the training time so far (nan before any training was timed)."""
        return self.record_seconds / self.train_seconds if self.train_seconds > 0 else math.nan

    def planned_hvps(self) -> int:
        """An upper bound of one record's HVPs: a top-k Lanczos run per eigenvalue quantity (at most its step
        cap), the trace's and err's."""
        return self._eigen_runs() * self._cap + self._fixed_hvps()

    def _eigen_runs(self) -> int:
        return sum(q in self.quantities for q in ("sharpness", "preconditioned_sharpness"))

    def _fixed_hvps(self) -> int:
        """The HVPs of the quantities the budget cannot shorten: the trace's and err's."""
        trace = (defaults.SPECTRUM_STEPS * defaults.SPECTRUM_PROBES + defaults.TRACE_MAX_PROBES
                 if "trace" in self.quantities else 0)
        if "err" not in self.quantities:
            return trace
        trained = set(self._trained_names())
        dim = sum(p.numel() for n, p in self.model.named_parameters() if n in trained)
        return trace + (dim if dim <= defaults.EXACT_AUTO_MAX_DIM else
                        defaults.PROBES * min(defaults.STEPS, dim) + 2 * defaults.TOP_MAX_STEPS)

    def _seconds_per_hvp(self) -> float:
        """The last record's seconds per HVP; before any record, an estimate from one timed forward pass (see
        :meth:`_first_estimate`)."""
        if self.records and self.records[-1].hvps:
            return self.records[-1].seconds / self.records[-1].hvps
        if self._first_seconds_per_hvp is None:
            start = time.perf_counter()
            states = _random_states()
            try:
                self._first_seconds_per_hvp = self._first_estimate()
            finally:
                _restore_random_states(states)
            self.record_seconds += time.perf_counter() - start
        return self._first_seconds_per_hvp

    def _first_estimate(self) -> float:
        """Seconds per HVP before any record: one forward pass of at most FIRST_ESTIMATE_EXAMPLES evaluation
        examples on a copy of the model in the monitor's dtype and device, scaled to the whole evaluation set,
        x 3 for a gradient (forward and backward) and x HVP_PER_GRADIENT for an HVP. A forward of a few
        examples costs a small fraction of one HVP, so the estimate does not itself break the budget; a small
        batch's per-call overhead makes it err high (a later first record), never low."""
        from .api import _as_dataset
        from .curvature import _eval_copy, resolve_device, resolve_dtype
        from .data import iterate_batches

        dataset = _as_dataset(self.data)
        device, dtype = resolve_device(self.options["device"]), resolve_dtype(self.options["dtype"])
        inputs, _ = next(iterate_batches(dataset, FIRST_ESTIMATE_EXAMPLES))
        copy = _eval_copy(self.model, device, dtype)

        def placed(value):
            value = value.to(device)
            return value.to(dtype) if value.is_floating_point() else value

        start = time.perf_counter()
        with torch.no_grad():
            if isinstance(inputs, dict):
                copy(**{k: placed(v) for k, v in inputs.items()})
            else:
                copy(placed(inputs))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        forward = time.perf_counter() - start
        examples = len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)
        return forward * len(dataset) / max(examples, 1) * 3 * HVP_PER_GRADIENT

    def record(self, due_step: int | None = None) -> MonitorRecord:
        """Take one record now (whatever the schedule and budget), append it to ``records`` and write it to
        every sink."""
        states = _random_states()
        start = time.perf_counter()
        try:
            record = self._measure(due_step)
        finally:
            _restore_random_states(states)
        self.records.append(record)
        for sink in self.sinks:
            sink.write(record)
        self.record_seconds += time.perf_counter() - start
        self._since = time.perf_counter()
        return record

    def close(self) -> None:
        """Close the sinks (TensorBoard writers the monitor opened)."""
        for sink in self.sinks:
            sink.close()

    def _count_training(self) -> None:
        """Add the time since the monitor last returned to the training loop to the training time."""
        now = time.perf_counter()
        if self._since is not None:
            self.train_seconds += now - self._since
        self._since = now

    def _measure(self, due_step: int | None) -> MonitorRecord:
        from .api import Hessian
        from .curvature import ScaledOperator
        from .estimators import top_eigenvalues

        start, planned = time.perf_counter(), self.planned_hvps()
        H = Hessian(self.model, self.data, progress=False, params=self._trained_names(), **self.options)
        values: dict = {}
        if "loss" in self.quantities:
            values["loss"] = H.operator.mean_loss()
        if "accuracy" in self.quantities:
            values["accuracy"] = H.operator.mean_accuracy()
        if "sharpness" in self.quantities:
            top = top_eigenvalues(H.operator, self.top_k, torch.Generator().manual_seed(self.options["seed"]),
                                  max_steps=self._cap)
            values.update(sharpness=[float(v) for v in top.values], sharpness_bound=[float(b) for b in top.bounds])
        if "preconditioned_sharpness" in self.quantities:
            scale = preconditioner_scale(self.optimizer, self.model, H.operator.names)
            top = top_eigenvalues(ScaledOperator(H.operator, scale.to(H.operator.device, H.operator.dtype)),
                                  self.top_k, torch.Generator().manual_seed(self.options["seed"] + 1),
                                  max_steps=self._cap)
            values.update(preconditioned_sharpness=float(top.values[0]),
                          preconditioned_top=[float(v) for v in top.values],
                          preconditioned_bound=[float(b) for b in top.bounds])
        if "trace" in self.quantities:
            trace = H.trace()
            values.update(trace=trace.estimate, trace_stderr=trace.stderr)
        if "err" in self.quantities:
            values.update(self._err(H))
        if "updates" in self.quantities:
            from .updates import UpdateRecorder

            values["updates"] = UpdateRecorder(self.optimizer, self.model).current()
        record = MonitorRecord(self.steps, self.epoch, planned_hvps=planned, hvps=H.operator.matvecs,
                               seconds=time.perf_counter() - start, due_step=due_step,
                               step_cap=self._cap if self._cap < defaults.TOP_MAX_STEPS else None, **values)
        self._cap = defaults.TOP_MAX_STEPS
        return record

    def _err(self, H) -> dict:
        """err/d of both forms at the optimizer's last eta and lambda (as :func:`wdbound.err`)."""
        from .api import err

        eta, lam = last_eta_lam(self.optimizer)
        found = err(H, eta=eta, lam=lam, b=self.facts[0], n=self.facts[1])
        first = next(iter(found.values()))
        return {"err_mean": {form: r.err_mean for form, r in found.items()},
                "err_interval": {form: [r.err_mean_interval.low, r.err_mean_interval.high]
                                 for form, r in found.items()},
                "err_inputs": {**first.inputs.to_json(), "method": first.method}}

    def _trained_names(self) -> list[str]:
        """The parameters the optimizer trains (the Hessian spans them; frozen ones are held fixed)."""
        if self.optimizer is None:
            return [n for n, p in self.model.named_parameters() if p.requires_grad]
        trained = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        names = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) in trained]
        if not names:
            raise WdboundError("the optimizer trains none of the model's parameters", "optimizer")
        return names

    def to_pandas(self):
        """The records as a ``pandas.DataFrame``, one row per record (lists kept as lists; ``sharpness`` also
        as ``lambda_max``)."""
        import pandas as pd

        frame = pd.DataFrame([r.to_json() for r in self.records])
        if len(frame) and "sharpness" in frame:
            frame["lambda_max"] = [s[0] if s else math.nan for s in frame["sharpness"]]
        return frame


def preconditioner_scale(optimizer: torch.optim.Optimizer, model: nn.Module, names: list[str]) -> torch.Tensor:
    r"""``P^{-1/2}`` as a flat vector [d] over the parameters ``names`` (the Hessian operator's order), with
    :math:`P = \sqrt{\hat v_t} + \epsilon`, :math:`\hat v_t = v_t / (1 - \beta_2^t)` from each parameter's
    optimizer state (``exp_avg_sq``, ``step``) and its group's ``betas`` and ``eps``. A parameter without
    state (no step taken yet) is a one-line error."""
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for name in names:
        param = params[name]
        state, group = optimizer.state.get(param, {}), group_of.get(id(param))
        if group is None or "exp_avg_sq" not in state or "step" not in state:
            raise WdboundError(f"no Adam second moment for {name} yet: record after the optimizer's first step "
                               "(an Adam-family optimizer)", "optimizer")
        step = int(state["step"].item() if torch.is_tensor(state["step"]) else state["step"])
        beta2, eps = group["betas"][1], group["eps"]
        v_hat = state["exp_avg_sq"].detach().double() / (1 - beta2 ** step)
        parts.append((v_hat.sqrt() + eps).rsqrt().reshape(-1))
    return torch.cat(parts)


def last_eta_lam(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """η and λ of the optimizer's last step: wdbound's optimizers record them (``last_lr``, ``last_lam``: AdaL's
    α/√t, the -D variants' c1 γ^(t−1), AdamS's effective decay); a torch optimizer's first group's ``lr`` and
    ``weight_decay`` otherwise."""
    if hasattr(optimizer, "last_lr") and hasattr(optimizer, "last_lam"):
        return float(optimizer.last_lr), float(optimizer.last_lam)
    group = optimizer.param_groups[0]
    return float(group["lr"]), float(group.get("weight_decay", 0.0))


def _random_states() -> dict:
    """The global random states a record could touch."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _restore_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all(states["cuda"])


__all__ = ["Monitor", "MonitorRecord", "last_eta_lam", "preconditioner_scale"]
