r"""Hessian-vector products of a model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``), where no
rank holds the whole model: central differences of FSDP's own gradients,

.. math:: Hv \approx \frac{g(\theta + \epsilon v) - g(\theta - \epsilon v)}{2\epsilon},

with ``v`` a sharded vector (each rank holds the coordinates of its parameter shards), the parameters moved in
place shard by shard and restored bit for bit, and every inner product summed over the ranks. Double backward
(``create_graph``) and ``torch.func.jvp`` do not go through FSDP2; one ordinary ``backward`` does, so an HVP
costs two gradients of the evaluation set.

**The step.** The default :math:`\epsilon` moves each coordinate by about :math:`u^{1/3}` times the parameters'
RMS (``u`` the unit roundoff of the parameters' dtype: the step that balances the central difference's
:math:`O(\epsilon^2)` truncation against the :math:`u\|g\|/\epsilon` rounding of the two gradients), i.e.
:math:`\epsilon = u^{1/3}\,\mathrm{rms}(\theta)\,/\,\mathrm{rms}(v)`. That balance assumes a smooth loss: a
ReLU or max-pool network changes its activation pattern within a step (the gradient jumps), and then a smaller
step is better. :meth:`ShardedHessian.hvp_error` therefore tries factors 1, 0.1, 0.01 and 10 on it and keeps
the one whose products at :math:`\epsilon` and :math:`2\epsilon` agree best. When even the best step leaves
them more than 5 % apart, the product is mostly noise: the rounding of a large gradient (:math:`u\|g\|/\epsilon`
against :math:`\|Hv\|`: a random-initialisation ResNet-18 in float64 gave products 300 times the exact ones)
or the jumps at ReLU kinks. The difference then saturates near 1 and no longer measures the error, so it is
refused with a one-line error instead of widened.

**Its error.** :meth:`ShardedHessian.hvp_error` compares the products at :math:`\epsilon` and
:math:`2\epsilon` on a few random unit vectors: :math:`\delta = \max \|h_{2\epsilon} - h_\epsilon\| /
\|h_\epsilon\|`, which holds both the truncation (Richardson: it changes by a factor 4 between the steps) and
the rounding noise of the two gradients (a factor 2, in a random direction). The error reported is relative,
:math:`\eta = C\delta` with :math:`C` = ``SAFETY`` = 10: each top-k bound is the Lanczos residual plus
:math:`\eta|\theta_i|`, the trace's error bar its standard error plus :math:`\eta|\mathrm{tr}|`. :math:`C`
is calibrated, not proved: on a digits MLP sharded over 2 processes the top-3 eigenvalues' error against the
dense double-backward Hessian was 3.0 :math:`\delta|\theta|` in float64 (1.5e-10 relative) and 3.1
:math:`\delta|\theta|` in float32 (1.0e-4); benchmarks/fsdp_hvp.py measures the ratio per dtype and model.

Under ``torchrun`` each rank evaluates its contiguous share of the evaluation examples; the loss is scaled so
that FSDP's averaging reduce-scatter yields the gradient of the mean loss over all of them, and every rank runs
the same number of backward passes (padding with zero-weight passes), since each one is a collective.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import WdboundError
from .estimators.hutchinson import rademacher
from .estimators.lanczos import tridiagonal
from .estimators.quadrature_interval import Interval

SAFETY = 10.0  # eta = SAFETY x delta, the largest relative difference of the products at eps and 2 eps
ERROR_VECTORS = 3  # random unit vectors the HVP error is measured on
STEP_SCALES = (1.0, 0.1, 0.01, 10.0)  # factors on the default step tried by hvp_error; the smallest delta wins
MAX_DELTA = 0.05  # above this at the best step, the products are noise (delta saturates near 1): refused


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def sharded_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters of an FSDP2 model (``DTensor`` s); an unsharded model is a one-line error."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise WdboundError("the model has no trainable parameters")
    if not all(hasattr(p, "to_local") for _, p in named):
        raise WdboundError("the model is not sharded by FSDP2 (fully_shard): use wdbound.Hessian for a whole "
                           "model on one device", "fsdp")
    return named


def _local(param: nn.Parameter) -> torch.Tensor:
    """The rank's shard of a parameter, as the tensor FSDP2 gathers from (writes to it move the parameter)."""
    return param._local_tensor if hasattr(param, "_local_tensor") else param.to_local()


@dataclass(frozen=True)
class HvpError:
    """The finite-difference HVP's error at the chosen step: ``eps_scale`` (ε for a unit vector), the largest
    relative difference ``relative`` (δ) between products at ε and 2ε over ``vectors`` unit vectors, ``eta`` =
    SAFETY x δ (the relative error every reported number is widened by), and δ at each step factor tried."""

    dtype: str
    eps_scale: float
    relative: float
    eta: float
    vectors: int
    tried: dict  # step factor -> delta at that factor

    def to_json(self) -> dict:
        """The fields by name."""
        return asdict(self)


