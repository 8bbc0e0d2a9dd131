"""The memory plan: what an analysis will hold, decided and checked before the first HVP.

A Hessian analysis holds the model (the checkpoint's copy and the operator's copy in the HVP
precision), the evaluation data (the whole set when it is small, else one streamed chunk), the
activations of one HVP pass (the forward pass, its tangents and the backward pass, for every vector
of the pass), the Lanczos vectors of the SLQ probes and of the top-eigenvalue run, and the diagonal
estimate. Only the Lanczos storage grows with the settings (k·m·d floats with full
re-orthogonalisation), so the plan picks, in this order:

1. full re-orthogonalisation (every basis vector kept) when the SLQ basis fits in the Lanczos share of
   the budget and in ``FULL_BASIS_MAX_BYTES``; else the low-memory recurrence
   (:func:`wdbound.estimators.lanczos.lanczos_blocks`) with the top eigenvalues by thick restart;
2. the largest probe block (vectors per HVP pass) that fits;
3. if a single vector still does not fit, fewer examples per streamed HVP chunk (results do not depend
   on it beyond rounding).

When nothing fits, :func:`plan_memory` raises the one-line error naming ``--memory`` (and the knobs that
shrink the need) before any work. The activation figure is an estimate (leaf-module outputs of one
example, times a safety factor); the peak the process really reached is measured and recorded next to it
(:func:`peak_bytes`).

>>> parse_memory("8GB"), parse_memory("512MiB"), parse_memory("1.5g")
(8000000000, 536870912, 1610612736)
>>> human_bytes(3 * 2**30)
'3.00 GiB'
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .data import input_numel, take
from .defaults import TOP_MAX_STEPS  # the unrestarted top-eigenvalue run keeps up to this many vectors
from .errors import WdboundError
from .estimators.lanczos import VECTOR_DTYPE, LanczosMemory

AUTO_SHARE_RAM = 0.7  # default budget: this share of the RAM available when the run starts
AUTO_SHARE_GPU = 0.85  # ... of the free memory of the CUDA device
FULL_BASIS_MAX_BYTES = 4 * 2**30  # above this the SLQ basis is never kept whole, whatever the budget
LANCZOS_SHARE = 0.5  # share of what is left after model, data and activations that a full basis may take
ACTIVATION_SAFETY = 1.5  # leaf-module outputs miss functional ops (residual adds, attention products)
KEPT_GRAPH_FACTOR = 2.0  # kept gradient graph / activation estimate (measured 1.9x the leaf outputs on ResNet-18)
RESTART_TOP = 20  # Lanczos vectors kept by the thick-restart top-eigenvalue run (top-k up to 9)
RESTART_ENDS = 12  # ... by the runs for the spectrum's ends
LANCZOS_MODES = ("auto", "full", "low-memory")
TRACE_BLOCK_MAX = 32  # deflated-trace probes per read of the Krylov basis at most (each read is the whole basis)
HEAP_REUSE_ALLOWANCE = 0.25  # peak growth heap reuse may cost (fragmentation; measured +9 % on ResNet-18's spectrum)
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``8GB``, ``8GiB``, ``8g`` (binary), ``512MB``, or a number of bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise WdboundError(f"memory budget {text!r}: use a size such as 8GB, 16GiB or 512MB", "memory")
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value < 2**20:
        raise WdboundError(f"memory budget {text!r} is below 1 MiB", "memory")
    return int(value)


def human_bytes(count: float) -> str:
    """Bytes in GiB / MiB / KiB with two decimals."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} B"


@dataclass(frozen=True)
class SystemRoots:
    """Where the limits are read from; tests point these at fake folders."""

    proc: Path = Path("/proc")
    cgroup: Path = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    """The integer in a one-value file (None: missing, unreadable, or ``max``: no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _kb_field(path: Path, field: str) -> int | None:
    """A ``Field: N kB`` line of a /proc file (``meminfo``, ``self/status``) in bytes; None when absent."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _status_bytes(roots: SystemRoots, field: str) -> int | None:
    """A field of ``/proc/self/status`` (VmSize, VmData, VmHWM) in bytes."""
    return _kb_field(roots.proc / "self" / "status", field)


