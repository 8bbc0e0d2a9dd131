r"""Update-magnitude histograms (Zhuang et al., "Understanding AdamW through proximal methods and
scale-freeness", Section 4, Fig. 3; Appendix C, Figs. 7-12).

The quantity is, for every coordinate, :math:`|u|/\alpha = |\hat m/(\sqrt{\hat v}+\epsilon)|`: the
Adam direction before the learning rate (for l2-Adam the moments already include :math:`\lambda x`,
because the decay is added to the gradient). Log2 bins, as the paper draws them:

- bin 0 holds every value :math:`\le 2^{-27}` (zeros included);
- bins 1..27 hold :math:`(2^{e-1}, 2^{e}]` for :math:`e = -26, \dots, 0`, except that the last one,
  :math:`(2^{-1}, 1)`, stops short of 1;
- bin 28 holds every value :math:`\ge 1`.

>>> import torch
>>> histogram(torch.tensor([0.0, 2.0**-27, 2.0**-26, 0.75, 1.0, 5.0])).tolist()[:2], int(histogram(torch.tensor([1.0]))[-1])
([2, 1], 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoints import optimizer_name
from .errors import WdboundError
from .optim import adam_direction
from .stats import BINS, LOW_EXP  # noqa: F401 - the bins are shared with the plots; re-exported here


def bin_labels() -> list[str]:
    """Human labels of the 29 bins."""
    inner = [f"(2^{e - 1}, 2^{e}]" for e in range(LOW_EXP + 1, 0)] + ["(2^-1, 1)"]
    return [f"<= 2^{LOW_EXP}", *inner, ">= 1"]


def bin_index(values: torch.Tensor) -> torch.Tensor:
    """The bin of each |value| (computed in float64 so exact powers of two land on the documented side)."""
    v = values.detach().abs().to(torch.float64).reshape(-1)
    if bool(torch.isnan(v).any()):
        raise WdboundError("the update direction contains NaN (corrupt optimizer state?)")
    index = torch.empty_like(v, dtype=torch.long)
    low, high = v <= 2.0**LOW_EXP, v >= 1.0
    middle = ~(low | high)
    index[low] = 0
    index[high] = BINS - 1
    index[middle] = torch.ceil(torch.log2(v[middle])).long() - LOW_EXP  # e in [-26, 0] -> 1..27
    return index


def histogram(values: torch.Tensor) -> torch.Tensor:
    """Counts per bin ``[29]`` (int64), summing to ``values.numel()``."""
    return torch.bincount(bin_index(values), minlength=BINS)


def optimizer_histograms(named_state: dict[str, dict], betas, eps: float) -> dict[str, list[int]]:
    """Per-parameter counts of |m̂/(√v̂+ε)| from Adam moments ``{name: {exp_avg, exp_avg_sq, step}}``."""
    out = {}
    for name, state in named_state.items():
        direction = adam_direction(state["exp_avg"], state["exp_avg_sq"], int(state["step"]), tuple(betas), eps)
        out[name] = histogram(direction).tolist()
    return out


def total_counts(layers: dict[str, list[int]]) -> list[int]:
    """Counts per bin over all parameter tensors."""
    return [int(v) for v in np.sum([np.asarray(c, dtype=np.int64) for c in layers.values()], axis=0)]


@dataclass(frozen=True)
class UpdateStats:
    """Summary a reader compares at a glance."""

    count: int  # coordinates counted
    median_log2: float
    iqr_log2: float  # interquartile range in log2 units (bins are one log2 unit wide)
    frac_low: float  # fraction in the leftmost bin (<= 2^-27)
    frac_high: float  # fraction in the rightmost bin (>= 1)

    def to_json(self) -> dict:
        """The fields as a dict."""
        return dict(self.__dict__)


def _quantile_bin(cumulative: np.ndarray, q: float) -> float:
    """The bin position of quantile ``q`` (linear within a bin), in log2 units of the bin's upper edge."""
    total = cumulative[-1]
    target = q * total
    index = int(np.searchsorted(cumulative, target, side="left"))
    before = cumulative[index - 1] if index > 0 else 0
    inside = (target - before) / max(cumulative[index] - before, 1)
    return LOW_EXP + index - 1 + float(inside)  # bin i spans log2 (LOW_EXP + i - 1, LOW_EXP + i]


