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

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import defaults
from .bounds import BoundInputs, corollary3_exact, corollary3_from_slq, theorem_exact
from .curvature import (HessianOperator, dense_matrix, diagonal_by_columns, estimator_scope, resolve_device,
                        resolve_dtype)
from .data import ArrayDataset, cat_inputs, first_tensor, input_rows, stack_inputs
from .errors import WdboundError, check_fraction, check_seed
from .estimators import SLQ, DiagonalEstimate, TopEigen, TraceEstimate, hutchinson, top_eigenvalues
from .estimators.hutchinson import deflated_diagonal, deflated_diagonal_bytes
from .estimators.krylov_trace import krylov_deflated_trace
from .estimators.lanczos import VECTOR_DTYPE, Support
from .estimators.quadrature_interval import Interval
from .memory import LANCZOS_SHARE, available_bytes, check_fits
from .spectrum import (TRACE_RTOL_ZERO, SpectrumSettings, auto_kept_graph, check_sizes, expected_hvps, memory_plan,
                       resolve_exact, top_run_steps, top_then_density)


def _as_dataset(data) -> Dataset:
    """``(inputs, targets)`` tensors (inputs may be a dict of tensors: keyword inputs), a ``Dataset`` of such
    pairs, or a ``DataLoader`` (its batches, in order). A dict batch or item with a ``"labels"`` key (Hugging
    Face's convention) is split into the keyword inputs and the targets."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) and \
            (isinstance(data[0], torch.Tensor) or _tensor_dict(data[0])):
        inputs, targets = data
        if input_rows(inputs) != targets.shape[0] or targets.shape[0] == 0:
            raise WdboundError(f"data: inputs of {input_rows(inputs)} rows and targets {tuple(targets.shape)} must "
                               "be non-empty and of one length")
        return ArrayDataset(inputs, targets)
    if isinstance(data, DataLoader):
        batches = [_labelled(batch) for batch in data]
        if not batches:
            raise WdboundError("data: the DataLoader yields no batch")
        for batch in batches:
            _check_pair(batch, "DataLoader batch", tensors=True)
        return ArrayDataset(cat_inputs([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise WdboundError("data: the Dataset is empty")
        if isinstance(data[0], dict):
            items = [_labelled(data[i]) for i in range(len(data))]
            return ArrayDataset(stack_inputs([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items]))
        _check_pair(data[0], "Dataset item")
        return data
    raise WdboundError(f"data must be (inputs, targets) tensors, a Dataset or a DataLoader, not {type(data).__name__}")


def _tensor_dict(value) -> bool:
    """A non-empty dict of tensors (keyword inputs)."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _labelled(item):
    """A dict batch or item with a ``"labels"`` key as ``(the other keys, labels)``; anything else unchanged."""
    if isinstance(item, dict) and "labels" in item:
        return {k: v for k, v in item.items() if k != "labels"}, item["labels"]
    if isinstance(item, dict):
        raise WdboundError(f"data: a dict batch needs a 'labels' key (the targets), got keys {sorted(item)}")
    return item


def _check_pair(item, what: str, tensors: bool = False) -> None:
    """``item`` must be an ``(input, target)`` pair: a tensor input and a tensor (or, per item, a number) target.

    >>> _check_pair({"x": 1}, "Dataset item")
    Traceback (most recent call last):
    ...
    wdbound.errors.WdboundError: data: each Dataset item must be an (input, target) pair, got a dict
    """
    targets = (torch.Tensor,) if tensors else (torch.Tensor, numbers.Number)
    if not (isinstance(item, (tuple, list)) and len(item) == 2
            and (isinstance(item[0], torch.Tensor) or _tensor_dict(item[0])) and isinstance(item[1], targets)):
        kind = f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else \
            f"a {type(item).__name__}"
        raise WdboundError(f"data: each {what} must be an (input, target) pair, got {kind}")


