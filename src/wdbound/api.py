"""The Python API for a model in hand: ``wdbound.Hessian`` and ``wdbound.err``.

PyHessian's ``hessian(model, criterion, data=(x, y))`` and curvlinops'
``HessianLinearOperator(model, loss_func, params, data)`` are how curvature is
studied from a notebook; this is wdbound's equivalent, on the same operator and
estimators as the CLI, returning the same typed results.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
>>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
>>> H = Hessian(model, (x, y))
>>> H.dim
23
>>> exact = H.exact()
>>> top = H.top_eigenvalues(1)
>>> bool(abs(top.values[0] - exact.eigenvalues[-1]) <= 1e-9 * abs(exact.eigenvalues[-1]))
True
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import defaults
from .bounds import FORMS, BoundInputs, corollary3_exact, corollary3_from_slq, theorem_exact
from .curvature import HessianOperator, dense_matrix, diagonal_by_columns, resolve_device, resolve_dtype
from .data import ArrayDataset
from .errors import WdboundError, check_seed
from .estimators import SLQ, DiagonalEstimate, TopEigen, TraceEstimate, hutchinson, top_eigenvalues
from .estimators.lanczos import Support
from .estimators.quadrature_interval import Interval
from .spectrum import auto_kept_graph, check_sizes, deflated_density, resolve_exact


def _as_dataset(data) -> Dataset:
    """``(inputs, targets)`` tensors, a ``Dataset`` of such pairs, or a ``DataLoader`` (its batches, in order)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
            raise WdboundError(f"data: inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must be "
                               "non-empty and of one length")
        return ArrayDataset(inputs, targets)
    if isinstance(data, DataLoader):
        batches = list(data)
        if not batches:
            raise WdboundError("data: the DataLoader yields no batch")
        for batch in batches:
            _check_pair(batch, "DataLoader batch", tensors=True)
        return ArrayDataset(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise WdboundError("data: the Dataset is empty")
        _check_pair(data[0], "Dataset item")
        return data
    raise WdboundError(f"data must be (inputs, targets) tensors, a Dataset or a DataLoader, not {type(data).__name__}")


def _check_pair(item, what: str, tensors: bool = False) -> None:
    """``item`` must be an ``(input, target)`` pair: a tensor input and a tensor (or, per item, a number) target.

    >>> _check_pair({"x": 1}, "Dataset item")
    Traceback (most recent call last):
    ...
    wdbound.errors.WdboundError: data: each Dataset item must be an (input, target) pair, got a dict
    """
    targets = (torch.Tensor,) if tensors else (torch.Tensor, numbers.Number)
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)
            and isinstance(item[1], targets)):
        kind = f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else \
            f"a {type(item).__name__}"
        raise WdboundError(f"data: each {what} must be an (input, target) pair, got {kind}")


def _check_probes(probes: int) -> None:
    """At least one probe, a whole number (one-line :class:`WdboundError` otherwise)."""
    if isinstance(probes, bool) or not isinstance(probes, numbers.Integral) or probes < 1:
        raise WdboundError(f"probes = {probes!r} must be an integer >= 1", "probes")


class _NotebookRepr:
    """Notebooks show the compact ``repr`` as preformatted HTML."""

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(repr(self))}</pre>"


@dataclass(frozen=True, repr=False)
class ExactSpectrum(_NotebookRepr):
    """The dense Hessian's eigenvalues (ascending) and diagonal."""

    eigenvalues: np.ndarray  # [d]
    diagonal: np.ndarray  # [d]

    @property
    def trace(self) -> float:
        """The exact trace: the sum of the eigenvalues."""
        return float(self.eigenvalues.sum())

    def to_json(self) -> dict:
        """Eigenvalues, diagonal, trace and d as JSON."""
        return {"eigenvalues": self.eigenvalues.tolist(), "trace": self.trace,
                "diagonal_zero": int((self.diagonal == 0).sum())}

    def __repr__(self) -> str:
        ev = self.eigenvalues
        return (f"ExactSpectrum(d={len(ev)}, lambda_max={ev[-1]:.6g}, lambda_min={ev[0]:.6g}, trace={self.trace:.6g}, "
                f"zero diagonal entries={int((self.diagonal == 0).sum())})")


