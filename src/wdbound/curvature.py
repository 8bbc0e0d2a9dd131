"""The curvature operator: the Hessian of the mean cross-entropy over an evaluation set.

Every estimator sees only an object with ``dim``, ``dtype``, ``device`` and
``matmat(V [k, d]) -> [k, d]`` (the curvlinops way), so each one runs
unchanged on :class:`DenseOperator` in tests and on :class:`HessianOperator`
for a real network.

:class:`HessianOperator` evaluates the model in eval mode (BatchNorm running
statistics, dropout off) at the checkpoint's parameters, streams the data in
chunks of ``batch_size`` and combines the per-chunk Hessian-vector products
as a size-weighted mean, which equals the HVP of the mean loss over the whole
set. Because the total is a sum over chunks, the same operator can later be
sharded over data (each rank sums its chunks, then an all-reduce).

HVP modes:

``forward-over-reverse`` (default)
    ``jvp(grad(L))``, vmapped over the k vectors: one forward-mode pass
    through the reverse-mode gradient (Pearlmutter 1994).
``double-backward``
    ``grad(<grad(L), v>)``: PyHessian's way; the fallback for layers whose
    forward-mode derivative torch does not implement. The first backward
    graph is built once per chunk and reused for all k vectors.

Kept gradient graph (``keep_graph``, decided by the memory plan)
    With double backward, the graph of ``grad(L)`` depends only on the parameters and the data, not
    on the vector: it is built once per chunk on the first product and every later product is one
    backward pass through it (``retain_graph``), the way PyHessian handles a single batch. Same
    operations, same values; measured on the digits CNN (float32, 2 CPU cores) a product costs about
    half as much (see docs/decisions.md, "Speed"). Memory: the saved tensors of the forward
    and first backward pass of the whole evaluation set, held until :meth:`HessianOperator.release_graph`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Callable, Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F
from torch.utils.data import Dataset

from .data import evaluation_subset, first_tensor, iterate_batches, take
from .errors import WdboundError
from .estimators.hutchinson import gaussian
from .memory import reuse_freed_memory

HVP_MODES = ("auto", "forward-over-reverse", "double-backward")


def auto_hvp_mode(model: nn.Module) -> str:
    """``--hvp auto``: double backward for models with convolutions or attention, forward-over-reverse
    otherwise. A rule, not a timing, so the same command always takes the same path (same bytes). Measured
    on 2 CPU cores per HVP, double backward vs forward-over-reverse: digits CNN 25 vs 61-67 ms, digits ViT
    45 vs 102 ms, ResNet-50 57 vs 82 s, ResNet-18 18.1 vs 17.8 s; digits MLP 3.7 vs 2.7 ms."""
    for name, module in model.named_modules():
        kind = type(module).__name__.lower()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)) or "attention" in kind \
                or kind == "attn" or name.rsplit(".", 1)[-1] == "attn":
            return "double-backward"
    return "forward-over-reverse"
CACHE_BYTES = 512 * 2**20  # evaluation sets smaller than this stay on the device between matvecs


class Operator(Protocol):
    """A symmetric linear operator on flat vectors of length ``dim``."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:  # [k, d] -> [k, d]
        """``H V^T`` for rows ``vectors`` [k, d], returned as rows [k, d]."""
        ...


def matvec(operator: Operator, vector: torch.Tensor) -> torch.Tensor:
    """``operator @ vector`` for one vector ``[d]``."""
    return operator.matmat(vector[None])[0]


class DenseOperator:
    """A dense symmetric matrix ``[d, d]`` behind the operator interface (tests, exact references)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"DenseOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.matvecs = 0

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors @ matrix`` (the matrix is symmetric), counting the matvecs."""
        self.matvecs += vectors.shape[0]
        return vectors @ self.matrix  # symmetric: (M V^T)^T = V M


class ScaledOperator:
    """``D H D`` for a diagonal ``D`` [d] (the Theorem terms use D = Q^{1/2}, giving A = Q^½ H Q^½): one matvec
    of the wrapped operator per matvec.

    >>> op = ScaledOperator(DenseOperator(torch.eye(2, dtype=torch.float64)), torch.tensor([2.0, 3.0]))
    >>> op.matmat(torch.eye(2, dtype=torch.float64)).tolist()
    [[4.0, 0.0], [0.0, 9.0]]
    """

    def __init__(self, operator: Operator, scale: torch.Tensor) -> None:
        self.op = operator
        self.scale = scale.to(operator.device, operator.dtype)
        self.dim, self.dtype, self.device = operator.dim, operator.dtype, operator.device

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``D H D V^T`` for rows ``vectors`` [k, d]."""
        return self.scale * self.op.matmat(self.scale * vectors)


class ProjectedOperator:
    """``P H`` for an orthogonal projection ``P`` (``project``: a :meth:`Deflation.project`). Onto the complement
    of exact null directions of ``H``, ``HP = PH = H``, so this is ``H`` itself; projecting each product keeps
    the rounding noise of an HVP out of the null space, so a Lanczos run stays in the range of ``P`` and breaks
    down exactly when its Krylov space fills it. When ``P`` also removes top Ritz vectors, a run from a start in
    its range sees the compression ``PHP`` (:class:`~wdbound.estimators.lanczos.RitzDeflation`). One matvec of
    the wrapped operator per matvec.

    >>> keep = lambda v: v * torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> op = ProjectedOperator(DenseOperator(torch.tensor([[2.0, 1e-17], [1e-17, 0.0]], dtype=torch.float64)), keep)
    >>> op.matmat(torch.tensor([[1.0, 0.0]], dtype=torch.float64)).tolist()
    [[2.0, 0.0]]
    """

    def __init__(self, operator: Operator, project: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.op = operator
        self.project = project
        self.dim, self.dtype, self.device = operator.dim, operator.dtype, operator.device

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``P H V^T`` for rows ``vectors`` [k, d]."""
        return self.project(self.op.matmat(vectors))


