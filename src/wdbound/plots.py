"""Every figure wdbound draws (matplotlib, Agg when written to a file), each saved atomically.

- :func:`density_figure` / :func:`plot_density`: the Gaussian-smoothed SLQ density of one Hessian on a log
  scale (``spectrum --plot``, ``table``'s per-checkpoint plots, ``Density.plot`` in the Python API);
- :func:`plot_model_comparison`: the densities of log10|eigenvalue| of one model's checkpoints, per epoch
  budget (``table``);
- :func:`table_plots`: both of the above for a finished table;
- :func:`plot_updates`: update-magnitude histograms (``updates --plot``, ``UpdateRecorder.plot``).

>>> import numpy as np
>>> from wdbound.estimators import SLQ
>>> run = SLQ.from_tridiagonals(np.array([[1.0, 2.0]]), np.array([[0.5]]), np.array([2]), np.array([4.0]), 4)
>>> grid, dens, width = density_grid(run, points=5)
>>> len(grid), bool(dens.min() >= 0)
(5, True)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .stats import gaussian_smooth


def _pyplot(headless: bool = True):
    import matplotlib

    if headless:
        matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG without one) and close it."""
    from .io_utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    _pyplot().close(fig)
    return path


def density_grid(slq, points: int = 1000) -> tuple[np.ndarray, np.ndarray, float]:
    """The plotted density of an SLQ run: ``(grid [points], density [points], smoothing width)``; the grid spans
    the Ritz values plus 5 % each side and the width is 1 % of their span."""
    nodes, _ = slq.measure()
    low, high = float(nodes.min()), float(nodes.max())
    span = max(high - low, 1e-12)
    width = 0.01 * span
    grid = np.linspace(low - 0.05 * span, high + 0.05 * span, points)
    return grid, slq.density(grid, width), width


def density_figure(slq, exact_eigenvalues: np.ndarray | None, title: str, path: Path | None = None):
    """Gaussian-smoothed SLQ density on a log scale (Ghorbani et al. 2019 / PyHessian style), with the exact
    eigenvalues under the same smoothing when given. Saved atomically to ``path`` (returns None), else the
    figure is returned (for a notebook)."""
    plt = _pyplot(headless=path is not None)
    grid, dens, width = density_grid(slq)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(grid, np.maximum(dens, 1e-12), label=f"SLQ ({len(slq.nodes)} probes, smoothing {width:.2g})")
    if exact_eigenvalues is not None:
        ev = np.asarray(exact_eigenvalues)
        exact = gaussian_smooth(grid, ev, np.full(len(ev), 1.0 / len(ev)), width)
        ax.semilogy(grid, np.maximum(exact, 1e-12), "--", label="exact (same smoothing)")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=1e-6 * max(dens.max(), 1e-12))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is None:
        return fig
    save_figure(fig, path, dpi=120)
    return None


def plot_density(spectrum, path: Path, title: str) -> None:
    """The density plot of a :class:`wdbound.spectrum.Spectrum` (with its exact eigenvalues when it has them)."""
    density_figure(spectrum.slq, spectrum.exact_eigenvalues, title, path)