def _check_probes(probes: int, minimum: int = 1, name: str = "probes") -> None:
    """At least ``minimum`` probes (or steps: ``name``), a whole number (one-line :class:`WdboundError`
    otherwise)."""
    if isinstance(probes, bool) or not isinstance(probes, numbers.Integral) or probes < minimum:
        raise WdboundError(f"{name} = {probes!r} must be an integer >= {minimum}", name)


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
    progress:
        Show a progress bar on stderr during long computations (the dense Hessian, the density), as the CLI does.

    The model may return a tensor of logits, a Hugging Face ``ModelOutput`` (its ``.logits``) or a dict with a
    ``"logits"`` key; the default loss takes classes on the last axis, so per-token logits ``[B, T, V]`` with
    targets ``[B, T]`` (already aligned, -100 ignored) give a language model's mean token cross-entropy.
    """

    def __init__(self, model: nn.Module, data, loss: Callable | None = None, *, device: str | torch.device = "auto",
                 dtype: str | torch.dtype = "float64", params=None, batch_size: int = 512, hvp: str = "auto",
                 seed: int = 0, keep_graph: bool | None = None, progress: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise WdboundError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        check_seed(seed)
        self.operator = HessianOperator(model, _as_dataset(data), batch_size=batch_size,
                                        device=resolve_device(device), dtype=resolve_dtype(dtype), mode=hvp,
                                        loss_fn=loss, params=params)
        self.operator.use_kept_graph(auto_kept_graph(self.operator) if keep_graph is None else keep_graph)
        self.seed, self.show_progress = seed, progress
        self._dense: np.ndarray | None = None
        self._exact: ExactSpectrum | None = None
        first_input, _ = self.operator.dataset[0]
        self.input_dim = int(first_tensor(first_input).numel())
        self.provenance = {"loss": getattr(loss, "__name__", None) or type(loss).__name__ if loss else
                           "mean cross-entropy", "dtype": str(self.operator.dtype).removeprefix("torch."),
                           "device": str(self.operator.device), "hvp": hvp,
                           "seed": seed, "n_eval": self.operator.n_eval, "d": self.operator.dim,
                           "input_dim": self.input_dim,
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
        with self._progress("top eigenvalues", defaults.TOP_MAX_STEPS):
            return top_eigenvalues(self.operator, k, self._generator())

    def spectrum(self, **overrides):
        """Everything ``wdbound spectrum`` computes, with its defaults (the one owner:
        :func:`wdbound.spectrum.spectrum_command_settings`) on this Hessian's dtype and seed: top-k with error
        bounds, the density, the deflated trace, the diagonal; ``overrides`` are SpectrumSettings fields
        (``top_k=10``, ``probes=8``). Returns a :class:`wdbound.spectrum.Spectrum`."""
        from .spectrum import estimate_spectrum, spectrum_command_settings

        settings = spectrum_command_settings(**{"dtype": str(self.operator.dtype).removeprefix("torch."),
                                                "seed": self.seed, **overrides})
        settings.validate()
        with self._progress("spectrum", expected_hvps(settings, self.dim)):
            return estimate_spectrum(self.operator, settings)

    def trace(self, probes: int | None = None, method: str = defaults.SPECTRUM_TRACE,
              rtol: float = defaults.TRACE_RTOL, steps: int | None = None) -> TraceEstimate:
        """The trace with its standard error. ``method="deflated"`` (default): exact on the Krylov space of a
        Lanczos run of ``defaults.TRACE_ALONE_SPAN_STEPS`` steps (``tr T``, no further HVP), Hutchinson on its
        complement: a first block of ``probes`` (default ``defaults.TRACE_ALONE_PROBES``), then the probes its
        standard error says are missing until that error is at most ``rtol`` x |trace| (at most
        ``defaults.TRACE_MAX_PROBES``; :func:`~wdbound.estimators.krylov_trace.krylov_deflated_trace`, the
        estimator of ``wdbound spectrum``, whose target is looser: ``defaults.SPECTRUM_TRACE_RTOL``). ``steps``
        sets the Lanczos run's length (``rtol=0``: exactly ``steps`` + ``probes`` HVPs).
        ``"hutchinson"``: ``probes`` plain Rademacher probes (default 16)."""
        check_fraction(rtol, "trace rtol", "rtol", TRACE_RTOL_ZERO)
        if method == "hutchinson":
            probes = 16 if probes is None else probes
            _check_probes(probes)
            with self._progress("trace", probes):
                return hutchinson(self.operator, probes, self._generator(3))[0]
        if method != "deflated":
            raise WdboundError(f"unknown trace method {method!r}; use deflated or hutchinson", "trace")
        probes = defaults.TRACE_ALONE_PROBES if probes is None else probes
        _check_probes(probes, minimum=2)
        steps = defaults.TRACE_ALONE_SPAN_STEPS if steps is None else steps
        _check_probes(steps, minimum=1, name="steps")
        cap = max(probes, defaults.TRACE_MAX_PROBES)
        generator = self._generator()
        with self._progress("trace", steps + cap):
            span = top_eigenvalues(self.operator, 1, generator, min_steps=steps, max_steps=steps).span
            return krylov_deflated_trace(self.operator, span, probes, generator, rtol=rtol, max_probes=cap)

    def diagonal(self, probes: int | None = 16, method: str = "deflated") -> DiagonalEstimate:
        """The diagonal with per-entry standard errors. ``method="deflated"`` (default): a ``probes``-direction
        range of H taken exactly and Bekas et al.'s estimator with ``probes`` probes on the rest (3 x
        ``probes`` HVPs; :func:`~wdbound.estimators.hutchinson.deflated_diagonal`); ``"hutchinson"``: plain
        Bekas et al. (``probes`` HVPs). ``probes=None``: exact (d HVPs, or read off the dense Hessian when it
        was built)."""
        if probes is None:
            exact = np.diagonal(self._dense).copy() if self._dense is not None else \
                diagonal_by_columns(self.operator).double().cpu().numpy()
            return DiagonalEstimate(exact, np.zeros_like(exact), 0)
        _check_probes(probes)
        if method not in ("deflated", "hutchinson"):
            raise WdboundError(f"unknown diagonal method {method!r}; use deflated or hutchinson", "method")
        if method == "deflated":
            _check_probes(probes, minimum=2)
            check_fits(deflated_diagonal_bytes(self.dim, probes, torch.finfo(self.operator.dtype).bits // 8),
                       self.operator.device, f"the deflated diagonal with {probes} probes",
                       "use fewer probes or method='hutchinson'")
        with self._progress("diagonal", 3 * probes if method == "deflated" else probes):
            if method == "deflated":
                return deflated_diagonal(self.operator, probes, self._generator(3))
            return hutchinson(self.operator, probes, self._generator(3))[1]

    def density(self, probes: int = defaults.PROBES, steps: int | None = None) -> Density:
        """SLQ with exact null directions deflated (zero rows, logit shift) and the spectrum's ends; the defaults
        are ``wdbound err``'s (``steps`` None: defaults.STEPS, at most d)."""
        _check_probes(probes)
        steps = min(defaults.STEPS, self.dim) if steps is None else steps
        check_sizes(self.dim, steps=steps)
        generator = self._generator()
        settings = SpectrumSettings(probes=probes, steps=steps, top_k=1, seed=self.seed, diagonal="hutchinson")
        plan = self._density_plan(settings)
        with self._progress("density", expected_hvps(settings, self.dim)):
            found = top_then_density(self.operator, settings, generator, memory=plan.memory if plan else None,
                                     restart=plan.restart if plan else None)
        return Density(found.slq, found.support, {**self.provenance, "probes": probes, "steps": steps,
                                                  "deflation": found.deflation.to_json(),
                                                  "support": found.support.to_json(), "top_from": found.top_from,
                                                  "hvp_fallback": self.operator.fallback,
                                                  "memory_plan": plan.to_json() if plan else None})

    def _density_plan(self, settings: SpectrumSettings):
        """None when :meth:`density`'s Lanczos vectors fit whole in half the memory the process can still get
        (the runs keep every vector, as before); else ``wdbound err``'s memory plan
        (:func:`~wdbound.spectrum.memory_plan`: the low-memory recurrence and a thick-restart top run, or the
        one-line ``memory`` error when nothing fits). A plan may turn the kept gradient graph off for room; it
        never turns on one that ``keep_graph=False`` refused."""
        vectors = settings.probes * min(settings.steps, self.dim) + min(top_run_steps(settings), self.dim)
        available, _ = available_bytes(self.operator.device)
        if vectors * self.dim * VECTOR_DTYPE.itemsize <= LANCZOS_SHARE * available:
            return None
        kept = self.operator.keep_graph
        plan = memory_plan(self.operator, replace(settings, single_pass=False))
        if not kept:
            self.operator.use_kept_graph(False)
        return plan

    def exact(self, max_dim: int = 20_000) -> ExactSpectrum:
        """Eigenvalues and diagonal of the dense Hessian (d HVPs the first time; refused above ``max_dim``
        parameters). The dense Hessian is kept: :meth:`dense`, :meth:`diagonal` and :func:`err` reuse it."""
        if self.dim > max_dim:
            raise WdboundError(f"the dense Hessian of {self.dim} parameters is above the limit {max_dim}", "exact")
        if self._exact is None:
            matrix = self.dense()
            self._exact = ExactSpectrum(np.linalg.eigvalsh(matrix), np.diagonal(matrix).copy())
        return self._exact

    def dense(self) -> np.ndarray:
        """The dense Hessian [d, d] (float64), built once (d HVPs) and kept."""
        if self._dense is None:
            with self._progress("dense Hessian", self.dim):
                self._dense = dense_matrix(self.operator).double().cpu().numpy()
        return self._dense

    @contextmanager
    def _progress(self, label: str, total: int):
        """One computation: a progress bar over its HVPs (none with ``progress=False``) inside
        :func:`~wdbound.curvature.estimator_scope` (NumPy's OpenBLAS on one thread, whose spinning threads
        otherwise take the cores from the HVPs; freed memory reused, not faulted in afresh)."""
        with estimator_scope():
            if not self.show_progress:
                yield
                return
            with self._bar(label, total):
                yield

    @contextmanager
    def _bar(self, label: str, total: int):
        """The progress bar of :meth:`_progress`, fed by the operator's HVP count."""
        from .progress import BarObserver, progress_bar

        before, previous = self.operator.matvecs, self.operator.on_matvecs
        with progress_bar() as bar:
            observer = BarObserver(bar)
            observer.start(label, total)
            self.operator.on_matvecs = observer.hvps
            try:
                yield
            finally:
                self.operator.on_matvecs = previous
                observer.done(self.operator.matvecs - before)


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