def resolve_device(device: "str | torch.device") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` (a name or a ``torch.device``) without a GPU is an
    error.

    >>> resolve_device(torch.device("cpu")), resolve_device("cpu")
    (device(type='cpu'), device(type='cpu'))
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise WdboundError(f"device must be a name or a torch.device, not {type(device).__name__}", "device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WdboundError("device cuda was asked for but torch sees no CUDA device", "device")
    try:
        return torch.device(device)
    except RuntimeError:
        raise WdboundError(f"unknown device {device!r}; use auto, cpu or cuda", "device") from None


def resolve_dtype(name: "str | torch.dtype") -> torch.dtype:
    """``float32`` / ``float64`` (names or torch dtypes) as a torch dtype; anything else is a one-line error
    naming --dtype.

    >>> resolve_dtype(torch.float64), resolve_dtype("float32")
    (torch.float64, torch.float32)
    """
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if name not in dtypes:
        raise WdboundError(f"unknown dtype {name!r}; use float32 or float64", "dtype")
    return dtypes[name]


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: the output itself when it is a tensor, else its ``.logits`` (a Hugging
    Face ``ModelOutput``), its ``"logits"`` key, or the first element of a tuple.

    >>> logits_of({"logits": torch.zeros(2, 3)}).shape, logits_of((torch.ones(1), None)).tolist()
    (torch.Size([2, 3]), [1.0])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise WdboundError(f"the model returned a {type(output).__name__} without logits (a tensor, .logits or a "
                           "'logits' key): give a loss that takes it", "loss")
    return logits


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a chunk: classes on the last axis of ``logits``; per-token logits ``[B, T, V]``
    with labels ``[B, T]`` (a language model, targets already aligned with the positions) are averaged over
    every token whose label is not -100 (Hugging Face's ignore index).

    >>> round(cross_entropy(torch.zeros(2, 3, 4), torch.tensor([[0, 1, -100], [2, 3, 0]])).item(), 6)
    1.386294
    """
    if logits.ndim > 2 and labels.shape == logits.shape[:-1] and not labels.is_floating_point():
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    return F.cross_entropy(logits, labels)


def correct_and_counted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many targets of a chunk the argmax of ``logits`` gets right, and how many count (the labels of
    :func:`cross_entropy`: per token for ``[B, T, V]`` logits, -100 ignored).

    >>> correct_and_counted(torch.tensor([[[0., 1.], [1., 0.], [0., 1.]]]), torch.tensor([[1, 1, -100]]))
    (1, 2)
    """
    predicted = logits.argmax(-1)
    counted = labels != -100
    return int(((predicted == labels) & counted).sum()), int(counted.sum())


class HessianOperator:
    """Hessian of the mean cross-entropy of ``model`` over ``dataset`` at the model's parameters.

    Parameters
    ----------
    model:
        The network; it is copied, cast to ``dtype``, moved to ``device`` and
        put in eval mode. Only parameters with ``requires_grad`` count in d.
    dataset:
        Items ``(input [C, H, W], int label)``.
    batch_size:
        Examples per chunk of the streamed HVP (memory knob, not the training b).
    max_samples:
        Use N examples of the dataset: a random subset drawn with ``sample_seed`` when given, else the first N.
    sample_seed:
        Seed of the ``max_samples`` subset (:func:`wdbound.data.evaluation_subset`).
    workers:
        DataLoader worker processes reading a file-backed dataset (0: read in this process).
    shard:
        ``(rank, world)``: this process evaluates only its contiguous share of the evaluation examples and
        every product is summed over the processes with ``torch.distributed.all_reduce`` (gloo on CPU, NCCL
        on GPU), so each rank holds the full HVP. Every rank must call ``matmat`` with the same vectors.
    mode:
        ``forward-over-reverse`` or ``double-backward``.
    probe_chunk:
        At most this many vectors share one vmapped pass (memory knob).
    loss_fn:
        ``loss_fn(outputs, targets) -> scalar`` mean loss of a chunk (default: mean cross-entropy). Chunks are
        combined as a size-weighted mean, so it must be a mean over the examples of the chunk.
    params:
        Which trainable parameters span the Hessian: ``None`` (all with ``requires_grad``), a collection of
        names, or ``filter(name, parameter) -> bool``; the others are held fixed.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, *, batch_size: int = 512, max_samples: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                 mode: str = "forward-over-reverse", probe_chunk: int = 64,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, params=None,
                 sample_seed: int | None = None, workers: int = 0, shard: tuple[int, int] | None = None) -> None:
        if mode not in HVP_MODES:
            raise WdboundError(f"unknown HVP mode {mode!r}; use {' or '.join(HVP_MODES)}", "hvp")
        self.device = torch.device(device)
        self.dtype = dtype
        self.probe_chunk = max(1, probe_chunk)
        self.model = _eval_copy(model, self.device, dtype)
        self.auto_mode = mode == "auto"  # the memory plan may then choose double backward through a kept graph
        self.mode = auto_hvp_mode(self.model) if mode == "auto" else mode
        if params is not None and not callable(params):
            unknown = set([params] if isinstance(params, str) else params) - {n for n, _ in
                                                                              self.model.named_parameters()}
            if unknown:
                raise WdboundError(f"no parameter named {', '.join(sorted(unknown))}", "params")
        chosen = _parameter_filter(params)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and chosen(n, p)]
        if not named:
            raise WdboundError("no trainable parameter is selected" if params is not None
                               else "the model has no trainable parameters", "params")
        self.fallback: str | None = None  # why forward-over-reverse was given up for double backward
        self.vmapped_rule = vmapped_passes_rule(self.model)  # blocks of vectors share vmapped backward passes
        self.loss_fn = loss_fn if loss_fn is not None else cross_entropy
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.params = torch.cat([p.detach().reshape(-1) for _, p in named])
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        selected = set(self.names)
        self.frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in selected}
        self.dim = int(self.params.numel())
        self.dataset = dataset
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.workers = workers
        self.sample_seed = sample_seed
        self.subset = evaluation_subset(len(dataset), max_samples, sample_seed) if sample_seed is not None else None
        self.n_eval = min(len(dataset), max_samples) if max_samples else len(dataset)
        if self.n_eval == 0:
            raise WdboundError("the evaluation set is empty", "max_samples")
        self.rank, self.world = shard if shard is not None else (0, 1)
        self.local = None  # the example indices of this rank (None: all, one process)
        if self.world > 1:
            order = self.subset if self.subset is not None else torch.arange(self.n_eval)
            self.local = order[self.rank * self.n_eval // self.world:(self.rank + 1) * self.n_eval // self.world]
            if len(self.local) == 0:
                raise WdboundError(f"{self.n_eval} evaluation examples cannot be shared by {self.world} processes",
                                   "nproc_per_node")
        self.matvecs = 0
        self.keep_graph = False  # double backward through a kept gradient graph (set by the memory plan)
        self._graphs: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None
        self.on_matvecs: Callable[[int], None] | None = None
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        first_inputs, _ = next(iterate_batches(dataset, 1))
        local_count = self.n_eval if self.local is None else len(self.local)
        self.resident = first_tensor(first_inputs)[0].numel() * local_count * torch.finfo(dtype).bits // 8 <= CACHE_BYTES
        if self.resident:
            self._cache = list(self._stream())
        self._check_loss()

    def rechunk(self, batch_size: int) -> None:
        """Stream ``batch_size`` examples per HVP chunk from now on (a memory knob: the product is the same
        size-weighted mean, equal up to rounding)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._graphs = None
        if self._cache is not None:
            self._cache = list(self._stream())

    def use_kept_graph(self, keep: bool) -> None:
        """Route products through a kept gradient graph (``keep``; with ``--hvp auto`` this also switches
        the mode to double backward, the one that can reuse a graph) or stream them (frees a kept graph)."""
        self.keep_graph = bool(keep)
        if self.keep_graph and self.auto_mode and self.fallback is None:
            self.mode = "double-backward"
        if not self.keep_graph:
            self.release_graph()

    def release_graph(self) -> None:
        """Free the kept gradient graphs (rebuilt on the next product while ``keep_graph`` is set)."""
        self._graphs = None

    def _kept_gradients(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """``(flat parameters, grad L(flat), chunk weight)`` per chunk, the gradient with its graph (built once)."""
        if self._graphs is None:
            graphs = []
            for inputs, labels in self.chunks():
                flat = self.params.detach().clone().requires_grad_(True)
                with torch.enable_grad(), _math_attention():
                    (gradient,) = torch.autograd.grad(self.loss(flat, inputs, labels), flat, create_graph=True)
                graphs.append((flat, gradient, labels.shape[0] / self.n_eval))
            self._graphs = graphs
        return self._graphs

    def _check_loss(self) -> None:
        """The loss of the first chunk must be a finite scalar (a custom ``loss_fn`` is checked here, once)."""
        inputs, labels = next(self.chunks())
        try:
            with torch.no_grad():
                value = self.loss(self.params, inputs, labels)
        except (RuntimeError, ValueError, TypeError, AssertionError, IndexError, KeyError) as exc:  # timm asserts on shapes; a label past the classes
            raise WdboundError(f"the model or the loss failed on the first chunk of the evaluation data: "
                               f"{(str(exc).splitlines() or [type(exc).__name__])[0][:160]}", "loss") from None
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise WdboundError(f"the loss must return a scalar (the mean over the chunk), got {shape}", "loss")
        if not torch.isfinite(value):
            raise WdboundError(f"the loss is {float(value)} on the first chunk of the evaluation data", "loss")

    # ---- data

    def _stream(self):
        subset = self.local if self.local is not None else self.subset
        for inputs, labels in iterate_batches(self.dataset, self.batch_size, max_samples=self.max_samples,
                                              subset=subset, workers=self.workers):
            yield self._placed(inputs), self._placed(labels)

    def _placed(self, tensor):
        """``tensor`` (or each tensor of a dict of keyword inputs) on the operator's device; floating point in
        its dtype, integer (token ids, attention masks, class labels) left integer."""
        if isinstance(tensor, dict):
            return {key: self._placed(value) for key, value in tensor.items()}
        return tensor.to(self.device, self.dtype) if tensor.is_floating_point() else tensor.to(self.device)

    def chunks(self):
        """``(inputs, labels)`` chunks on the device, in a fixed order."""
        return iter(self._cache) if self._cache is not None else self._stream()

    # ---- the loss as a function of the flat parameter vector

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector [d] as a {parameter name: tensor} dict of the parameters' shapes."""
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def logits(self, flat: torch.Tensor, inputs) -> torch.Tensor:
        """The model's logits on one chunk at parameters ``flat`` [d]."""
        tensors = {**self.unflatten(flat), **self.frozen, **self.buffers}
        if isinstance(inputs, dict):
            return logits_of(functional_call(self.model, tensors, (), inputs))
        return logits_of(functional_call(self.model, tensors, (inputs,)))

    def loss(self, flat: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss (default cross-entropy) of one chunk at parameters ``flat`` [d]."""
        return self.loss_fn(self.logits(flat, inputs), labels)

    # ---- products

    @property
    def batched(self) -> bool:
        """Whether double backward takes blocks of vectors through vmapped passes (:func:`vmapped_passes_rule`
        on the model, and a memory plan that allows more than one vector per pass)."""
        return self.probe_chunk > 1 and self.vmapped_rule

    def matmat(self, vectors: torch.Tensor, mode: str | None = None, batched: bool | None = None) -> torch.Tensor:
        """``H V^T`` transposed: ``[k, d] -> [k, d]``, streamed over the evaluation set (``mode`` overrides the
        operator's HVP mode for this call). ``batched``: double backward takes up to ``probe_chunk`` vectors
        through one vmapped backward pass (``is_grads_batched``) instead of one pass each: the same products,
        faster where small layers leave the passes dominated by per-operation overhead (default: the
        operator's rule, :attr:`batched`)."""
        if batched is None:
            batched = self.batched
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [k, {self.dim}], got {tuple(vectors.shape)}")
        vectors = vectors.to(self.device, self.dtype)
        if self.keep_graph and (mode or self.mode) == "double-backward":
            out = self._kept_products(vectors, batched)
        else:
            out = self._streamed_products(vectors, mode or self.mode, batched)
        self._reduce(out)
        # A sum first (one read, no mask of d): NaN and Inf carry through it; only when it is not finite
        # (that, or finite entries overflowing it) is the mask built.
        if not bool(torch.isfinite(out.sum())) and not bool(torch.isfinite(out).all()):
            raise WdboundError("a Hessian-vector product is not finite (NaN or Inf): the loss or its second "
                               "derivative overflows on some evaluation example; check the checkpoint and the data, "
                               "or use --dtype float64", "data")
        self.matvecs += vectors.shape[0]
        if self.on_matvecs is not None:
            self.on_matvecs(vectors.shape[0])
        return out

    def _kept_products(self, vectors: torch.Tensor, batched: bool = False) -> torch.Tensor:
        """Products by one backward pass each (``batched``: per ``probe_chunk`` vectors) through the kept
        gradient graphs (chunk weights inside)."""
        out = None
        for flat, gradient, weight in self._kept_gradients():
            with _math_attention():
                rows = _backward_rows(gradient, flat, vectors, self.probe_chunk if batched else 1, retain_last=True)
            chunk = torch.cat(rows) if len(rows) > 1 else rows[0]  # fresh tensors: no copy of one
            if out is None:
                out = chunk if weight == 1.0 else chunk.mul_(weight)
            else:
                out.add_(chunk, alpha=weight)
        return out

    def _streamed_products(self, vectors: torch.Tensor, mode: str, batched: bool = False) -> torch.Tensor:
        """Products streamed over the chunks: each chunk's forward and backward passes built anew."""
        out = torch.zeros_like(vectors)
        for inputs, labels in self.chunks():
            weight = labels.shape[0] / self.n_eval
            for start in range(0, vectors.shape[0], self.probe_chunk):
                block = vectors[start:start + self.probe_chunk]
                out[start:start + block.shape[0]] += weight * self._safe_chunk_hvp(block, inputs, labels, mode,
                                                                                   batched)
        return out

    def _safe_chunk_hvp(self, block, inputs, labels, mode: str, batched: bool = False) -> torch.Tensor:
        """Forward-over-reverse where torch implements it; else (a layer or loss without a forward-mode
        derivative) double backward from then on, with the reason kept in ``fallback``."""
        if mode == "forward-over-reverse" and self.fallback is None:
            try:
                return self._chunk_hvp(block, inputs, labels, mode)
            except (RuntimeError, NotImplementedError) as exc:
                self.fallback = str(exc).splitlines()[0][:200]
                self.mode = "double-backward"
        return self._chunk_hvp(block, inputs, labels, "double-backward" if self.fallback else mode, batched)

    def _chunk_hvp(self, block: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, mode: str,
                   batched: bool = False) -> torch.Tensor:
        with _math_attention():
            return self._chunk_hvp_inner(block, inputs, labels, mode, batched)

    def _chunk_hvp_inner(self, block: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                         mode: str, batched: bool = False) -> torch.Tensor:
        if mode == "forward-over-reverse":
            gradient = grad(self.loss)

            def one(vector: torch.Tensor) -> torch.Tensor:
                return jvp(lambda flat: gradient(flat, inputs, labels), (self.params,), (vector,))[1]

            return vmap(one)(block) if block.shape[0] > 1 else one(block[0])[None]
        flat = self.params.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(self.loss(flat, inputs, labels), flat, create_graph=True)
            rows = _backward_rows(gradient, flat, block, block.shape[0] if batched else 1, retain_last=False)
        return torch.cat(rows).detach()

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes in place (nothing in one process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def gradient(self) -> torch.Tensor:
        """Gradient ``[d]`` of the mean loss (for cost ratios and sanity checks)."""
        out = torch.zeros_like(self.params)
        for inputs, labels in self.chunks():
            out += labels.shape[0] / self.n_eval * grad(self.loss)(self.params, inputs, labels)
        return self._reduce(out)

    def mean_loss(self) -> float:
        """The mean loss over the evaluation set."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for x, y in self.chunks():
                total += self.loss(self.params, x, y) * y.shape[0]
        return float(self._reduce(total) / self.n_eval)

    def mean_accuracy(self) -> float | None:
        """The fraction of evaluation targets the logits' argmax gets right (per token for a language model,
        -100 ignored); None when the targets are not class indices (a custom loss on real-valued targets)."""
        hits = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for x, y in self.chunks():
                if y.is_floating_point():
                    return None
                hits += torch.tensor(correct_and_counted(self.logits(self.params, x), y), dtype=torch.float64,
                                     device=self.device)
        hits = self._reduce(hits)
        return float(hits[0] / hits[1]) if hits[1] > 0 else None


def _backward_rows(gradient: torch.Tensor, flat: torch.Tensor, vectors: torch.Tensor, per_pass: int,
                   retain_last: bool) -> list[torch.Tensor]:
    """``H v`` for each row of ``vectors`` [k, d] by backward passes through ``gradient`` (built with a graph),
    ``per_pass`` rows per pass: one pass each, or vmapped passes (``is_grads_batched``). Blocks of ``[<=per_pass,
    d]``; the graph is kept after the last pass only with ``retain_last``."""
    rows = []
    for start in range(0, vectors.shape[0], per_pass):
        block = vectors[start:start + per_pass]
        retain = retain_last or start + per_pass < vectors.shape[0]
        if block.shape[0] == 1:  # one vector: a plain pass (a vmapped pass of one is slower)
            rows.append(torch.autograd.grad(gradient, flat, grad_outputs=block[0], retain_graph=retain)[0][None])
        else:
            rows.append(torch.autograd.grad(gradient, flat, grad_outputs=block, retain_graph=retain,
                                            is_grads_batched=True)[0])
    return rows


def _math_attention():
    """``F.scaled_dot_product_attention`` on its math kernel: the fused CPU / flash kernels have no double
    backward (timm's and torchvision's ViTs call it); the math kernel is plain differentiable ops."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no fused-kernel selection, the math path is used for second derivatives
        import contextlib

        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def set_tf32(enabled: bool) -> None:
    """TF32 tensor-core matmuls and convolutions on CUDA (10-bit mantissa): off unless asked (``--tf32``)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _parameter_filter(params) -> Callable[[str, torch.Tensor], bool]:
    if params is None:
        return lambda _name, _param: True
    if callable(params):
        return params
    if isinstance(params, str):
        params = [params]
    names = set(params)
    return lambda name, _param: name in names


@contextmanager
def estimator_scope(heap_reuse: bool = True):
    """The context of one estimator run (a spectrum, a trace, an ``err``): NumPy's BLAS on one thread
    (:func:`sequential_numpy_blas`) and, with ``heap_reuse``, freed memory kept for reuse
    (:func:`~wdbound.memory.reuse_freed_memory`; under a memory plan its
    :attr:`~wdbound.memory.MemoryPlan.heap_reuse`, without one always)."""
    with sequential_numpy_blas(), (reuse_freed_memory() if heap_reuse else nullcontext()):
        yield


def sequential_numpy_blas():
    """A context (the limit starts when this is called: not a decorator) in which NumPy's own OpenBLAS / BLIS
    runs on one thread, for code that interleaves HVPs with small NumPy linear algebra (the Lanczos loops).

    After each call OpenBLAS keeps its threads spinning for a while; torch's OpenMP threads, which compute
    the next HVP, then share the cores with them. On 2 CPU cores this made each digits-cnn HVP inside
    ``wdbound spectrum`` cost 10 ms against 6.4 ms alone (docs/decisions.md, "Speed"). The NumPy
    work there is eigendecompositions of matrices of at most a few hundred rows, which one thread does as
    fast. An MKL or OpenMP shared with torch is left alone (no spinning pool of its own).
    """
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(internal_api=["openblas", "blis"]).limit(limits=1)


def _eval_copy(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    import copy

    clone = copy.deepcopy(model).to(device=device, dtype=dtype)
    if device.type == "cpu":
        _use_unfold_convolutions(clone, math.inf if dtype == torch.float64 else SMALL_CONV_POSITIONS)
    _use_affine_batch_norm(clone)
    return clone.eval()


class _AffineEvalBatchNorm:
    """A BatchNorm whose eval-mode forward is written as the affine map it is, ``x * s + t`` with
    ``s = weight / sqrt(running_var + eps)`` and ``t = bias - running_mean * s``: the same function of the
    input and of ``weight`` and ``bias`` (so the same gradient and Hessian), the same parameters, buffers and
    state-dict keys. ``F.batch_norm`` differentiates twice through ``native_batch_norm_backward``, a formula
    written for training mode (batch statistics); on the digits CNN (float32, 2 CPU cores) that double
    backward was a quarter of an HVP (docs/decisions.md, "Speed"). Training mode (never used by
    the operator) keeps the original forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode: the affine map; training mode or no running statistics: ``nn.BatchNorm``'s forward."""
        if self.training or self.running_mean is None or self.running_var is None:
            return super().forward(x)
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(shape) + shift.reshape(shape)


class AffineBatchNorm1d(_AffineEvalBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with the eval-mode forward of :class:`_AffineEvalBatchNorm`."""


class AffineBatchNorm2d(_AffineEvalBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the eval-mode forward of :class:`_AffineEvalBatchNorm`."""


class AffineBatchNorm3d(_AffineEvalBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with the eval-mode forward of :class:`_AffineEvalBatchNorm`."""


_AFFINE_BATCH_NORMS = {nn.BatchNorm1d: AffineBatchNorm1d, nn.BatchNorm2d: AffineBatchNorm2d,
                       nn.BatchNorm3d: AffineBatchNorm3d}


def _use_affine_batch_norm(model: nn.Module) -> None:
    """Swap plain BatchNorm layers (exactly nn.BatchNorm1d/2d/3d, not subclasses) for their affine eval form
    in place (:class:`_AffineEvalBatchNorm`)."""
    for module in model.modules():
        swapped = _AFFINE_BATCH_NORMS.get(type(module))
        if swapped is not None:
            module.__class__ = swapped


# On the CPU, float32 (and other non-float64) convolutions whose output has at most this many positions per
# example also run as unfold + matmul; larger ones stay on oneDNN. Measured per HVP (double backward through the
# kept graph, 2 cores, float32; benchmarks/small_convs.py): oneDNN pays a fixed cost per call and per
# derivative that a 4 x 4, 2 x 2 or 1 x 1 map never earns back, while im2col of so small a map is a few
# kilobytes; on 8 x 8 maps and above the two are even or oneDNN is ahead (up to 1.4x on a 128 px ResNet-18
# when every convolution is unfolded).
SMALL_CONV_POSITIONS = 16


def stock_layers(model: nn.Module) -> nn.Module:
    """A copy of an operator's model with wdbound's rewrites undone: :class:`UnfoldConv2d` back to
    ``nn.Conv2d`` and the affine eval BatchNorms back to ``nn.BatchNorm1d/2d/3d`` (same parameters, buffers and
    function). The benchmarks hand this to other libraries, which then run on the layers a user's model has."""
    import copy

    stock = {swapped: original for original, swapped in _AFFINE_BATCH_NORMS.items()}
    stock[UnfoldConv2d] = nn.Conv2d
    clone = copy.deepcopy(model)
    for module in clone.modules():
        original = stock.get(type(module))
        if original is not None:
            module.__class__ = original
            module.__dict__.pop("unfold_positions", None)
    return clone


class UnfoldConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed as im2col (``F.unfold``) + one matrix product: same parameters, same values.

    On the CPU, float64 convolutions have no oneDNN kernel: torch falls back to
    ``_slow_conv2d_backward``, which loops over the examples and made one HVP of
    the digits CNN cost ~40 ms. Unfold + matmul keeps every derivative (double
    backward, forward-over-reverse) in batched matrix products. In float32 only
    convolutions with small outputs gain (``unfold_positions``, :data:`SMALL_CONV_POSITIONS`);
    the others call the stock convolution.
    """

    unfold_positions: float = math.inf  # unfold when the output has at most this many positions per example

    def output_positions(self, x: torch.Tensor) -> tuple[int, int]:
        """The output's height and width for an input ``x`` [B, C, H, W]."""
        (kh, kw), (ph, pw), (sh, sw), (dh, dw) = self.kernel_size, self.padding, self.stride, self.dilation
        return ((x.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def unfolded_floats(self, x: torch.Tensor) -> int:
        """Floats of the im2col columns this layer builds for ``x`` (0 when it calls the stock convolution):
        the memory plan counts them with the activations (:func:`wdbound.memory.activation_floats`)."""
        out_h, out_w = self.output_positions(x)
        if out_h * out_w > self.unfold_positions:
            return 0
        return x.shape[0] * self.in_channels * self.kernel_size[0] * self.kernel_size[1] * out_h * out_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution as unfold + matmul when its output is small enough (every size in float64 on the
        CPU), else the stock convolution."""
        out_h, out_w = self.output_positions(x)
        if out_h * out_w > self.unfold_positions:
            return super().forward(x)
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        out = self.weight.reshape(self.out_channels, -1) @ cols  # [B, C_out, L]
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.reshape(x.shape[0], self.out_channels, out_h, out_w)


def _use_unfold_convolutions(model: nn.Module, max_positions: float = math.inf) -> None:
    """Swap plain convolutions (groups 1, zero padding given as numbers) for :class:`UnfoldConv2d` in place,
    unfolding outputs of at most ``max_positions`` positions per example."""
    for module in model.modules():
        if (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)):
            module.__class__ = UnfoldConv2d
            module.unfold_positions = max_positions


# Dense builds (d unit-vector products) use double backward on the Hessian operator: measured here
# 2-2.5x faster than vmapped forward-over-reverse on the digits CNN and ViT (float64, CPU), 1.4x slower on
# the MLPs, whose dense build takes seconds either way.
DENSE_MODE = "double-backward"


# Columns per block of a dense build (the memory plan's exact_diagonal_chunk).
DENSE_CHUNK = 256
def vmapped_passes_rule(model: nn.Module) -> bool:
    """Whether double backward sends a block of vectors (a dense build's columns, a block of trace or diagonal
    probes, the lockstep Lanczos runs of several probes) through vmapped backward passes (``is_grads_batched``)
    rather than one pass per vector: yes unless the model has convolutions, pooling or batch norm, whose vmapped
    double backward is slow. A rule, not a timing (like :func:`auto_hvp_mode`): the two ways round differently
    in the last bits, and the same command must give the same bytes. Measured (benchmarks/dense_build.py, 2
    cores, columns/s vmapped vs loop): digits MLP 1.2-1.4x, depth-8 MLP 1.5-1.6x, digits ViT 1.0-1.2x, digits
    CNN 0.4x; per product in blocks of 16 (float64, kept graph): digits MLP 0.25 against 0.47 ms, a two-layer
    GPT-2 0.68 against 1.74 ms."""
    slow = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.modules.batchnorm._BatchNorm)
    return not any(isinstance(module, slow) for module in model.modules())


def _unit_products(operator: Operator, block: torch.Tensor) -> torch.Tensor:
    if isinstance(operator, HessianOperator):
        return operator.matmat(block, mode=DENSE_MODE)
    return operator.matmat(block)


def dense_columns(operator: Operator, vectors: torch.Tensor, chunk: int = DENSE_CHUNK) -> torch.Tensor:
    """``H V^T`` transposed for many vectors ``[k, d]``, ``chunk`` at a time: through vmapped backward passes
    (``probe_chunk`` vectors each) when the operator's :func:`vmapped_passes_rule` says so, else one pass per
    vector."""
    return torch.cat([_unit_products(operator, vectors[first:first + chunk])
                      for first in range(0, vectors.shape[0], chunk)])


def dense_matrix(operator: Operator, chunk: int = DENSE_CHUNK) -> torch.Tensor:
    """The full matrix ``[d, d]`` from ``d`` matvecs with unit vectors (:func:`dense_columns`), symmetrised."""
    matrix = dense_columns(operator, torch.eye(operator.dim, dtype=operator.dtype, device=operator.device), chunk)
    return 0.5 * (matrix + matrix.T)


def diagonal_by_columns(operator: Operator, chunk: int = 64) -> torch.Tensor:
    """The exact diagonal ``[d]`` from ``d`` matvecs with unit vectors, ``chunk`` at a time (the matrix is never
    stored: memory is ``chunk × d``)."""
    out = torch.empty(operator.dim, dtype=operator.dtype, device=operator.device)
    for start in range(0, operator.dim, chunk):
        stop = min(start + chunk, operator.dim)
        block = torch.zeros(stop - start, operator.dim, dtype=operator.dtype, device=operator.device)
        rows = torch.arange(stop - start, device=operator.device)
        block[rows, start + rows] = 1
        out[start:stop] = _unit_products(operator, block)[rows, start + rows]
    return out


def zero_rows(operator: Operator, generator: torch.Generator) -> torch.Tensor:
    """Mask ``[d]`` of coordinates whose Hessian row (and column) is exactly zero.

    Weights that only ever see a zero input (the always-blank digits pixels)
    have an exactly zero gradient, hence an exactly zero Hessian row, and the
    autograd HVP returns an exact 0 there. Two Gaussian probes find them: a
    row ``h_i != 0`` gives ``h_i . g = 0`` with probability zero. One more
    matvec with a vector supported on the candidates confirms that their
    columns vanish too (symmetry); if it does not, nothing is deflated.
    Three matvecs in all; the estimators then work on the complement and
    count these coordinates as exact zero eigenvalues.
    """
    probes = gaussian(2, operator.dim, generator, operator.dtype, operator.device)
    mask = (operator.matmat(probes) == 0).all(0)
    if not bool(mask.any()) or bool(mask.all()):
        return torch.zeros(operator.dim, dtype=torch.bool, device=operator.device)
    check = gaussian(1, operator.dim, generator, operator.dtype, operator.device)
    if bool((operator.matmat(check * mask) != 0).any()):
        return torch.zeros(operator.dim, dtype=torch.bool, device=operator.device)
    return mask


def _head_linear(operator: "HessianOperator") -> tuple[str, nn.Linear] | None:
    """The last ``nn.Linear`` of the model when its output is the model's output (the logits), else None."""
    linears = [(name, m) for name, m in operator.model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    name, head = linears[-1]
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        inputs, _ = next(operator.chunks())
        with torch.no_grad():
            first = take(inputs, slice(0, 2))
            logits = logits_of(operator.model(**first) if isinstance(first, dict) else operator.model(first))
    finally:
        handle.remove()
    return (name, head) if seen and seen[-1].shape == logits.shape and torch.equal(seen[-1], logits) else None


class Deflation:
    """Exact null directions of the cross-entropy Hessian, removed from the probes and counted as zero eigenvalues.

    Two kinds, both exact at every parameter value:

    - **zero rows**: coordinates whose Hessian row is exactly zero (:func:`zero_rows`);
    - **logit shift**: softmax cross-entropy is unchanged when the same number is added to every logit, so
      when the last layer is a linear head producing the logits, moving its bias along the all-ones vector
      of the classes, or any weight column j along it (``W += 1 u_j``), leaves the loss constant: ``H v = 0``
      for those ``in_features + 1`` directions. One HVP confirms it before anything is deflated.

    ``project(Z)`` removes both from probes ``Z [k, d]``; ``null_count`` is their number (their weight in
    every SLQ quadrature, f(0) each). A Rademacher probe keeps ``E[z' ⊙ Hz'] = diag(H)`` and
    ``E[z'ᵀHz'] = tr(H)`` after the projection P, because HP = PH = H.

    ``ritz`` (:meth:`with_ritz`, a :class:`~wdbound.estimators.lanczos.RitzDeflation`): top Ritz vectors
    projected off as well, for a low-memory SLQ run. They are not null directions: ``H`` does not commute with
    their projection, so the probes' ``z' ⊙ Hz'`` no longer estimate the diagonal (the spectrum then takes it
    from probes of its own), and the SLQ adds their Ritz values back as atoms with a bounded slack.
    """

    def __init__(self, zero_mask: torch.Tensor, blocks: list[tuple[int, int, int, list[int]]] | None = None,
                 ritz=None) -> None:
        self.zero_mask = zero_mask
        self.blocks = blocks or []  # (offset, classes C, width h, kept columns) of the head's weight / bias
        self.ritz = ritz

    def with_ritz(self, ritz) -> "Deflation":
        """The same null directions, and the top Ritz vectors of ``ritz`` (None: none)."""
        return Deflation(self.zero_mask, self.blocks, ritz)

    @property
    def shift_directions(self) -> int:
        """How many logit-shift directions are deflated."""
        return sum(len(columns) for *_, columns in self.blocks)

    @property
    def null_count(self) -> float:
        """The dimension of the deflated null space (zero rows + logit-shift directions)."""
        return float(self.zero_mask.sum()) + self.shift_directions

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``P Z``: zero rows set to 0, each kept head column centred over the classes, then the top Ritz
        vectors (if any; they lie in the range of the null projection, so the two commute) removed.
        ``[k, d] -> [k, d]``."""
        out = self.project_null(vectors)
        return self.ritz.project(out) if self.ritz is not None else out

    def project_null(self, vectors: torch.Tensor) -> torch.Tensor:
        """``P Z`` for the exact null directions only."""
        out = vectors * ~self.zero_mask
        for offset, classes, width, columns in self.blocks:
            block = out[:, offset:offset + classes * width].reshape(out.shape[0], classes, width)
            cols = torch.tensor(columns, dtype=torch.long, device=out.device)
            block[:, :, cols] -= block[:, :, cols].mean(1, keepdim=True)
        return out

    def operator(self, operator: Operator) -> "Operator":
        """``operator`` with its products projected (:class:`ProjectedOperator`), or itself when nothing is
        deflated: what the SLQ runs on deflated probes use."""
        return ProjectedOperator(operator, self.project) if self.null_count or self.ritz is not None else operator

    def to_json(self) -> dict:
        """The counts for the cache and the provenance."""
        return {"zero_rows": int(self.zero_mask.sum()), "logit_shift": self.shift_directions,
                "shift_blocks": [[o, c, w, cols] for o, c, w, cols in self.blocks],
                "top_ritz": self.ritz.count if self.ritz is not None else 0}

    @classmethod
    def from_json(cls, data: dict | None, zero_mask: torch.Tensor) -> "Deflation":
        """The deflation of a cached spectrum, rebuilt on ``zero_mask``'s device."""
        return cls(zero_mask, [(o, c, w, list(cols)) for o, c, w, cols in (data or {}).get("shift_blocks") or []])

    @classmethod
    def find(cls, operator: "HessianOperator", zero_mask: torch.Tensor, scale: float | None,
             generator: torch.Generator) -> "Deflation":
        """Zero rows plus the logit-shift directions of ``operator``'s head, if one HVP confirms them
        (``|H v| <= tol * scale * |v|``, tol 1e-8 in float64, 1e-3 in float32; ``scale`` ~ lambda_max; None:
        ``|H g| / |g|`` of the same Gaussian probe, taken in the same pass, a lower bound of lambda_max that
        only makes the test stricter)."""
        plain = cls(zero_mask)
        found = _head_linear(operator) if isinstance(operator, HessianOperator) else None
        if found is None or found[1].out_features < 2:
            return plain
        name, head = found
        offsets = {n: sum(operator.numels[:i]) for i, n in enumerate(operator.names)}
        blocks = []
        mask = zero_mask.cpu()
        for suffix, width in (("weight", head.in_features), ("bias", 1)):
            key = f"{name}.{suffix}" if name else suffix
            if key not in offsets:
                continue
            offset, classes = offsets[key], head.out_features
            dead = mask[torch.arange(offset, offset + classes * width).reshape(classes, width)]
            if bool((dead.any(0) & ~dead.all(0)).any()):
                return plain  # a column partly deflated already: leave the shift alone
            blocks.append((offset, classes, width, [j for j in range(width) if not bool(dead[:, j].all())]))
        candidate = cls(zero_mask, blocks)
        if not candidate.shift_directions:
            return plain
        probe = gaussian(1, operator.dim, generator, operator.dtype, operator.device)
        probe = probe * ~zero_mask
        shift = probe - candidate.project(probe)  # the component along the shift directions
        tol = 1e-8 if operator.dtype == torch.float64 else 1e-3
        if scale is None:
            products = operator.matmat(torch.cat([shift, probe]))
            shifted, scale = products[:1], float(products[1].norm() / probe.norm())
        else:
            shifted = operator.matmat(shift)
        if float(shifted.norm()) > tol * max(scale, 1e-300) * float(shift.norm()):
            return plain
        return candidate