@dataclass(frozen=True, repr=False)
class Density(_NotebookRepr):
    """An SLQ run with the ends of the spectrum (what the err/d intervals need) and its provenance."""

    slq: SLQ
    support: Support
    provenance: dict

    def __repr__(self) -> str:
        nodes, _ = self.slq.measure()
        return (f"Density({len(self.slq.nodes)} probes x {self.slq.alphas.shape[1]} steps, Ritz values in "
                f"[{nodes.min():.4g}, {nodes.max():.4g}], support [{self.support.low:.4g}, {self.support.high:.4g}], "
                f"{self.provenance.get('deflation', {}).get('logit_shift', 0)} logit-shift and "
                f"{self.provenance.get('deflation', {}).get('zero_rows', 0)} zero-row directions deflated)")

    def plot(self, path=None, title: str = "Hessian spectral density"):
        """The log-scale density plot of ``wdbound spectrum --plot``; saved to ``path`` or returned as a figure."""
        from .plots import density_figure

        return density_figure(self.slq, None, title, path)


class Hessian:
    """The Hessian of ``loss(model(inputs), targets)``, averaged over ``data``, at the model's parameters.

    Parameters
    ----------
    model:
        Any ``nn.Module``. It is copied (eval mode, ``dtype``, ``device``); the original is left as it was.
    data:
        ``(inputs, targets)`` tensors, a ``Dataset`` of ``(input, target)`` pairs, or a ``DataLoader``.
    loss:
        ``loss(outputs, targets)`` returning the mean loss of a batch (default: mean cross-entropy, the
        paper's setting; label smoothing: ``torch.nn.CrossEntropyLoss(label_smoothing=0.1)``).
    device, dtype:
        Where and in which precision the products run: names (``"auto"``, ``"cuda:1"``, ``"float32"``) or
        torch objects (``torch.device("cuda", 1)``, ``torch.float32``).
    params:
        Parameters spanning the Hessian: None (all trainable), names, or ``filter(name, parameter)``.
    keep_graph:
        Keep the gradient graph between products (double backward, about half the cost of a product on
        small models; memory of the whole evaluation set's graph). None: when it takes at most a quarter of
        the free memory.
    """

    def __init__(self, model: nn.Module, data, loss: Callable | None = None, *, device: str | torch.device = "auto",
                 dtype: str | torch.dtype = "float64", params=None, batch_size: int = 512, hvp: str = "auto",
                 seed: int = 0, keep_graph: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise WdboundError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        check_seed(seed)
        self.operator = HessianOperator(model, _as_dataset(data), batch_size=batch_size,
                                        device=resolve_device(device), dtype=resolve_dtype(dtype), mode=hvp,
                                        loss_fn=loss, params=params)
        self.operator.use_kept_graph(auto_kept_graph(self.operator) if keep_graph is None else keep_graph)
        self.seed = seed
        self.provenance = {"loss": getattr(loss, "__name__", None) or type(loss).__name__ if loss else
                           "mean cross-entropy", "dtype": str(self.operator.dtype).removeprefix("torch."),
                           "device": str(self.operator.device), "hvp": hvp,
                           "seed": seed, "n_eval": self.operator.n_eval, "d": self.operator.dim,
                           "parameters": list(self.operator.names)}

    @property
    def dim(self) -> int:
        """d: how many parameters span the Hessian."""
        return self.operator.dim

    def _generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def top_eigenvalues(self, k: int = 5) -> TopEigen:
        """The k largest eigenvalues by Lanczos, each with a residual bound on its error (1 <= k <= d, and at
        most the 300 a Lanczos run of at most 300 steps can certify)."""
        check_sizes(self.dim, top_k=k)
        return top_eigenvalues(self.operator, k, self._generator())

    def trace(self, probes: int = 16) -> TraceEstimate:
        """Hutchinson's trace with its standard error."""
        _check_probes(probes)
        return hutchinson(self.operator, probes, self._generator(3))[0]

    def diagonal(self, probes: int | None = 16) -> DiagonalEstimate:
        """Bekas et al.'s diagonal with per-entry standard errors; ``probes=None``: exact (d HVPs)."""
        if probes is None:
            exact = diagonal_by_columns(self.operator).double().cpu().numpy()
            return DiagonalEstimate(exact, np.zeros_like(exact), 0)
        _check_probes(probes)
        return hutchinson(self.operator, probes, self._generator(3))[1]

    def density(self, probes: int = defaults.PROBES, steps: int | None = None) -> Density:
        """SLQ with exact null directions deflated (zero rows, logit shift) and the spectrum's ends; the defaults
        are ``wdbound err``'s (``steps`` None: defaults.STEPS, at most d)."""
        _check_probes(probes)
        steps = min(defaults.STEPS, self.dim) if steps is None else steps
        check_sizes(self.dim, steps=steps)
        generator = self._generator()
        top = top_eigenvalues(self.operator, 1, generator)
        _, run, support, deflation = deflated_density(self.operator, probes, steps, self.seed, generator, top)
        return Density(run, support, {**self.provenance, "probes": probes, "steps": steps,
                                      "deflation": deflation.to_json(), "support": support.to_json(),
                                      "hvp_fallback": self.operator.fallback})

    def exact(self, max_dim: int = 20_000) -> ExactSpectrum:
        """Eigenvalues and diagonal of the dense Hessian (d HVPs; refused above ``max_dim`` parameters)."""
        if self.dim > max_dim:
            raise WdboundError(f"the dense Hessian of {self.dim} parameters is above the limit {max_dim}", "exact")
        matrix = dense_matrix(self.operator).double()
        return ExactSpectrum(torch.linalg.eigvalsh(matrix).cpu().numpy(), torch.diagonal(matrix).cpu().numpy())

    def dense(self) -> np.ndarray:
        """The dense Hessian [d, d] (float64)."""
        return dense_matrix(self.operator).double().cpu().numpy()


@dataclass(frozen=True, repr=False)
class ErrResult(_NotebookRepr):
    """Corollary 3 (and with a dense Hessian the Theorem 6/7 term) for one bound form."""

    form: str
    method: str  # "exact" or "slq"
    err_mean: float
    err_mean_interval: Interval
    err_sum: float
    phi: float
    theorem_term: float | None
    inputs: BoundInputs

    def to_json(self) -> dict:
        """The figures, their interval and the inputs as JSON."""
        return {"form": self.form, "method": self.method, "err_mean": self.err_mean,
                "err_mean_interval": self.err_mean_interval.to_json(), "err_sum": self.err_sum, "phi": self.phi,
                "theorem_term": self.theorem_term, "inputs": self.inputs.to_json()}

    def __repr__(self) -> str:
        lo, hi = self.err_mean_interval.low, self.err_mean_interval.high
        where = "exact" if self.method == "exact" else f"[{lo:.4g}, {hi:.4g}]"
        return f"ErrResult({self.form}: err/d = {self.err_mean:.6g} {where}, Phi = {self.phi:.6g})"


def err(source, *, eta: float, lam: float, b: int, n: int, form: str = "both", rho: float = 0.125,
        tau: float = 0.05, sigma_floor: float = 1e-6, x_norm_sq: float | None = None,
        exact: str = "auto", optimizer: str | None = None) -> dict[str, ErrResult]:
    """Corollary 3's err/d (with its interval) for ``source``: a :class:`Hessian` (``exact`` auto/on/off as in
    ``wdbound err``) or a :class:`Density` (SLQ). ``form``: adamw, l2-adam or both (``optimizer`` is its old,
    deprecated name). Returns one :class:`ErrResult` per form."""
    if optimizer is not None:
        import warnings

        warnings.warn("wdbound.err(optimizer=...) is deprecated; use form=...", DeprecationWarning, stacklevel=2)
        form = optimizer
    forms = list(FORMS) if form == "both" else [form]
    if any(f not in FORMS for f in forms):
        raise WdboundError(f"unknown bound form {form!r}; use adamw, l2-adam or both", "form")
    if isinstance(source, Hessian):
        d = source.dim
        norm = float(source.operator.params.double().square().sum()) if x_norm_sq is None else x_norm_sq
    elif isinstance(source, Density):
        d, norm = source.slq.dim, (0.0 if x_norm_sq is None else x_norm_sq)
    else:
        raise WdboundError(f"err needs a wdbound.Hessian or a Density, not {type(source).__name__}")
    inputs = BoundInputs(d=d, n=n, b=b, eta=eta, lam=lam, rho=rho, tau=tau, sigma_floor=sigma_floor, x_norm_sq=norm)
    inputs.validate()
    results = {}
    use_exact = isinstance(source, Hessian) and resolve_exact(exact, d)
    if use_exact:
        matrix = source.dense()
        eigenvalues = np.linalg.eigvalsh(matrix)
        for form in forms:
            cor = corollary3_exact(eigenvalues, form, inputs)
            results[form] = ErrResult(form, "exact", cor.err_mean, cor.err_mean_interval, cor.err_sum, cor.phi,
                                      theorem_exact(matrix, form, inputs).term, inputs)
        return results
    density = source if isinstance(source, Density) else source.density()
    for form in forms:
        cor = corollary3_from_slq(density.slq, form, inputs, density.support.bounds(),
                                  density.provenance.get("deflation", {}).get("logit_shift", 0))
        results[form] = ErrResult(form, "slq", cor.err_mean, cor.err_mean_interval, cor.err_sum, cor.phi, None,
                                  inputs)
    return results


__all__ = ["Density", "ErrResult", "ExactSpectrum", "Hessian", "err"]