def _mem_available(roots: SystemRoots) -> list[tuple[int, str]]:
    available = _kb_field(roots.proc / "meminfo", "MemAvailable")
    return [] if available is None else [(available, "MemAvailable of /proc/meminfo")]


def _cgroup_limits(roots: SystemRoots) -> list[tuple[int, str]]:
    """Room left under the memory limits of this process's cgroup and its ancestors: cgroup v2
    ``memory.max − memory.current``, cgroup v1 ``memory.limit_in_bytes − memory.usage_in_bytes``."""
    try:
        lines = (roots.proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy (under unified/ on a hybrid v1 + v2 system)
            hybrid = (roots.cgroup / "unified").is_dir() and not (roots.cgroup / "cgroup.controllers").exists()
            base = roots.cgroup / "unified" if hybrid else roots.cgroup
            names, label = ("memory.max", "memory.current"), "cgroup v2 memory.max"
        elif "memory" in controllers.split(","):
            base = roots.cgroup / "memory"
            names, label = ("memory.limit_in_bytes", "memory.usage_in_bytes"), "cgroup v1 memory.limit_in_bytes"
        else:
            continue
        relative = Path(path.lstrip("/"))
        for folder in [relative, *relative.parents]:  # a parent's limit binds the children too
            limit, used = _read_int(base / folder / names[0]), _read_int(base / folder / names[1])
            if limit is not None and limit < 2**60 and used is not None:
                found.append((max(limit - used, 0), f"{label} − usage of /{folder.as_posix().strip('.')}"))
    return found


# (resource limit, the /proc/self/status field it counts, the label the plan line shows)
_RLIMITS = (("RLIMIT_AS", "VmSize", "RLIMIT_AS (ulimit -v) − mapped VmSize"),
            ("RLIMIT_DATA", "VmData", "RLIMIT_DATA − VmData"))


def _rlimits(roots: SystemRoots) -> list[tuple[int, str]]:
    """Room left under RLIMIT_AS (``ulimit -v``: address space, against VmSize) and RLIMIT_DATA (against VmData)."""
    try:
        import resource
    except ImportError:  # not on a POSIX system
        return []
    found = []
    for name, field, label in _RLIMITS:
        limit = resource.getrlimit(getattr(resource, name))[0]
        mapped = _status_bytes(roots, field)
        if limit != resource.RLIM_INFINITY and limit > 0 and mapped is not None:
            found.append((max(limit - mapped, 0), label))
    return found


def available_bytes(device: torch.device, roots: SystemRoots | None = None) -> tuple[int, str]:
    """Memory the process can still get on ``device``, and which limit says so.

    On CUDA: the device's free memory. On the CPU: the smallest of MemAvailable, the room under the cgroup
    (v2 or v1) memory limits of this process's cgroup and its ancestors (containers, SLURM and Kubernetes jobs:
    /proc/meminfo shows the host's memory there), and the room under RLIMIT_AS / RLIMIT_DATA. ``roots``:
    where /proc and /sys/fs/cgroup are (tests).
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    roots = roots or SystemRoots()
    candidates = _mem_available(roots) + _cgroup_limits(roots) + _rlimits(roots)
    if candidates:
        return min(candidates)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "free physical pages"
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30, "unknown (assumed 8 GiB)"


def check_fits(need: int, device: torch.device, what: str, remedy: str) -> None:
    """Refuse up front, in one line (parameter ``memory``), when ``need`` bytes are more than the process can
    still get on ``device`` (:func:`available_bytes`): a computation the Python API runs without a memory plan
    stops before its first HVP instead of being killed by the kernel halfway."""
    available, source = available_bytes(device)
    if need > available:
        raise WdboundError(f"{what} needs ~{human_bytes(need)}, more than the {human_bytes(available)} available "
                           f"({source}); {remedy}", "memory")


def memory_budget(setting: str, device: torch.device, share_of: int = 1) -> tuple[int, int, str]:
    """(budget, bytes in use now, where the budget comes from) of ``--memory``: ``auto`` is what the process
    holds plus a share of what it can still get (AUTO_SHARE_GPU of the GPU's free memory, AUTO_SHARE_RAM of the
    RAM: :func:`available_bytes`), split among ``share_of`` processes that draw on the same memory (torchrun's
    ranks on one node); else the size given (:func:`parse_memory`)."""
    if setting == "auto":
        free, source = available_bytes(device)
        baseline = in_use_bytes(device, source)  # against the same limit (VmSize under ulimit -v)
        share = auto_share(device) / max(share_of, 1)
        per = f" / {share_of} processes" if share_of > 1 else ""
        return baseline + int(free * share), baseline, f"auto: in use + {share:.0%} of {source}{per}"
    return parse_memory(setting), current_bytes(device), "--memory"


def budget_headroom(setting: str, budget: int, baseline: int, device: torch.device) -> int:
    """Free memory an ``auto`` budget (:func:`memory_budget`: in use + a share of what the process can still
    get) leaves out: the other 30 % of the RAM's, 15 % of a GPU's. 0 under an explicit ``--memory``.

    >>> budget_headroom("auto", 1_700, 1_000, torch.device("cpu")), budget_headroom("8GB", 1_700, 1_000,
    ...                                                                             torch.device("cpu"))
    (300, 0)
    """
    if setting != "auto":
        return 0
    share = auto_share(device)
    return int(round((budget - baseline) * (1 - share) / share))


def auto_share(device: torch.device) -> float:
    """The share of what one process can still get that ``--memory auto`` plans for (AUTO_SHARE_GPU of a CUDA
    device's free memory, AUTO_SHARE_RAM of the available RAM): :func:`memory_budget` takes it, and
    :func:`budget_headroom` the rest."""
    return AUTO_SHARE_GPU if device.type == "cuda" else AUTO_SHARE_RAM


def in_use_bytes(device: torch.device, source: str) -> int:
    """What the process holds against the limit ``source`` (a label :func:`available_bytes` returned) counts:
    VmSize under RLIMIT_AS, VmData under RLIMIT_DATA, else the RSS (CPU) / allocated memory (CUDA)."""
    for _name, field, label in _RLIMITS:
        if source == label and device.type != "cuda":
            mapped = _status_bytes(SystemRoots(), field)
            if mapped is not None:
                return mapped
    return current_bytes(device)


# Allocation failures ------------------------------------------------------------------------------------------

_ALLOCATION_MESSAGES = ("can't allocate memory", "cannot allocate memory", "out of memory",
                        "failed to allocate", "std::bad_alloc")


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed: MemoryError, torch's OutOfMemoryError (CUDA), or a
    RuntimeError of the CPU allocator (``DefaultCPUAllocator: can't allocate memory``, ENOMEM)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, (RuntimeError, OSError)):
        text = str(exc).lower()
        return any(message in text for message in _ALLOCATION_MESSAGES)
    return False


class OutOfMemory(WdboundError):
    """An allocation failed during ``phase``: one line saying what the plan expected and what to retry with."""

    def __init__(self, phase: str, plan: "MemoryPlan | None") -> None:
        self.phase, self.plan = phase, plan
        if plan is not None:
            smaller = max(int(0.6 * plan.budget), 2**30)
            message = (f"out of memory while {phase}: the plan expected a peak of ~{human_bytes(plan.peak)} within "
                       f"{human_bytes(plan.budget)} ({plan.budget_source}); retry with --memory "
                       f"{smaller / 2**30:.1f}GiB, or --max-samples / --dtype float32 to shrink the run")
        else:
            message = (f"out of memory while {phase}; retry with a smaller --memory, --max-samples or "
                       "--dtype float32")
        super().__init__(message, "memory")


@contextmanager
def allocation_phase(phase: str, plan=None):
    """Turn an allocation failure inside the block into :class:`OutOfMemory` naming ``phase`` and the memory
    plan (``plan``: a :class:`MemoryPlan`, None, or a function returning one when the failure happens).

    >>> with allocation_phase("testing"):
    ...     raise MemoryError()
    Traceback (most recent call last):
    wdbound.memory.OutOfMemory: out of memory while testing; retry with a smaller --memory, --max-samples or --dtype float32
    """
    try:
        yield
    except OutOfMemory:
        raise
    except Exception as exc:  # noqa: BLE001 - only allocation failures are translated; the rest re-raised
        if is_allocation_failure(exc):
            raise OutOfMemory(phase, plan() if callable(plan) else plan) from None
        raise


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults, restored on the way out
_reuse_depth = 0


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library when it is glibc (``mallopt`` and ``malloc_trim`` as glibc defines them), else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def reuse_freed_memory():
    """A context in which freed CPU memory is kept by the process and reused, instead of going back to the
    kernel at every ``free`` (glibc only; elsewhere a no-op).

    glibc serves each allocation above 32 MB with its own ``mmap`` and unmaps it when freed, so every
    d-sized vector an estimator makes (a probe, an HVP's gradient, a cast) arrives as fresh pages the
    kernel faults in and zeroes one by one. At d = 11 M that made a memory-bound pass ~8x slower than on
    reused memory, and 18 s of a 39 s ResNet-18 ``spectrum`` were spent in the kernel (docs/decisions.md,
    "Large-model overhead"). Inside, large blocks come from the heap (``M_MMAP_MAX`` 0) and the heap is not
    trimmed; on the way out glibc's defaults are restored and ``malloc_trim`` hands the free pages back, so
    the process's footprint afterwards is what it would have been. Nested uses act once, at the outermost.
    The price is fragmentation: freed holes stay resident until the end, so the peak can be higher (ResNet-18's
    ``spectrum``: 7.06 -> 7.70 GB); a run under a memory plan uses it only when the plan, or the free memory
    an ``auto`` budget leaves out of it, has room (:attr:`MemoryPlan.heap_reuse`).
    """
    global _reuse_depth
    libc = _glibc() if _reuse_depth == 0 else None
    _reuse_depth += 1
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        _reuse_depth -= 1
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def peak_bytes(device: torch.device) -> int:
    """Peak memory this process has used so far: the high-water mark of its RSS on the CPU (``VmHWM``; not
    ``ru_maxrss``, which Linux carries over ``exec`` from a large parent), max allocated on a CUDA device."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    high_water = _status_bytes(SystemRoots(), "VmHWM")
    if high_water is not None:
        return high_water
    try:
        import resource
    except ImportError:  # not on Linux / macOS
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if os.uname().sysname == "Darwin" else rss * 1024)


def current_bytes(device: torch.device) -> int:
    """Memory this process holds now (libraries, loaded checkpoint and data): RSS on the CPU, allocated on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_bytes(device)


def activation_floats(model: nn.Module, example) -> int:
    """Floats produced by the leaf modules in one forward pass of one example (the activation memory unit), with
    the im2col columns of convolutions run as unfold + matmul (:class:`wdbound.curvature.UnfoldConv2d`)."""
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        unfolded = getattr(module, "unfolded_floats", None)  # im2col columns of an unfolded convolution
        if unfolded is not None and inputs and isinstance(inputs[0], torch.Tensor):
            total += unfolded(inputs[0])
        for item in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(item, torch.Tensor):
                total += item.numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            one = take(example, slice(0, 1))
            model(**one) if isinstance(one, dict) else model(one)
    finally:
        for handle in handles:
            handle.remove()
    return total + input_numel(one)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes each part of an analysis will hold, and the choices that make them fit in ``budget``."""

    budget: int
    budget_source: str
    baseline: int  # held by the process before the analysis (torch, the checkpoint, the evaluation data)
    model: int
    data: int
    activations: int
    lanczos: int
    top: int
    diagonal: int
    lanczos_mode: str  # "full" (whole basis, full re-orthogonalisation) or "low-memory"
    probe_block: int  # vectors per HVP pass
    hvp_chunk: int  # examples per streamed HVP chunk
    restart: int | None  # thick-restart basis of the top-eigenvalue run (None: unrestarted)
    graph: int = 0  # the kept gradient graph of the whole evaluation set (0: not kept, products streamed)
    single_pass_steps: int | None = None  # the single pass's step cap that fits (None: no single pass)
    single_pass: int = 0  # bytes of the single pass at that cap: the probes' bases, residuals, trace and top-k
    ritz: bool = False  # the low-memory density run has room to project off the top-k run's Ritz vectors
    headroom: int = 0  # free memory an auto budget leaves out of the plan (:func:`budget_headroom`)

    @property
    def fixed(self) -> int:
        """What the whole analysis holds: the process, model, data, one HVP pass and a kept graph."""
        return self.baseline + self.model + self.data + self.activations + self.graph

    @property
    def peak(self) -> int:
        """Planned peak: the fixed parts plus the largest phase (SLQ, top-eigenvalue run, single pass)."""
        return self.fixed + max(self.lanczos + self.diagonal, self.top, self.single_pass)

    def trace_block(self, *, dim: int, trace_vectors: int, top_run: bool) -> int:
        """Probes the deflated trace draws per read of the Krylov basis (each read is the whole basis: on
        ResNet-18 a few GB, 0.6 s). The plan's probe block; after a single pass whose union certified top-k
        (``top_run`` False) the top-k run the plan kept room for beside it never ran, and that room holds
        ``self.top // (trace_vectors x d float64)`` more probes, at most ``TRACE_BLOCK_MAX`` in all. Which probes
        are drawn does not depend on the block (:func:`wdbound.estimators.hutchinson.rademacher`), only how many
        share a read.

        >>> plan = MemoryPlan(2**34, "test", 0, 0, 0, 0, 0, top=6 * 10**9, diagonal=0, lanczos_mode="low-memory",
        ...                   probe_block=1, hvp_chunk=512, restart=20, single_pass_steps=32)
        >>> plan.trace_block(dim=11_000_000, trace_vectors=6, top_run=False), plan.trace_block(
        ...     dim=11_000_000, trace_vectors=6, top_run=True)
        (12, 1)
        """
        if top_run or not self.single_pass_steps or not trace_vectors:
            return self.probe_block
        extra = self.top // (trace_vectors * dim * VECTOR_DTYPE.itemsize)
        return max(self.probe_block, min(TRACE_BLOCK_MAX, self.probe_block + extra))

    @property
    def heap_reuse(self) -> bool:
        """Whether freed memory is kept for reuse during the run (:func:`reuse_freed_memory`): only when
        ``HEAP_REUSE_ALLOWANCE`` more than the planned peak fits under the budget and the free memory an
        ``auto`` budget leaves out (``headroom``), because heap reuse trades fragmentation (a higher peak) for
        speed. An explicit ``--memory`` is a cap: nothing beyond it."""
        return self.peak * (1 + HEAP_REUSE_ALLOWANCE) <= self.budget + self.headroom

    @property
    def keep_graph(self) -> bool:
        """Whether the HVPs go through a kept gradient graph (:class:`wdbound.curvature.HessianOperator`)."""
        return self.graph > 0

    @property
    def memory(self) -> LanczosMemory:
        """The policy the Lanczos runs follow."""
        return LanczosMemory(math.inf if self.lanczos_mode == "full" else 0.0, self.probe_block, self.restart,
                             RESTART_ENDS if self.restart else None, self.ritz)

    def to_json(self) -> dict:
        """The plan's sizes and choices by name (the provenance's ``memory_plan``)."""
        return {"budget": self.budget, "budget_source": self.budget_source, "baseline": self.baseline,
                "model": self.model, "data": self.data,
                "activations_estimate": self.activations, "lanczos": self.lanczos, "top": self.top,
                "diagonal": self.diagonal, "planned_peak": self.peak, "lanczos_mode": self.lanczos_mode,
                "probe_block": self.probe_block, "hvp_chunk": self.hvp_chunk, "restart": self.restart,
                "kept_graph": self.graph, "single_pass_steps": self.single_pass_steps,
                "single_pass": self.single_pass, "ritz": self.ritz, "heap_reuse": self.heap_reuse,
                "headroom": self.headroom}

    def summary(self) -> str:
        """One line for the terminal / log."""
        return (f"memory plan ({human_bytes(self.budget)} budget, {self.budget_source}): in use "
                f"{human_bytes(self.baseline)}, model "
                f"{human_bytes(self.model)}, data {human_bytes(self.data)}, activations ~{human_bytes(self.activations)}"
                f" ({self.probe_block} vectors x {self.hvp_chunk} examples per pass), Lanczos "
                f"{human_bytes(self.lanczos)} ({self.lanczos_mode}), top-k {human_bytes(self.top)}"
                f"{f' (thick restart, {self.restart} vectors)' if self.restart else ''}"
                f"{' and its Ritz vectors projected off the density run' if self.ritz else ''}"
                f", diagonal "
                f"{human_bytes(self.diagonal)}"
                f"{f', kept gradient graph ~{human_bytes(self.graph)}' if self.graph else ''}"
                f"{f', single pass {human_bytes(self.single_pass)} (at most {self.single_pass_steps} steps)' if self.single_pass_steps else ''}; "
                f"peak ~{human_bytes(self.peak)}")


def kept_graph_bytes(activation_per_example: int, examples: int, hvp_bytes: int) -> int:
    """Estimated bytes of the gradient graph of ``examples`` examples kept for double backward: the saved
    tensors of the forward pass and of the first backward pass (``KEPT_GRAPH_FACTOR`` x the activation
    estimate)."""
    return int(KEPT_GRAPH_FACTOR * ACTIVATION_SAFETY * activation_per_example * examples * hvp_bytes)


SINGLE_PASS_MIN_STEPS = 10  # below this many steps the single pass is not planned (two runs instead)


def with_single_pass(plan: MemoryPlan, *, dim: int, probes: int, steps: int, trace_vectors: int) -> MemoryPlan:
    """``plan`` with the single pass (:func:`wdbound.spectrum.single_pass`) at the largest step cap <= ``steps``
    whose memory fits the budget beside the fixed parts and the kept graph: every probe's basis and last
    residual (float64), the deflated trace's probe block and, should the union not certify top-k, the top-k
    run. No single pass (``single_pass_steps`` None) when fewer than SINGLE_PASS_MIN_STEPS steps fit."""
    vec = VECTOR_DTYPE.itemsize
    steps = min(steps, dim)
    beside = trace_vectors * min(probes, plan.probe_block) * dim * vec + plan.diagonal + plan.top
    fit = int((plan.budget - plan.fixed - beside) // (probes * dim * vec)) - 1
    cap = min(steps, fit)
    if cap < min(SINGLE_PASS_MIN_STEPS, steps):
        return replace(plan, single_pass_steps=None, single_pass=0)
    return replace(plan, single_pass_steps=cap, single_pass=probes * (cap + 1) * dim * vec + beside)


def with_kept_graph(plan: MemoryPlan, graph: int) -> MemoryPlan:
    """``plan`` holding a kept gradient graph of ``graph`` bytes when it still fits the budget, else ``plan``."""
    kept = replace(plan, graph=graph)
    return kept if graph > 0 and kept.peak <= plan.budget else plan


def plan_memory(*, dim: int, probes: int, steps: int, top_k: int, hvp_bytes: int, example_floats: int,
                activation_per_example: int, n_eval: int, data_resident: bool, hvp_chunk: int, probe_chunk: int,
                budget: int, budget_source: str, mode: str = "auto", exact_diagonal_chunk: int = 0,
                refine_factor: int = 1, baseline: int = 0, trace_vectors: int = 0, graph: int = 0) -> MemoryPlan:
    """Choose the Lanczos mode, the probe block and the HVP chunk that fit ``budget`` (see the module doc).

    ``hvp_bytes``: bytes per float of the HVP (4 or 8); ``example_floats``: floats of one input;
    ``activation_per_example``: :func:`activation_floats`; ``data_resident``: the whole evaluation set stays
    on the device; ``probe_chunk``: the operator's cap on vectors per pass; ``exact_diagonal_chunk``: unit
    vectors per pass of an exact diagonal (0: none); ``refine_factor``: the longest SLQ run is this many
    times ``probes x steps`` (the adaptive refinement of ``err``); ``baseline``: bytes the process already
    holds (the budget is for the whole process); ``trace_vectors``: float64 vectors of d per probe of the
    block that the deflated trace holds beside the top-k basis (0: no deflated trace).
    """
    if mode not in LANCZOS_MODES:
        raise WdboundError(f"unknown lanczos mode {mode!r}; use auto, full or low-memory", "lanczos")
    vec = VECTOR_DTYPE.itemsize
    model = dim * (4 + 2 * hvp_bytes)  # checkpoint copy (float32), operator copy, flat parameter vector
    steps = min(steps, dim)

    def data_bytes(chunk: int) -> int:
        return (n_eval if data_resident else min(chunk, n_eval)) * example_floats * hvp_bytes

    def activations(vectors: int, chunk: int) -> int:
        per_pass = activation_per_example * min(chunk, n_eval) * hvp_bytes * (2 + 3 * vectors)
        return int(ACTIVATION_SAFETY * per_pass + 3 * vectors * dim * hvp_bytes)

    full_basis = probes * refine_factor * steps * dim * vec + 4 * probes * dim * vec
    diagonal = 2 * dim * 8 + (exact_diagonal_chunk * dim * hvp_bytes if exact_diagonal_chunk else 0)
    fixed = baseline + model + data_bytes(hvp_chunk) + activations(min(probes, probe_chunk), hvp_chunk)
    def trace(block: int) -> int:
        """The deflated trace's working set: it runs after the SLQ, beside the top-k basis and the diagonal's
        running sums (0 without a deflated trace)."""
        return trace_vectors * block * dim * vec + diagonal if trace_vectors else 0

    top = min(TOP_MAX_STEPS, dim) * dim * vec + trace(min(probes, probe_chunk))
    if mode == "full" or (mode == "auto" and max(full_basis, top) <= FULL_BASIS_MAX_BYTES
                          and max(full_basis + diagonal, top) <= LANCZOS_SHARE * max(budget - fixed, 0)):
        plan = MemoryPlan(budget, budget_source, baseline, model, data_bytes(hvp_chunk),
                          activations(min(probes, probe_chunk), hvp_chunk), full_basis, top, diagonal, "full",
                          min(probes, probe_chunk), hvp_chunk, None)
        plan = with_kept_graph(plan, graph)
        if mode == "full" and plan.peak > budget:
            raise WdboundError(f"lanczos full keeps {human_bytes(full_basis)} of Lanczos vectors; with the rest "
                               f"the plan needs ~{human_bytes(plan.peak)}, over the {human_bytes(budget)} budget; use "
                               "lanczos auto or low-memory, or a larger memory budget", "memory")
        return plan
    restart = max(RESTART_TOP, top_k + 10)
    # The density run projects off the Ritz vectors of the top-k run's kept basis (RitzDeflation) when they fit
    # at some block and chunk: one float64 copy beside the basis, two while the null-space projection makes it.
    # They narrow the interval; the block and chunk only change the speed. Else the run goes without them.
    for ritz in (True, False):
        extra = 2 * restart * dim * vec if ritz else 0
        chunk = hvp_chunk
        while True:
            block = min(probes, probe_chunk)
            while block >= 1:
                top = restart * dim * vec + extra + trace(block)
                # the density run's vectors, beside the top-k basis (alive through the density run: kept for
                # the trace, and the Ritz vectors are made from it) and the Ritz vectors when projected off
                lanczos = 4 * block * dim * vec + restart * dim * vec + extra // 2
                plan = MemoryPlan(budget, budget_source, baseline, model, data_bytes(chunk),
                                  activations(block, chunk), lanczos, top, diagonal, "low-memory", block, chunk,
                                  restart, ritz=ritz)
                if plan.peak <= budget:
                    return with_kept_graph(plan, graph)
                block //= 2
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    top = restart * dim * vec + trace(1)
    smallest = MemoryPlan(budget, budget_source, baseline, model, data_bytes(1), activations(1, 1),
                          4 * dim * vec + restart * dim * vec, top, diagonal, "low-memory", 1, 1, restart)
    raise WdboundError(f"the analysis needs at least ~{human_bytes(smallest.peak)} (in use "
                       f"{human_bytes(baseline)}, model {human_bytes(model)}, "
                       f"top-k basis {human_bytes(top)}, one HVP pass ~{human_bytes(smallest.activations)}) but the "
                       f"memory budget is {human_bytes(budget)} ({budget_source}); raise the memory budget, or "
                       "evaluate fewer examples (max_samples) / in float32 (dtype)", "memory")