def err(source, *, eta: float, lam: float, b: int, n: int, optimizer: str = "both", rho: float | None = None,
        tau: float = defaults.TAU, sigma_floor: float = defaults.SIGMA_FLOOR, x_norm_sq: float | None = None,
        exact: str = "auto", form: str | None = None) -> dict[str, ErrResult]:
    """Corollary 3's err/d (with its interval) for ``source``: a :class:`Hessian` (``exact`` auto/on/off as in
    ``wdbound err``; a dense Hessian already built by :meth:`Hessian.exact` is reused) or a :class:`Density`
    (SLQ). ``optimizer``: whose bound, as ``wdbound err --optimizer``: a training rule (adamw, adamw-d,
    adamprox, adams: Theorem 6's form; l2-adam, l2-adam-d, adal: Theorem 7's) or both; ``form`` is its old
    name. ``rho`` None: 1/sqrt(input dimension), the CLI's default, with the input dimension the size of one
    example's input. Returns one :class:`ErrResult` per bound form."""
    from .optim import bound_forms

    if form is not None:
        import warnings

        warnings.warn("wdbound.err(form=...) is the old name of optimizer=...", DeprecationWarning, stacklevel=2)
        optimizer = form
    forms = list(bound_forms(optimizer))
    if isinstance(source, Hessian):
        d, input_dim = source.dim, source.input_dim
        norm = float(source.operator.params.double().square().sum()) if x_norm_sq is None else x_norm_sq
    elif isinstance(source, Density):
        d, input_dim = source.slq.dim, source.provenance.get("input_dim")
        norm = 0.0 if x_norm_sq is None else x_norm_sq
    else:
        raise WdboundError(f"err needs a wdbound.Hessian or a Density, not {type(source).__name__}")
    if rho is None:
        if not input_dim:
            raise WdboundError("the default rho is 1/sqrt(input dimension), which this density does not record; "
                               "give rho", "rho")
        rho = 1.0 / math.sqrt(input_dim)
    inputs = BoundInputs(d=d, n=n, b=b, eta=eta, lam=lam, rho=rho, tau=tau, sigma_floor=sigma_floor, x_norm_sq=norm)
    inputs.validate()
    results = {}
    if isinstance(source, Hessian) and resolve_exact(exact, d):
        matrix = source.dense()
        eigenvalues = source.exact().eigenvalues
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