def stats(counts) -> UpdateStats:
    """Median, interquartile range (log2 units) and the end-bin fractions of histogram ``counts`` [29]."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return UpdateStats(0, math.nan, math.nan, math.nan, math.nan)
    cumulative = np.cumsum(counts)
    q1, q2, q3 = (_quantile_bin(cumulative, q) for q in (0.25, 0.5, 0.75))
    return UpdateStats(total, q2, q3 - q1, counts[0] / total, counts[-1] / total)


def checkpoint_histograms(meta: dict, path: str) -> dict[str, list[int]]:
    """Counts per parameter from a checkpoint's saved optimizer state, or a one-line error saying why not."""
    optimizer = meta.get("optimizer") or {}
    state = optimizer.get("state")
    if not state:
        raise WdboundError(f"{path} has no optimizer state (a plain state_dict?): the update histogram needs "
                           "Adam's moments; pass a wdbound checkpoint written by `wdbound train`")
    hyper = optimizer.get("hyper") or {}
    try:
        return optimizer_histograms(state, hyper.get("betas", (0.9, 0.999)), float(hyper.get("eps", 1e-8)))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WdboundError(f"{path}: unreadable optimizer state ({exc})") from None


@dataclass(frozen=True)
class UpdateEntry:
    """The update-magnitude histograms of one checkpoint (or training run): totals over every coordinate,
    counts per parameter tensor with their depths, and the histograms recorded over training
    (``over_training``: ``{"epoch", "step", "total"}`` per record). ``to_json`` is one entry of
    ``wdbound updates --json``."""

    checkpoint: str
    path: str | None
    optimizer: str | None
    arch: str | None
    arch_kwargs: dict | None
    total: list[int]
    stats: UpdateStats
    layers: dict[str, list[int]]
    depths: dict[str, int]
    layer_stats: dict[str, UpdateStats]
    over_training: list[dict]

    def to_json(self) -> dict:
        """The JSON form (every field; statistics as dicts)."""
        return {"checkpoint": self.checkpoint, "path": self.path, "optimizer": self.optimizer, "arch": self.arch,
                "arch_kwargs": self.arch_kwargs, "total": self.total, "stats": self.stats.to_json(),
                "layers": self.layers, "depths": self.depths,
                "layer_stats": {name: st.to_json() for name, st in self.layer_stats.items()},
                "over_training": self.over_training}


    def to_pandas(self):
        """The histograms as a long ``pandas.DataFrame``: one row per (layer, bin) with ``checkpoint``,
        ``optimizer``, ``layer`` (``"all"`` for the total), ``depth``, ``bin`` (its label), ``log2_upper`` (the
        bin's upper log2 edge), ``count`` and ``fraction`` (of that layer's coordinates)."""
        return updates_to_pandas([self])


def updates_to_pandas(entries: list["UpdateEntry"]):
    """:meth:`UpdateEntry.to_pandas` of several entries, stacked (``wdbound updates --json`` as a frame)."""
    import pandas as pd

    labels = bin_labels()
    rows = []
    for entry in entries:
        for layer, counts, depth in [("all", entry.total, None)] + [
                (name, counts, entry.depths.get(name)) for name, counts in entry.layers.items()]:
            total = sum(counts) or 1
            rows += [{"checkpoint": entry.checkpoint, "optimizer": entry.optimizer, "layer": layer, "depth": depth,
                      "bin": labels[i], "log2_upper": LOW_EXP + i, "count": int(c), "fraction": c / total}
                     for i, c in enumerate(counts)]
    return pd.DataFrame(rows, columns=["checkpoint", "optimizer", "layer", "depth", "bin", "log2_upper", "count",
                                       "fraction"])


def histogram_entry(label: str, layers: dict[str, list[int]], records: list[dict], *, path: str | None = None,
                    optimizer: str | None = None, arch: str | None = None,
                    arch_kwargs: dict | None = None) -> UpdateEntry:
    """One :class:`UpdateEntry`: totals, per-layer counts and statistics, depths, and the histograms recorded
    over training (``records``: ``{"epoch", "step", "layers"}``)."""
    total = total_counts(layers)
    return UpdateEntry(label, path, optimizer, arch, arch_kwargs, total, stats(total), layers,
                       layer_depths(list(layers)), {name: stats(c) for name, c in layers.items()},
                       [{"epoch": r["epoch"], "step": r["step"], "total": total_counts(r["layers"])} for r in records])