@dataclass(frozen=True)
class ShardedTop:
    """Top-k eigenvalues of a sharded Hessian: Ritz values, Lanczos residual bounds, and the bounds widened by
    the HVP's relative error η (``bounds = residual + eta |values|``)."""

    values: np.ndarray
    residual: np.ndarray
    bounds: np.ndarray
    eta: float
    steps: int
    hvps: int


@dataclass(frozen=True)
class ShardedErr:
    """err/d of Corollary 3 for one bound form from a sharded SLQ run: the Gauss estimate of H̃'s (the
    finite-difference operator's) err/d, and an interval that covers H's own, widened for the products' error
    (:func:`~wdbound.estimators.quadrature_interval.perturbed_interval`: every eigenvalue within ``eps`` = η
    max(|low|, |high|) by Weyl). ``support`` is H̃'s (extreme Ritz values ± their residuals)."""

    form: str
    err_mean: float
    interval: Interval
    eps: float
    eta: float
    support: tuple[float, float]
    probes: int
    steps: int
    hvps: int

    def figures(self, dim: int):
        """These figures as the :class:`~wdbound.analysis.BoundFigures` a table cell holds (method ``slq``; what
        a sharded run does not compute, the stderr over probes, Φ and the mass below the floor, is NaN)."""
        from .analysis import BoundFigures

        nan = float("nan")
        return BoundFigures(self.form, "slq", self.err_mean * dim, nan, self.err_mean, nan, self.interval, nan, nan,
                            nan, 0, 0, self.probes, self.steps)

    def to_json(self) -> dict:
        """Every field, the interval as [low, high]."""
        return {"form": self.form, "err_mean": self.err_mean, "interval": [self.interval.low, self.interval.high],
                "eps": self.eps, "eta": self.eta, "support": list(self.support), "probes": self.probes,
                "steps": self.steps, "hvps": self.hvps}