def table(paths=(), *, runs=None, out=None, progress: bool = True, cache: bool = True, cache_dir=None,
          rho: float | None = None, tau: float = defaults.TAU, sigma_floor: float = defaults.SIGMA_FLOOR,
          exact: str = "auto", layout: str = "auto", formats=("md", "csv", "tex"), plots: bool = True,
          arch: str | None = None, arch_kwargs: dict | None = None, model_factory: str | None = None,
          optimizer: str | None = None, lr: float | None = None, wd: float | None = None,
          batch_size: int | None = None, n_train: int | None = None, epochs: int | None = None,
          fsdp: bool = False, **spectrum):
    """Table I on checkpoints, as ``wdbound table`` makes it: the same defaults (:func:`wdbound.tables.table_settings`),
    the same cache, the same report. ``paths``: checkpoint files or folders; ``runs``: a runs file; ``out``: a
    folder to write table1.{json,md,csv,tex} and the plots into (None: write nothing); ``fsdp``: under torchrun,
    each model sharded over the processes (``table --fsdp``); ``spectrum``: settings
    such as ``probes``, ``steps``, ``data``, ``max_samples``, ``dtype``. Returns the
    :class:`wdbound.tables.TableReport` (``.to_pandas()``, ``.findings_to_pandas()``, ``.write(folder)``)."""
    from .cache import Cache, NoCache
    from .progress import BarObserver, Observer, progress_bar
    from .tables import run_table, table_items, table_settings

    settings = table_settings(rho=rho, tau=tau, sigma_floor=sigma_floor, exact=exact, layout=layout,
                              formats=formats, plots=plots, fsdp=fsdp, **spectrum)
    items = table_items([paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__") else list(paths),
                        runs, arch=arch, arch_kwargs=arch_kwargs, model_factory=model_factory, optimizer=optimizer,
                        lr=lr, wd=wd, batch_size=batch_size, n_train=n_train, epochs=epochs)
    store = Cache(cache_dir) if cache else NoCache()
    if progress:
        with progress_bar() as bar:
            report = run_table(items, settings, cache=store, observer=BarObserver(bar))
    else:
        report = run_table(items, settings, cache=store, observer=Observer())
    if out is not None:
        report.write(out)
    return report


__all__ = ["Density", "ErrResult", "ExactSpectrum", "Hessian", "err", "table"]