def plot_model_comparison(model: str, entries: list, path) -> None:
    """One figure per model: the SLQ measure of log10|eigenvalue| per checkpoint (Gaussian-smoothed),
    AdamW family solid, l2-Adam family dashed, one panel per epoch budget. ``entries`` are
    ``(TableRow, Spectrum)`` pairs. The bounds live in the small eigenvalues, which a linear axis hides;
    exactly-zero eigenvalues (deflated rows) are given in the legend."""
    plt = _pyplot()
    budgets = sorted({int(row.epochs) for row, _ in entries})
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False)
    grid = np.linspace(-10, 3, 600)
    for ax, epochs in zip(axes[0], budgets):
        for row, spectrum in sorted(entries, key=lambda e: e[0].optimizer):
            if int(row.epochs) != epochs:
                continue
            nodes, weights = spectrum.slq.measure()
            keep = np.abs(nodes) > 0
            dens = gaussian_smooth(grid, np.log10(np.abs(nodes[keep])), weights[keep], 0.15)
            style = "-" if (row.family or "").startswith("adamw") else "--"
            zero = 100 * float(weights[~keep].sum())
            err = row.err_mean if row.err_mean is not None else math.nan
            ax.plot(grid, dens, style, label=f"{row.optimizer} (err/d {err:.3f}; {zero:.1f}% exact 0)")
        ax.set_title(f"{model}, {epochs} epochs")
        ax.set_xlabel("log10 |eigenvalue|")
        ax.set_ylabel("spectral density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def table_plots(entries: list, out: Path) -> list[Path]:
    """The plots of a finished table under ``out``: ``density/<stem>.png`` per checkpoint and
    ``spectra-<model>.png`` per model. ``entries`` are ``(TableRow, Spectrum)`` pairs."""
    written = []
    for row, spectrum in entries:
        path = Path(out) / "density" / f"{Path(row.checkpoint).stem}.png"
        plot_density(spectrum, path, f"{row.checkpoint}: Hessian spectral density ({row.split} split)")
        written.append(path)
    by_model: dict[str, list] = {}
    for row, spectrum in entries:
        by_model.setdefault(row.model, []).append((row, spectrum))
    for model, group in by_model.items():
        name = model.replace("(", "-").replace(")", "").replace("=", "").replace(", ", "-")
        path = Path(out) / f"spectra-{name}.png"
        plot_model_comparison(model, group, path)
        written.append(path)
    return written


def plot_updates(entries: list, path, *, per_layer: bool = False) -> None:
    """Update-magnitude histograms of :class:`wdbound.updates.UpdateEntry` s. Panels: all checkpoints' final
    histograms overlaid (fraction of coordinates per bin); with ``per_layer`` one panel per checkpoint with a
    line per layer coloured by depth; and, for checkpoints that recorded histograms during training, one
    panel each with up to six epochs."""
    from .updates import BINS, LOW_EXP

    plt = _pyplot()
    x = np.arange(BINS) + LOW_EXP  # bin i is labelled by its upper log2 edge
    panels = [("final", None)]
    if per_layer:
        panels += [("layers", e) for e in entries]
    panels += [("training", e) for e in entries if e.over_training]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (kind, entry) in zip(axes.flat, panels):
        if kind == "final":
            for e in entries:
                counts = np.asarray(e.total, dtype=float)
                ax.step(x, counts / counts.sum(), where="mid", label=f"{e.checkpoint} (IQR {e.stats.iqr_log2:.1f})")
            ax.set_title("final optimizer state")
        elif kind == "layers":
            top = max(entry.depths.values()) or 1
            for name, counts in entry.layers.items():
                counts = np.asarray(counts, dtype=float)
                ax.step(x, counts / max(counts.sum(), 1), where="mid", color=plt.cm.viridis(entry.depths[name] / top),
                        label=name if len(entry.layers) <= 8 else None)
            ax.set_title(f"{entry.checkpoint}: per layer (dark = shallow)")
        else:
            records = entry.over_training
            pick = sorted({round(i) for i in np.linspace(0, len(records) - 1, min(6, len(records)))})
            for i in pick:
                counts = np.asarray(records[i]["total"], dtype=float)
                ax.step(x, counts / counts.sum(), where="mid", color=plt.cm.plasma(i / max(len(records) - 1, 1)),
                        label=f"epoch {records[i]['epoch']}")
            ax.set_title(f"{entry.checkpoint}: during training")
        ax.set_xlabel("log2 |update| / lr  (left: <= 2^-27, right: >= 1)")
        ax.set_ylabel("fraction of coordinates")
        ax.set_xlim(LOW_EXP - 0.5, 1.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