class ShardedHessian:
    """The Hessian of the mean loss of an FSDP2-sharded ``model`` over ``data``, as shard-local products.

    Parameters
    ----------
    model:
        A model whose parameters ``fully_shard`` has sharded (every rank calls with its own shard).
    data:
        ``(inputs, targets)`` tensors of the whole evaluation set, the same on every rank; each rank evaluates
        its contiguous share.
    loss:
        ``loss(logits, targets) -> mean over the chunk`` (default: cross-entropy).
    batch_size:
        Examples per forward/backward pass (a memory knob).
    seed:
        Seed of the probes and start vectors (each rank draws its shard's coordinates from ``seed`` and its
        rank).
    """

    def __init__(self, model: nn.Module, data, loss: Callable | None = None, *, batch_size: int = 256,
                 seed: int = 0) -> None:
        dist = _dist()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
        self.model = model
        self.named = sharded_parameters(model)
        self.locals = [_local(p) for _, p in self.named]
        self.dtype, self.device = self.locals[0].dtype, self.locals[0].device
        self.local_dim = sum(t.numel() for t in self.locals)
        self.dim = int(self._sum(torch.tensor(float(self.local_dim), dtype=torch.float64)))
        inputs, targets = data
        n = len(targets)
        share = slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)
        self.inputs, self.targets, self.n_eval = inputs[share], targets[share], n
        self.batch_size = batch_size
        self.loss = loss if loss is not None else nn.functional.cross_entropy
        self.seed = seed
        self.passes = int(self._max(-(-len(self.targets) // batch_size)))
        self.theta = torch.cat([t.detach().reshape(-1) for t in self.locals]).clone()
        theta_rms = math.sqrt(self.dot(self.theta, self.theta) / self.dim)
        self.unit_roundoff = float(torch.finfo(self.dtype).eps) / 2
        self.eps_scale = self.unit_roundoff ** (1 / 3) * max(theta_rms, 1e-3) * math.sqrt(self.dim)
        self.gradients = 0
        self.error: HvpError | None = None
        self.on_hvps: Callable[[int], None] | None = None  # called with 1 after each HVP (a progress bar)
        self.memory_plan: ShardedMemoryPlan | None = None  # the per-rank plan (set by the command's setup)
        # The density and err runs without a kept basis (the three-term recurrence): set by the setup when the
        # plan chose it (--lanczos low-memory, or auto when the whole basis does not fit the budget).
        self.low_memory = False
        # Exactly-zero Hessian rows (hvp_error finds them): this rank's mask, and their count over the ranks.
        self.null: torch.Tensor | None = None
        self.null_count = 0

    def measured_plan(self) -> ShardedMemoryPlan | None:
        """The memory plan with the peak measured so far, the largest over the ranks (None without a plan)."""
        from .memory import peak_bytes

        if self.memory_plan is None:
            return None
        return replace(self.memory_plan, peak_measured=int(self._max(peak_bytes(self.device))))

    # ---- collectives and vectors

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist = _dist()
        if dist is not None and self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def _max(self, value: float) -> float:
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist = _dist()
        if dist is not None and self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor[0])

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """⟨a, b⟩ of two sharded vectors (local dot, summed over the ranks)."""
        return float(self._sum(torch.dot(a.double().reshape(-1), b.double().reshape(-1)).reshape(1))[0])

    def random(self, generator: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        """A sharded random vector: this rank's coordinates (Gaussian or Rademacher)."""
        if kind == "rademacher":
            return rademacher(1, self.local_dim, generator, self.dtype, self.device)[0]
        return torch.randn(self.local_dim, generator=generator, dtype=torch.float64).to(self.dtype).to(self.device)

    def probe(self, generator: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        """:meth:`random` with the exactly-zero Hessian rows set to 0 (a start vector or probe of the estimators:
        those rows' eigenvalue 0 is counted exactly instead, and the trace loses nothing: their diagonal is 0)."""
        v = self.random(generator, kind)
        return v if self.null is None else v.masked_fill(self.null, 0)

    def generator(self, stream: int = 0) -> torch.Generator:
        """This rank's generator for ``stream`` (seeded by the seed, the stream and the rank)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + stream * 7919 + self.rank)

    # ---- gradients and products

    def _set(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            start = 0
            for t in self.locals:
                t.copy_(flat[start:start + t.numel()].view_as(t))
                start += t.numel()

    def gradient(self) -> torch.Tensor:
        """This rank's shard of the gradient of the mean loss over the whole evaluation set at the present
        parameters (FSDP's reduce-scatter averages the ranks' scaled losses)."""
        was_training = self.model.training
        self.model.eval()
        for _, p in self.named:
            p.grad = None
        for index in range(self.passes):
            start = index * self.batch_size
            x, y = self.inputs[start:start + self.batch_size], self.targets[start:start + self.batch_size]
            weight = len(y) * self.world / self.n_eval
            if len(y) == 0:  # a padding pass: every rank must run as many backward passes (collectives)
                x, y, weight = self.inputs[:1], self.targets[:1], 0.0
            loss = self.loss(_logits(self.model(x.to(self.device))), y.to(self.device)) * weight
            loss.backward()
        self.model.train(was_training)
        self.gradients += 1
        grads = [p.grad.to_local().reshape(-1) if p.grad is not None else torch.zeros(_local(p).numel(),
                 dtype=self.dtype, device=self.device) for _, p in self.named]
        out = torch.cat(grads).detach().clone()
        for _, p in self.named:
            p.grad = None
        return out

    def hvp(self, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``H v`` by central differences with ε = ``scale`` x eps_scale / ‖v‖ (two gradients); the parameters
        are restored bit for bit."""
        norm = math.sqrt(self.dot(v, v))
        if norm == 0:
            return torch.zeros_like(v)
        eps = scale * self.eps_scale / norm
        try:
            self._set(self.theta + eps * v)
            plus = self.gradient()
            self._set(self.theta - eps * v)
            minus = self.gradient()
        finally:
            self._set(self.theta)
        if self.on_hvps is not None:
            self.on_hvps(1)
        return (plus - minus) / (2 * eps)

    @property
    def hvps(self) -> int:
        """HVPs spent (two gradients each)."""
        return self.gradients // 2

    def hvp_error(self, vectors: int = ERROR_VECTORS, scales=STEP_SCALES) -> HvpError:
        """Choose the step and measure the HVP's error there: for each factor of ``scales`` on the default step,
        the products at ε and 2ε on ``vectors`` random unit vectors give δ (their largest relative
        difference); the factor with the smallest δ is kept (2 x ``vectors`` x ``len(scales)`` HVPs). The error
        is kept as :attr:`error` and widens every bound reported afterwards."""
        generator = self.generator(99)
        zero = torch.ones(self.local_dim, dtype=torch.bool, device=self.device)
        units = []
        for _ in range(vectors):
            v = self.random(generator)
            units.append(v / math.sqrt(self.dot(v, v)))
        tried = {}
        for scale in scales:
            relative = 0.0
            for v in units:
                h1, h2 = self.hvp(v, scale), self.hvp(v, 2.0 * scale)
                zero &= (h1 == 0) & (h2 == 0)
                diff = math.sqrt(self.dot(h2 - h1, h2 - h1))
                relative = max(relative, diff / max(math.sqrt(self.dot(h1, h1)), 1e-300))
            tried[float(scale)] = relative
        best = min(tried, key=tried.get)
        if tried[best] > MAX_DELTA:
            dtype = str(self.dtype).replace("torch.", "")
            raise WdboundError(f"the finite-difference HVP is unreliable for this model in {dtype}: the products at "
                               f"eps and 2 eps differ by {tried[best]:.0%} at the best step tried (rounding of a "
                               f"large gradient, or its jumps at ReLU kinks); use float64, a trained checkpoint "
                               f"(small gradient), or smooth activations", "dtype")
        self.eps_scale *= best
        # A coordinate whose gradient is identically 0 near θ (a weight on an input that is always 0, a dead unit)
        # gives exactly 0 in every product at every step: an exactly-zero Hessian row, deflated like the
        # unsharded path's (curvature.zero_rows); any other coordinate is exactly 0 in all of them with
        # probability 0.
        self.null = zero
        self.null_count = int(self._sum(zero.sum().to(torch.float64).reshape(1))[0])
        self.error = HvpError(str(self.dtype).replace("torch.", ""), self.eps_scale, tried[best],
                              SAFETY * tried[best], vectors, tried)
        return self.error

    # ---- estimators on shard-local vectors

    def _project_out(self, basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``w`` minus its components along the rows of ``basis`` (orthonormal), the coefficients of all rows
        summed over the ranks in one all-reduce."""
        coefficients = self._sum(basis.double() @ w.double()).to(w.dtype)
        return w - coefficients @ basis

    def recurrence(self, start: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``steps`` Lanczos steps of the plain three-term recurrence from ``start``: α [m], β [m] (β[-1] the
        residual norm), three vectors of the local coordinates held, two all-reduces per step. Without
        re-orthogonalisation the basis loses orthogonality as Ritz values converge and converged eigenvalues
        come back as ghost copies; the Gauss quadrature of the run stays that of a measure within rounding of
        the true one (Greenbaum 1989; Knizhnerman 1996), which is what SLQ needs. For the density and err/d only:
        the top-k run keeps its basis (:meth:`lanczos`)."""
        steps = min(steps, self.dim)
        q = start / math.sqrt(self.dot(start, start))
        previous = torch.zeros_like(q)
        alphas, betas, beta = [], [], 0.0
        for _ in range(steps):
            w = self.hvp(q).to(self.dtype) - beta * previous
            alpha = self.dot(w, q)
            w -= alpha * q
            beta = math.sqrt(max(self.dot(w, w), 0.0))
            alphas.append(alpha)
            betas.append(beta)
            if beta <= 1e-12 * max(abs(alpha), 1e-300):
                break
            previous, q = q, w / beta
            del w
        return np.array(alphas), np.array(betas)

    def _slq_run(self, start: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """α and β of one SLQ probe's run: :meth:`recurrence` when the plan chose low memory, else :meth:`lanczos`."""
        return self.recurrence(start, steps) if self.low_memory else self.lanczos(start, steps)[:2]

    def lanczos(self, start: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """``steps`` Lanczos steps with full reorthogonalisation from ``start`` (all inner products summed over
        the ranks): the tridiagonal's α [m], β [m] (β[-1] the residual norm) and the local basis [m, local d].

        The basis is one preallocated [steps + 1, local d] tensor and each re-orthogonalisation two products
        with it and one all-reduce of its coefficients: a list of vectors, each dotted and reduced in turn, cost
        a collective per vector and fragmented the heap (1.1 M parameters, 60 steps, float64: the measured peak
        was 2.3 x the plan; benchmarks/fsdp_memory.py)."""
        steps = min(steps, self.dim)
        basis = torch.empty(steps + 1, self.local_dim, dtype=self.dtype, device=self.device)
        basis[0] = start / math.sqrt(self.dot(start, start))
        alphas, betas = [], []
        for m in range(steps):
            w = self.hvp(basis[m]).to(self.dtype)
            alpha = self.dot(w, basis[m])
            for _ in range(2):  # full reorthogonalisation, twice is enough
                w = self._project_out(basis[:m + 1], w)
            beta = math.sqrt(max(self.dot(w, w), 0.0))
            alphas.append(alpha)
            betas.append(beta)
            if beta <= 1e-12 * max(abs(alpha), 1e-300):
                break
            basis[m + 1] = w / beta
            del w
        return np.array(alphas), np.array(betas), basis[: len(alphas)]

    def top_eigenvalues(self, k: int = 5, steps: int = 60) -> ShardedTop:
        """The k largest eigenvalues from one Lanczos run, each with its residual bound |β_m u_{m,i}| widened by
        η|θ_i| (η, the HVP's relative error, measured first when not yet measured)."""
        if self.error is None:
            self.hvp_error()
        before = self.hvps
        alphas, betas, _ = self.lanczos(self.probe(self.generator(1)), steps)
        tri = tridiagonal(alphas, betas[:-1])
        values, vectors = np.linalg.eigh(tri)
        order = np.argsort(values)[::-1][:k]
        residual = np.abs(betas[-1] * vectors[-1, order])
        return ShardedTop(values[order], residual, residual + self.error.eta * np.abs(values[order]),
                          self.error.eta, len(alphas), self.hvps - before)

    def trace(self, probes: int = 32) -> tuple[float, float]:
        """Hutchinson's trace over ``probes`` Rademacher vectors: (estimate, error bar), the error bar one
        standard error plus η|estimate| (the HVP error's share)."""
        if self.error is None:
            self.hvp_error()
        generator = self.generator(2)
        samples = []
        for _ in range(probes):
            z = self.probe(generator, "rademacher")
            samples.append(self.dot(z, self.hvp(z)))
        samples = np.array(samples)
        stderr = samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else math.nan
        return float(samples.mean()), float(stderr + self.error.eta * abs(samples.mean()))

    def density(self, probes: int = 2, steps: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """SLQ nodes and weights (each probe's Ritz values, weighted by the squared first components / probes, on
        the (d - m0) / d of the spectrum the probes see) and the exactly-zero rows' atom at 0 (weight m0 / d)."""
        if self.error is None:
            self.hvp_error()
        nodes, weights = [np.zeros(1)], [np.array([self.null_count / self.dim])]
        generator = self.generator(3)
        for _ in range(probes):
            alphas, betas = self._slq_run(self.probe(generator), steps)
            tri = tridiagonal(alphas, betas[:-1])
            values, vectors = np.linalg.eigh(tri)
            nodes.append(values)
            weights.append(vectors[0] ** 2 / probes * (self.dim - self.null_count) / self.dim)
        return np.concatenate(nodes), np.concatenate(weights)


    def err(self, inputs, forms=("adamw", "l2-adam"), probes: int = 2, steps: int = 40) -> list[ShardedErr]:
        """err/d of Corollary 3 (``inputs``: :class:`~wdbound.bounds.BoundInputs` with ``d`` = :attr:`dim`) for each
        of ``forms``, from ``probes`` Rademacher SLQ runs of ``steps`` Lanczos steps on the sharded products
        (recurrences summed over the ranks, the same numbers on every rank), each with an interval widened for
        the HVP's error η (measured first when not yet measured). The support: the probes' extreme Ritz values
        widened by their residuals (the extreme Ritz values converge first: Kaniel–Paige)."""
        from .bounds import corollary3_integrand
        from .estimators.lanczos import SLQ
        from .estimators.quadrature_interval import perturbed_interval

        if inputs.d != self.dim:
            raise WdboundError(f"the bound's d = {inputs.d} is not the sharded Hessian's {self.dim}", "d")
        inputs.validate()
        if self.error is None:
            self.hvp_error()
        before = self.hvps
        generator = self.generator(4)
        runs = [self._slq_run(self.probe(generator, "rademacher"), steps) for _ in range(probes)]
        width = max(len(a) for a, _ in runs)
        alphas, betas = np.zeros((probes, width)), np.zeros((probes, max(width - 1, 0)))
        lengths, lows, highs = np.zeros(probes, dtype=np.int64), [], []
        for i, (a, b) in enumerate(runs):
            n = len(a)
            alphas[i, :n], betas[i, :n - 1], lengths[i] = a, b[:n - 1], n
            theta, vectors = np.linalg.eigh(tridiagonal(a, b[:n - 1]))
            lows.append(float(theta[0] - abs(b[-1] * vectors[-1, 0])))
            highs.append(float(theta[-1] + abs(b[-1] * vectors[-1, -1])))
        support = (min(lows), max(highs))
        eps = self.error.eta * max(abs(support[0]), abs(support[1]))
        # Masked Rademacher probes: |z|^2 = d - m0, and the m0 zero rows an exact atom at 0. A three-term run is
        # exact only where it broke down (its ghosts can fill d steps without spanning anything).
        run = SLQ.from_tridiagonals(alphas, betas, lengths, np.full(probes, float(self.dim - self.null_count)),
                                    self.dim, float(self.null_count),
                                    complete=lengths < width if self.low_memory else None)
        found = []
        for form in forms:
            box = perturbed_interval(run, corollary3_integrand(form, inputs), support, eps).affine(1 / self.dim)
            found.append(ShardedErr(form, box.estimate, box, eps, self.error.eta, support, probes, steps,
                                    self.hvps - before))
        return found


@dataclass(frozen=True)
class ShardedMemoryPlan:
    """Bytes one rank holds in a sharded analysis (:func:`sharded_memory_plan`), and after the run the peak it
    measured (the largest over the ranks: ``VmHWM`` on the CPU, max allocated on CUDA)."""

    baseline: int  # held before the analysis (torch, the checkpoint, the evaluation data)
    shard: int  # this rank's parameter shard, its gradient shard, the saved θ and the two gradients of an HVP
    gathered: int  # the largest FSDP unit all-gathered in full (its parameters and gradients) during a pass
    data: int  # this rank's share of the evaluation examples, in the analysis dtype
    activations: int  # one forward/backward pass of a batch
    lanczos: int  # the largest Lanczos run's local basis and work vectors
    runtime: int = 0  # what a running process allocates besides: communication buffers, the allocator, autograd
    peak_measured: int | None = None
    mode: str = "full"  # the SLQ runs' Lanczos: full (whole local basis) or low-memory (three-term recurrence)
    budget: int | None = None  # per rank (choose_sharded_plan), and where it comes from
    budget_source: str = ""
    vector: int = 0  # bytes of one shard-local vector
    dim: int = 0  # parameters the Hessian spans (a Krylov space has at most this many dimensions)

    def recurrence(self, kept_steps: int) -> "ShardedMemoryPlan":
        """This plan with the SLQ runs as the three-term recurrence: 5 work vectors, and a basis kept only by
        a run of ``kept_steps`` steps (the top-k run's, at most d; 0: none)."""
        return replace(self, lanczos=(min(kept_steps, self.dim) + 5) * self.vector, mode="low-memory")

    @property
    def peak(self) -> int:
        """Planned peak per rank."""
        return (self.baseline + self.shard + self.gathered + self.data + self.activations + self.lanczos
                + self.runtime)

    def to_json(self) -> dict:
        """Every part, the planned peak and the measured one."""
        return {**asdict(self), "peak": self.peak}


def sharded_memory_plan(model: nn.Module, example: torch.Tensor, *, world: int, dtype: torch.dtype,
                        examples_per_rank: int, batch_size: int, steps: int, baseline: int) -> ShardedMemoryPlan:
    """What one of ``world`` ranks holds, from the unsharded ``model`` (before ``fully_shard``) and one input
    ``example``: its 1/world share of every parameter four times (the shard, its gradient, the saved θ, a
    gradient kept across the two of an HVP) plus one more during each difference, the largest unit gathered
    whole (parameters and gradients), its examples, one pass's activations (:func:`wdbound.memory.activation_floats`
    × the batch, forward and backward, with the plans' safety factor), a Lanczos run of ``steps`` vectors
    of its coordinates plus 4 work vectors (:meth:`ShardedMemoryPlan.recurrence`: the same plan without that
    basis), and the runtime's own (``SHARDED_RUNTIME_BYTES`` and ``SHARDED_RUNTIME_VECTORS`` full-size vectors,
    calibrated)."""
    from .memory import ACTIVATION_SAFETY, activation_floats

    size = torch.empty((), dtype=dtype).element_size()
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    local, steps = -(-dim // world), min(steps, dim)  # a Krylov space has at most d dimensions
    units = [sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()]
    per_pass = activation_floats(model, example[None]) * min(batch_size, max(examples_per_rank, 1))
    return ShardedMemoryPlan(baseline=baseline, shard=5 * local * size, gathered=2 * max(units) * size,
                             data=examples_per_rank * example.numel() * size,
                             activations=int(ACTIVATION_SAFETY * 2 * per_pass * size),
                             lanczos=(steps + 5) * local * size,
                             runtime=SHARDED_RUNTIME_BYTES + SHARDED_RUNTIME_VECTORS[min(world, 2)] * dim * size,
                             vector=local * size, dim=dim)


def choose_sharded_plan(full: ShardedMemoryPlan, low: ShardedMemoryPlan, mode: str, budget: int,
                        source: str) -> ShardedMemoryPlan:
    """The per-rank plan ``--lanczos`` asks for (``full``, ``low-memory``, or ``auto``: the whole basis when
    its plan fits ``budget``, else the three-term recurrence), with the budget; a one-line error when the
    chosen plan does not fit (before any HVP).

    >>> full = ShardedMemoryPlan(0, 10, 0, 0, 0, 100)
    >>> low = ShardedMemoryPlan(0, 10, 0, 0, 0, 5, mode="low-memory")
    >>> choose_sharded_plan(full, low, "auto", 200, "--memory").mode, choose_sharded_plan(full, low, "auto", 50, "").mode
    ('full', 'low-memory')
    """
    from .memory import human_bytes

    chosen = full if mode == "full" or (mode == "auto" and full.peak <= budget) else low
    chosen = replace(chosen, budget=budget, budget_source=source)
    if chosen.peak > budget:
        raise WdboundError(
            f"--fsdp needs ~{human_bytes(chosen.peak)} per rank ({chosen.mode} Lanczos: vectors "
            f"{human_bytes(chosen.lanczos)}, shards {human_bytes(chosen.shard)}, runtime {human_bytes(chosen.runtime)}, "
            f"activations {human_bytes(chosen.activations)}) but the memory budget is {human_bytes(budget)} "
            f"({source}); use more processes, float32, " + ("" if chosen.mode == "low-memory" else "--lanczos "
            "low-memory, ") + "a smaller --hvp-batch-size or a larger --memory", "memory")
    return chosen


# A rank's allocations besides the plan's parts while the product runs (gloo's and FSDP's buffers, autograd's,
# the allocator's caches), calibrated on benchmarks/fsdp_memory.py (an MLP of 1.1 M and 2.5 M parameters, float64,
# gloo on the CPU): a fixed part and a part in full-size (d, not d / ranks) vectors, 7 alone and 13 on each of two
# ranks. The second is what keeps the per-rank memory from falling as 1 / ranks there: FSDP2's unsharded
# gradients and gloo's collective buffers are full-size. Not measured with NCCL on GPUs.
SHARDED_RUNTIME_BYTES = 128 * 2**20
SHARDED_RUNTIME_VECTORS = {1: 7, 2: 13}  # full-size vectors by ranks (more ranks: the 2-rank count)
SHARDED_TRACE_PROBES = 32  # `spectrum --fsdp`: Hutchinson probes of the trace (no Krylov deflation there yet)
SHARDED_TOP_STEPS = 60  # `spectrum --fsdp`: steps of the top-k Lanczos run (at least 2 k + 10)


def sharded_top_steps(top_k: int) -> int:
    """Steps of ``spectrum --fsdp``'s top-k Lanczos run: ``SHARDED_TOP_STEPS``, at least 2 k + 10.

    >>> sharded_top_steps(5), sharded_top_steps(40)
    (60, 90)
    """
    return max(SHARDED_TOP_STEPS, 2 * top_k + 10)


@dataclass(frozen=True)
class ShardedRun:
    """How a sharded analysis ran: the HVP's measured error, the sizes, the HVPs and seconds, the inputs'
    provenance and the per-rank memory (planned and measured)."""

    error: HvpError
    dim: int
    local_dim: int
    world: int
    n_eval: int
    hvps: int
    seconds: float
    provenance: dict
    memory: ShardedMemoryPlan | None = None
    zero_rows: int = 0  # exactly-zero Hessian rows deflated (counted as exact zero eigenvalues)

    @classmethod
    def of(cls, H: "ShardedHessian", seconds: float, provenance: dict) -> "ShardedRun":
        """The run of ``H`` so far (its measured plan: a collective, every rank calls it)."""
        return cls(H.error, H.dim, H.local_dim, H.world, H.n_eval, H.hvps, seconds, provenance, H.measured_plan(),
                   H.null_count)

    def to_json(self) -> dict:
        """Every field by name (``local_d``, ``wall_seconds``, ``hvp_error``)."""
        return {"sharded": True, "world": self.world, "d": self.dim, "local_d": self.local_dim,
                "n_eval": self.n_eval, "hvps": self.hvps, "wall_seconds": self.seconds, "zero_rows": self.zero_rows,
                "hvp_error": self.error.to_json(), "memory": self.memory.to_json() if self.memory else None,
                "provenance": self.provenance}


@dataclass(frozen=True)
class ShardedSpectrum:
    """What ``wdbound spectrum --fsdp`` computes on a model sharded over the torchrun processes: top-k with
    bounds widened by η, the trace with its bar (stderr + η|tr|), the SLQ density, and how it was run."""

    top: ShardedTop
    trace: float
    trace_bar: float
    nodes: np.ndarray
    weights: np.ndarray
    run: ShardedRun

    def to_json(self) -> dict:
        """Every figure with the inputs and choices that produced it."""
        return {**self.run.to_json(),
                "top": {"values": self.top.values.tolist(), "residuals": self.top.residual.tolist(),
                        "bounds": self.top.bounds.tolist(), "eta": self.top.eta, "steps": self.top.steps},
                "trace": {"estimate": self.trace, "bar": self.trace_bar, "probes": SHARDED_TRACE_PROBES,
                          "method": "hutchinson (finite-difference HVPs)"},
                "density": {"nodes": self.nodes.tolist(), "weights": self.weights.tolist()}}


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` every submodule that owns parameters directly (one FSDP unit each), then the root, over
    all the processes of the group (``--fsdp``). The model is sharded in place and returned."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist = _dist()
    world = dist.get_world_size() if dist is not None else 1
    mesh = init_device_mesh(device.type, (world,))
    for module in list(model.modules()):
        if module is not model and next(module.parameters(recurse=False), None) is not None:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def require_torchrun():
    """``torch.distributed`` when this process is one of at least two torchrun processes, else the one-line
    error of ``--fsdp`` (said before any work)."""
    dist = _dist()
    if dist is None or dist.get_world_size() < 2:
        raise WdboundError("--fsdp shards the model over torchrun's processes: start it with "
                           "torchrun --nproc-per-node N (N >= 2)", "fsdp")
    return dist


def _sharded_setup(ckpt, settings, on_hvps: Callable[[int], None] | None,
                   top: bool = True) -> tuple["ShardedHessian", dict]:
    """The checkpoint's model copied, cast to ``settings.dtype``, sharded over the torchrun processes
    (:func:`shard_model`), and its evaluation data (``--data``, ``--split``, ``--max-samples`` with
    ``--subset-seed``, drawn as the unsharded path draws them) split among the ranks: the operator and the
    provenance of the inputs. ``top``: a top-k run (whose basis is kept) follows; without it (``err``) the
    low-memory plan keeps no basis at all."""
    import copy

    from .curvature import resolve_device, resolve_dtype
    from .data import evaluation_subset, first_tensor, load_dataset
    from . import defaults
    from .distributed import local_device
    from .memory import memory_budget
    from .models import image_size
    from .spectrum import evaluation_data, loss_function

    dist = require_torchrun()
    if settings.params:
        raise WdboundError("--fsdp takes the Hessian of every parameter: --params is not supported there", "params")
    dtype, device = resolve_dtype(settings.dtype), local_device(resolve_device(settings.device))
    spec = evaluation_data(ckpt, settings)
    dataset = load_dataset(spec, settings.split, image_size(ckpt.meta["arch"], ckpt.meta.get("arch_kwargs")))
    subset = evaluation_subset(len(dataset), settings.max_samples, settings.subset_seed)
    indices = subset.tolist() if subset is not None else range(len(dataset))
    items = [dataset[i] for i in indices]
    if not all(isinstance(x, torch.Tensor) for x, _ in items):
        raise WdboundError("--fsdp takes datasets of (tensor, label) examples; this one has "
                           f"{type(first_tensor(items[0][0])).__name__} inputs", "data")
    x = torch.stack([x for x, _ in items]).to(dtype)
    y = torch.tensor([int(label) for _, label in items])
    model = copy.deepcopy(ckpt.model).to(device=device, dtype=dtype).eval()
    world = dist.get_world_size()
    top_steps = sharded_top_steps(settings.top_k) if top else 0
    shape = dict(world=world, dtype=dtype, batch_size=settings.batch_size, examples_per_rank=-(-len(y) // world),
                 steps=max(top_steps, settings.steps or defaults.STEPS))
    # The ranks on one node share its RAM (not its GPUs); every rank plans with the largest baseline and the
    # smallest budget of them all, so all choose the same Lanczos (the collectives must match) or all refuse.
    budget, baseline, source = memory_budget(settings.memory, device, share_of=1 if device.type == "cuda" else
                                             int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    agreed = torch.tensor([float(baseline), -float(budget)], dtype=torch.float64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    baseline, budget = int(agreed[0]), int(-agreed[1])
    full = sharded_memory_plan(model, x[0].to(device), baseline=baseline, **shape)
    plan = choose_sharded_plan(full, full.recurrence(top_steps), settings.lanczos, budget, source)
    shard_model(model, device)
    H = ShardedHessian(model, (x, y), loss_function(settings.loss), batch_size=settings.batch_size,
                       seed=settings.seed)
    H.on_hvps = on_hvps
    H.memory_plan = plan
    H.low_memory = plan.mode == "low-memory"
    provenance = {"checkpoint": str(ckpt.path), "data": spec, "split": settings.split,
                  "max_samples": settings.max_samples, "subset_seed": settings.subset_seed, "seed": settings.seed,
                  "dtype": str(dtype).removeprefix("torch."), "device": str(device), "loss": settings.loss,
                  "hvp": "central difference of FSDP2 gradients"}
    return H, provenance


def sharded_spectrum(ckpt, settings, on_hvps: Callable[[int], None] | None = None) -> ShardedSpectrum:
    """``wdbound spectrum --fsdp`` (:func:`_sharded_setup`): from finite-difference products, the HVP error,
    top-k (``SHARDED_TOP_STEPS`` Lanczos steps), the trace (``SHARDED_TRACE_PROBES`` Rademacher probes) and the
    SLQ density (``settings.probes`` x ``settings.steps``)."""
    import time

    start = time.perf_counter()
    H, provenance = _sharded_setup(ckpt, settings, on_hvps)
    H.hvp_error()
    resolved = settings.for_dim(H.dim)
    top = H.top_eigenvalues(resolved.top_k, steps=sharded_top_steps(resolved.top_k))
    trace, bar = H.trace(SHARDED_TRACE_PROBES)
    nodes, weights = H.density(resolved.probes, resolved.steps)
    provenance.update(probes=resolved.probes, steps=resolved.steps, top_k=resolved.top_k)
    return ShardedSpectrum(top, trace, bar, nodes, weights, ShardedRun.of(H, time.perf_counter() - start, provenance))


@dataclass(frozen=True)
class ShardedErrReport:
    """What ``wdbound err --fsdp`` computes: err/d of each form with its widened interval, the bound's inputs
    and how it was run."""

    errs: tuple[ShardedErr, ...]
    inputs: object  # BoundInputs
    run: ShardedRun

    def to_json(self) -> dict:
        """Every figure with the inputs and choices that produced it."""
        return {**self.run.to_json(), "inputs": self.inputs.to_json(),
                "forms": {e.form: e.to_json() for e in self.errs}}


def sharded_err(ckpt, settings, inputs, forms, on_hvps: Callable[[int], None] | None = None) -> ShardedErrReport:
    """``wdbound err --fsdp`` (:func:`_sharded_setup`): err/d of Corollary 3 for ``forms`` from ``settings.probes``
    SLQ runs of ``settings.steps`` steps (err's defaults), each interval widened for the finite-difference
    error (:meth:`ShardedHessian.err`). No Theorem 6/7 term: it needs Q's diagonal (d more HVPs)."""
    import time

    start = time.perf_counter()
    H, provenance = _sharded_setup(ckpt, settings, on_hvps, top=False)
    H.hvp_error()
    resolved = settings.for_dim(H.dim)
    errs = H.err(inputs, forms, probes=resolved.probes, steps=resolved.steps)
    provenance.update(probes=resolved.probes, steps=resolved.steps)
    return ShardedErrReport(tuple(errs), inputs, ShardedRun.of(H, time.perf_counter() - start, provenance))


def expected_sharded_hvps(settings, dim: int, command: str = "spectrum") -> int:
    """The HVPs :func:`sharded_spectrum` (``command="err"``: :func:`sharded_err`) spends: the step ladder, then
    top-k, trace and density, or the err runs (for a progress bar)."""
    resolved = settings.for_dim(dim)
    ladder = 2 * ERROR_VECTORS * len(STEP_SCALES)
    if command == "err":
        return ladder + resolved.probes * resolved.steps
    return (ladder + sharded_top_steps(resolved.top_k) + SHARDED_TRACE_PROBES
            + resolved.probes * resolved.steps)


def _logits(output) -> torch.Tensor:
    from .curvature import logits_of

    return logits_of(output)


__all__ = ["HvpError", "ShardedHessian", "ShardedTop", "sharded_parameters"]