QUANTITY = "|m_hat / (sqrt(v_hat) + eps)| per coordinate (for l2-Adam the moments include lambda*x)"


def updates_json(entries: list[UpdateEntry]) -> dict:
    """``wdbound updates --json``: the bin labels, the quantity histogrammed and every entry."""
    return {"bins": bin_labels(), "quantity": QUANTITY, "checkpoints": [e.to_json() for e in entries]}


def checkpoint_entry(meta: dict, path) -> UpdateEntry:
    """:func:`histogram_entry` of a checkpoint written by ``wdbound train`` (final state + recorded epochs)."""
    layers = checkpoint_histograms(meta, str(path))
    records = ((meta.get("train") or {}).get("update_histograms") or {}).get("records") or []
    return histogram_entry(getattr(path, "name", str(path)), layers, records, path=str(path),
                           optimizer=optimizer_name(meta), arch=meta.get("arch"),
                           arch_kwargs=meta.get("arch_kwargs"))


class UpdateRecorder:
    """Update-magnitude histograms from any Adam-family ``torch.optim`` optimizer (Adam, AdamW, wdbound's),
    in your own training loop: call :meth:`record` once per epoch; :meth:`entry` gives what
    ``wdbound updates --json`` writes for a checkpoint, :meth:`plot` draws it.

    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(3))
    >>> opt = torch.optim.AdamW([p], lr=0.1)
    >>> p.grad = torch.tensor([1.0, -2.0, 0.0]); opt.step()
    >>> recorder = UpdateRecorder(opt, names={p: "w"})
    >>> recorder.record(epoch=1)["w"][-1]  # |m_hat/(sqrt(v_hat)+eps)| = 1 for both non-zero coordinates
    2
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None,
                 names: dict | None = None, label: str = "training run") -> None:
        self.optimizer = optimizer
        if names is None:
            names = {p: n for n, p in model.named_parameters()} if model is not None else {}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.names = {p: names.get(p, f"param{i}") for i, p in enumerate(params)}
        self.label = label
        self.records: list[dict] = []

    def current(self) -> dict[str, list[int]]:
        """Counts per parameter from the optimizer's present moments."""
        out = {}
        for group in self.optimizer.param_groups:
            betas, eps = group.get("betas"), group.get("eps")
            if betas is None or eps is None:
                raise WdboundError("UpdateRecorder needs an Adam-family optimizer (param groups with betas, eps)")
            for param in group["params"]:
                state = self.optimizer.state.get(param) or {}
                if "exp_avg" not in state:
                    continue
                step = int(state["step"]) if "step" in state else 0
                out.update(optimizer_histograms({self.names[param]: {**state, "step": step}}, betas, eps))
        if not out:
            raise WdboundError("the optimizer has no Adam moments yet: call record() after optimizer.step()")
        return out

    def record(self, epoch: int, step: int | None = None) -> dict[str, list[int]]:
        """Histogram the present state as ``epoch``; returns the per-parameter counts."""
        layers = self.current()
        self.records.append({"epoch": int(epoch), "step": step, "layers": layers})
        return layers

    def entry(self) -> UpdateEntry:
        """The histograms so far as an :class:`UpdateEntry` (``.to_json()``: an entry of ``updates --json``)."""
        return histogram_entry(self.label, self.current(), self.records)

    def plot(self, path, per_layer: bool = False) -> None:
        """Draw the histograms (final state, per layer, over training) to ``path``."""
        from .plots import plot_updates

        plot_updates([self.entry()], path, per_layer=per_layer)


def layer_depths(names: list[str]) -> dict[str, int]:
    """Depth index of each parameter name in module order: parameters of one module share a depth."""
    depths: dict[str, int] = {}
    modules: list[str] = []
    for name in names:
        module = name.rsplit(".", 1)[0] if "." in name else name
        if module not in modules:
            modules.append(module)
        depths[name] = modules.index(module)
    return depths


