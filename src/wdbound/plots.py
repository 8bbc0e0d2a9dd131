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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .stats import gaussian_smooth


def _pyplot(headless: bool = True):
    import matplotlib

    if headless:
        matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def check_plot_path(path) -> None:
    """Refuse, before any work, a plot path whose suffix matplotlib cannot write (``.txt``, ``.doc``): a
    one-line :class:`~wdbound.errors.WdboundError` listing the formats it can. None or no suffix (PNG): fine.

    >>> check_plot_path("spec.svg")
    >>> check_plot_path("spec.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    wdbound.errors.WdboundError: cannot plot to spec.txt: .txt is not an image format; use one of ..., png, ...
    """
    if path is None:
        return
    suffix = Path(path).suffix.lstrip(".").lower()
    if not suffix:
        return
    from matplotlib.figure import Figure

    from .errors import WdboundError

    formats = sorted(Figure().canvas.get_supported_filetypes())
    if suffix not in formats:
        raise WdboundError(f"cannot plot to {path}: .{suffix} is not an image format; use one of "
                           f"{', '.join(formats)}", "plot")


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG without one) and close it."""
    from .io_utils import atomic_path

    path = Path(path)
    check_plot_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    _pyplot().close(fig)
    return path


def density_grid(slq, points: int = 1000) -> tuple[np.ndarray, np.ndarray, float]:
    """The Gaussian-smoothed density of an SLQ run on a linear axis: ``(grid [points], density [points], smoothing
    width)``; the grid spans the Ritz values plus 5 % each side and the width is 1 % of their span."""
    nodes, _ = slq.measure()
    low, high = float(nodes.min()), float(nodes.max())
    span = max(high - low, 1e-12)
    width = 0.01 * span
    grid = np.linspace(low - 0.05 * span, high + 0.05 * span, points)
    return grid, slq.density(grid, width), width


# Eigenvalues with |λ| <= ZERO_RTOL x max|λ| are drawn as exact zeros (the rounding of a dense eigensolver on a
# zero Hessian row is ~1e-16 x max|λ|); the CLI's count of near-zero eigenvalues uses the same threshold.
ZERO_RTOL = 1e-10
BINS_PER_DECADE = 10


@dataclass(frozen=True)
class LogSpectrum:
    """A spectral measure on a log10|λ| axis: fraction of d per decade on ``edges`` for λ > 0 and λ < 0, the
    mass that is exactly zero, and the mass with 0 < |λ| < floor (raised to the floor by the bounds)."""

    edges: np.ndarray  # [bins + 1] log10|λ|
    positive: np.ndarray  # [bins] fraction of d per decade
    negative: np.ndarray  # [bins]
    zero: float
    below_floor: float

    @property
    def negative_share(self) -> float:
        """Fraction of the spectrum at λ < 0 (on or below the axis)."""
        return float(self.negative.sum() / BINS_PER_DECADE) if len(self.negative) else 0.0


def log_axis(values: list[np.ndarray], floor: float) -> np.ndarray:
    """Bin edges in log10|λ| spanning the data: from the smallest |λ| at or above ``floor`` (and not a zero) to
    the largest, in 1/BINS_PER_DECADE decades.

    >>> log_axis([np.array([-2.0, 1e-3, 50.0])], 1e-6)[[0, -1]].round(1).tolist()
    [-3.0, 1.7]
    """
    mags = np.abs(np.concatenate(values))
    top = float(mags.max()) if mags.size else 1.0
    live = mags[(mags >= floor) & (mags > ZERO_RTOL * top)]
    low = math.floor(np.log10(live.min()) * BINS_PER_DECADE) / BINS_PER_DECADE if live.size else np.log10(floor)
    high = math.ceil(np.log10(max(top, 10 ** low)) * BINS_PER_DECADE + 1e-9) / BINS_PER_DECADE
    return np.arange(round((high - low) * BINS_PER_DECADE) + 1) / BINS_PER_DECADE + low


def exact_log_spectrum(eigenvalues: np.ndarray, edges: np.ndarray, floor: float) -> LogSpectrum:
    """The exact ``eigenvalues`` binned on ``edges`` (each 1/d of the mass).

    >>> spec = exact_log_spectrum(np.array([0.0, 1e-8, 1.0, -10.0]), np.array([-1.0, 0.5, 1.5]), 1e-6)
    >>> spec.zero, spec.below_floor, spec.positive.tolist(), spec.negative.tolist()
    (0.25, 0.25, [0.16666666666666666, 0.0], [0.0, 0.25])
    """
    ev = np.asarray(eigenvalues, dtype=float)
    mags = np.abs(ev)
    zero = mags <= ZERO_RTOL * (mags.max() if mags.size else 0.0)
    below = ~zero & (mags < floor)
    live = ~zero & ~below
    width = np.diff(edges)

    def per_decade(mask):
        counts, _ = np.histogram(np.log10(mags[mask]), bins=edges)
        return counts / len(ev) / width

    return LogSpectrum(edges, per_decade(live & (ev > 0)), per_decade(live & (ev < 0)), float(zero.mean()),
                       float(below.mean()))


def slq_log_spectrum(slq, edges: np.ndarray, floor: float) -> LogSpectrum:
    """An SLQ measure binned on ``edges`` with each probe's Ritz value spread uniformly (in log10|λ|) over its
    cell: the interval between the midpoints to its neighbours of the same sign in the same probe's rule. The
    smoothing is thus the rule's own resolution, so a single node is not drawn as a bump of mass. The deflated
    null space is the zero mass; nodes with |θ| < floor are the below-floor mass."""
    positive, negative = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    zero = slq.null_weight / slq.dim if slq.null_weight else 0.0
    below = 0.0
    shares = np.asarray(slq.norms_sq, dtype=float)
    shares = shares / shares.sum() * (1.0 - zero)
    for nodes, weights, share in zip(slq.nodes, slq.weights, shares):
        nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float) * share / weights.sum()
        mags = np.abs(nodes)
        small = mags < floor
        below += float(weights[small].sum())
        for sign, out in ((1, positive), (-1, negative)):
            pick = ~small & (np.sign(nodes) == sign)
            if pick.any():
                out += _cell_spread(np.log10(mags[pick]), weights[pick], edges)
    return LogSpectrum(edges, positive / np.diff(edges), negative / np.diff(edges), float(zero), below)


def _cell_spread(points: np.ndarray, masses: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mass per bin of ``edges`` when each point's mass is spread uniformly over its cell (midpoints to its
    neighbours; the outer cells as wide as the adjacent half-gap, at least 1/BINS_PER_DECADE)."""
    order = np.argsort(points)
    points, masses = points[order], masses[order]
    half = np.diff(points) / 2
    floor = 0.5 / BINS_PER_DECADE
    left = points - np.maximum(np.concatenate([[half[0] if len(half) else floor], half]), floor)
    right = points + np.maximum(np.concatenate([half, [half[-1] if len(half) else floor]]), floor)
    out = np.zeros(len(edges) - 1)
    for lo, hi, mass in zip(left, right, masses):
        overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
        out += mass * overlap / (hi - lo)
    return out


def _bar_axes(plt, figsize, panels: int = 1):
    """A figure with, per panel (one row each), a narrow axis for the zero / below-floor bars beside the
    log10|λ| axis."""
    fig = plt.figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(panels, 2, width_ratios=[1, 6])
    return fig, [(fig.add_subplot(grid[i, 0]), fig.add_subplot(grid[i, 1])) for i in range(panels)]


def _draw_bars(ax, masses: list[tuple[float, float, str, str]], floor: float) -> None:
    """Side-by-side bars of (zero, below-floor) mass per series ``(zero, below, colour, hatch)``, in % of d."""
    width = 0.8 / max(len(masses), 1)
    for i, (zero, below, colour, hatch) in enumerate(masses):
        x = np.arange(2) - 0.4 + width * (i + 0.5)
        ax.bar(x, [100 * zero, 100 * below], width, color=colour, alpha=0.6, hatch=hatch, edgecolor=colour)
    ax.set_xticks([0, 1], ["λ = 0", f"0 < |λ|\n< {floor:.0e}"], fontsize=7)
    ax.set_ylabel("% of eigenvalues")
    ax.tick_params(axis="y", labelsize=7)


def _stairs(ax, spec: LogSpectrum, values: np.ndarray, **style) -> None:
    ax.stairs(np.maximum(values, 0), spec.edges, **style)


def density_figure(slq, exact_eigenvalues: np.ndarray | None, title: str, path: Path | None = None,
                   floor: float | None = None):
    """The spectral density of one Hessian on a log10|λ| axis spanning the data, λ > 0 and λ < 0 apart: the
    exact eigenvalues (filled) when given, the SLQ estimate over them (lines, each Ritz value spread over its
    own cell), and beside it bars for the exactly-zero mass and the mass below the σ-floor. Saved atomically to
    ``path`` (returns None), else the figure is returned (for a notebook)."""
    from .defaults import SIGMA_FLOOR

    floor = SIGMA_FLOOR if floor is None else floor
    plt = _pyplot(headless=path is not None)
    nodes, _ = slq.measure()
    edges = log_axis([nodes] + ([np.asarray(exact_eigenvalues)] if exact_eigenvalues is not None else []), floor)
    fig, [(bars, ax)] = _bar_axes(plt, (8, 5.2))
    est = slq_log_spectrum(slq, edges, floor)
    series = []
    if exact_eigenvalues is not None:
        exact = exact_log_spectrum(np.asarray(exact_eigenvalues), edges, floor)
        _stairs(ax, exact, exact.positive, fill=True, color="tab:blue", alpha=0.3, label="exact eigenvalues, λ > 0")
        _stairs(ax, exact, exact.negative, fill=True, color="tab:orange", alpha=0.3,
                label="exact eigenvalues, λ < 0 (at |λ|)")
        series.append((exact.zero, exact.below_floor, "tab:gray", None))
    steps = slq.alphas.shape[1] if getattr(slq, "alphas", None) is not None else "?"
    rule = f"SLQ estimate ({len(slq.nodes)} probe{'s' if len(slq.nodes) != 1 else ''} × {steps} Lanczos steps)"
    _stairs(ax, est, est.positive, color="tab:blue", linewidth=1.4, label=f"{rule}, λ > 0")
    _stairs(ax, est, est.negative, color="tab:orange", linewidth=1.4, linestyle="--", label=f"{rule}, λ < 0")
    series.append((est.zero, est.below_floor, "black", "//"))
    _draw_bars(bars, series, floor)
    ax.set_yscale("log")
    positive = [v for v in (est.positive, est.negative) if (v > 0).any()]
    if positive:
        ax.set_ylim(bottom=max(min(float(v[v > 0].min()) for v in positive) / 3, 1e-8))
    ax.set_xlabel("log10 |eigenvalue|")
    ax.set_ylabel("fraction of eigenvalues per decade")
    ax.yaxis.set_label_position("right")
    ax.yaxis.tick_right()
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    bars.set_title("exact: grey\nSLQ: hatched", fontsize=7)
    if path is None:
        return fig
    save_figure(fig, path, dpi=120)
    return None


def plot_density(spectrum, path: Path, title: str, floor: float | None = None) -> None:
    """The density plot of a :class:`wdbound.spectrum.Spectrum` (with its exact eigenvalues when it has them)."""
    density_figure(spectrum.slq, spectrum.exact_eigenvalues, title, path, floor)


_FAMILY_COLOURS = {"adamw": "tab:blue", "l2-adam": "tab:orange"}
_OTHER_COLOURS = ["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _describe(row) -> str:
    """A row in words for a legend: optimizer, schedule of λ, err/d and how it was computed."""
    name = {"adamw": "AdamW", "l2-adam": "ℓ2-Adam"}.get(row.family or "", row.optimizer)
    variant = {"constant": ", constant λ", "decaying": ", decaying λ"}.get(row.variant or "", "")
    if row.err_mean is None:
        return f"{name}{variant}"
    how = "exact" if row.method == "exact" else "SLQ, interval [{:.3f}, {:.3f}]".format(*row.err_interval)
    return f"{name}{variant}: err/d {row.err_mean:.3f} ({how})"


def plot_model_comparison(model: str, entries: list, path) -> None:
    """One figure per model, one panel per epoch budget: the spectrum of each checkpoint on a log10|λ| axis
    spanning the data (the exact eigenvalues where known, else the SLQ estimate spread over its cells),
    AdamW family solid, ℓ2-Adam family dashed, constant λ dark and decaying λ light, with the exactly-zero and
    below-floor masses as bars. ``entries`` are ``(TableRow, Spectrum)`` pairs."""
    from .defaults import SIGMA_FLOOR

    plt = _pyplot()
    budgets = sorted({int(row.epochs) for row, _ in entries})
    floor = next((row.inputs.sigma_floor for row, _ in entries if row.inputs is not None), SIGMA_FLOOR)
    values = [s.exact_eigenvalues if s.exact_eigenvalues is not None else s.slq.measure()[0] for _, s in entries]
    edges = log_axis(values, floor)
    fig, panels = _bar_axes(plt, (9, 5.6 * len(budgets)), len(budgets))
    others = iter(_OTHER_COLOURS)
    colours = {}
    for (bars, ax), epochs in zip(panels, budgets):
        series = []
        for row, spectrum in sorted(entries, key=lambda e: (e[0].family or "~", e[0].variant or "", e[0].optimizer)):
            if int(row.epochs) != epochs:
                continue
            if row.family not in _FAMILY_COLOURS and row.optimizer not in colours:
                colours[row.optimizer] = next(others, "black")
            colour = _FAMILY_COLOURS.get(row.family or "", colours.get(row.optimizer, "black"))
            light = row.variant == "decaying"
            spec = (exact_log_spectrum(spectrum.exact_eigenvalues, edges, floor)
                    if spectrum.exact_eigenvalues is not None else slq_log_spectrum(spectrum.slq, edges, floor))
            style = "--" if row.family == "l2-adam" else "-"
            _stairs(ax, spec, spec.positive + spec.negative, color=colour, linestyle=style,
                    alpha=0.55 if light else 1.0, linewidth=1.3,
                    label=f"{_describe(row)}; {100 * spec.negative_share:.0f}% of λ < 0")
            series.append((spec.zero, spec.below_floor, colour, "//" if light else None))
        _draw_bars(bars, series, floor)
        ax.set_yscale("log")
        ax.set_title(f"{model}, {epochs} epochs: Hessian spectrum (|λ| of both signs)", fontsize=9)
        ax.set_xlabel("log10 |eigenvalue|")
        ax.set_ylabel("fraction of eigenvalues per decade")
        ax.yaxis.set_label_position("right")
        ax.yaxis.tick_right()
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    save_figure(fig, path)


def plot_table(rows: list, path, *, stamp: str = "") -> Path:
    """Table I as a figure: per model, err/d of each (epochs, constant / decaying λ) cell, AdamW and ℓ2-Adam
    side by side (points; SLQ cells with their covering interval, exact cells as points), and below it the test
    accuracy. ``rows`` are :class:`wdbound.tables.TableRow` s (those without a Table I family are left out);
    ``stamp`` (version and commit) is printed in the corner."""
    plt = _pyplot()
    cells = [r for r in rows if r.family in _FAMILY_COLOURS and r.err_mean is not None]
    models = sorted({r.model for r in cells})
    fig, axes = plt.subplots(2, max(len(models), 1), figsize=(3.6 * max(len(models), 1), 5.6), squeeze=False,
                             sharex="col")
    for col, model in enumerate(models):
        mine = [r for r in cells if r.model == model]
        keys = sorted({(int(r.epochs), r.variant or "constant") for r in mine})
        for offset, family in ((-0.12, "adamw"), (0.12, "l2-adam")):
            for i, key in enumerate(keys):
                row = next((r for r in mine if r.family == family and (int(r.epochs), r.variant or "constant") == key),
                           None)
                if row is None:
                    continue
                low, high = row.err_interval
                marker = "o" if row.method == "exact" else "s"
                axes[0][col].errorbar(i + offset, row.err_mean, yerr=[[row.err_mean - low], [high - row.err_mean]],
                                      fmt=marker, color=_FAMILY_COLOURS[family], capsize=3)
                if row.test_acc is not None:
                    axes[1][col].bar(i + offset, 100 * row.test_acc, 0.22, color=_FAMILY_COLOURS[family], alpha=0.8)
        axes[0][col].set_title(model, fontsize=9)
        axes[1][col].set_xticks(range(len(keys)), [f"{e} ep\n{v} λ" for e, v in keys], fontsize=7)
        axes[1][col].set_xlim(-0.6, len(keys) - 0.4)
        accs = [100 * r.test_acc for r in mine if r.test_acc is not None]
        if accs:
            axes[1][col].set_ylim(max(0.0, min(accs) - 5), min(100.0, max(accs) + 2))
    axes[0][0].set_ylabel("err/d (lower: tighter bound)")
    axes[1][0].set_ylabel("test accuracy (%)")
    from matplotlib.lines import Line2D

    fig.legend([Line2D([], [], color=c, marker="o", linestyle="") for c in _FAMILY_COLOURS.values()],
               ["AdamW / AdamW-D", "ℓ2-Adam / ℓ2-Adam-D"], loc="lower left", fontsize=7, ncol=2)
    fig.suptitle("Table I on the checkpoints: err/d (points: exact; squares with bars: SLQ covering interval)",
                 fontsize=9)
    if stamp:
        fig.text(0.99, 0.005, stamp, ha="right", va="bottom", fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    return save_figure(fig, path)


def table_plots(entries: list, out: Path, *, stamp: str = "") -> list[Path]:
    """The plots of a finished table under ``out``: ``density/<stem>.png`` per checkpoint,
    ``spectra-<model>.png`` per model and ``table1.png``. ``entries`` are ``(TableRow, Spectrum)`` pairs."""
    written = []
    for row, spectrum in entries:
        path = Path(out) / "density" / f"{Path(row.checkpoint).stem}.png"
        floor = row.inputs.sigma_floor if row.inputs is not None else None
        plot_density(spectrum, path, f"{row.checkpoint}: Hessian spectrum ({row.split} split)", floor)
        written.append(path)
    by_model: dict[str, list] = {}
    for row, spectrum in entries:
        by_model.setdefault(row.model, []).append((row, spectrum))
    for model, group in by_model.items():
        name = model.replace("(", "-").replace(")", "").replace("=", "").replace(", ", "-")
        path = Path(out) / f"spectra-{name}.png"
        plot_model_comparison(model, group, path)
        written.append(path)
    written.append(plot_table([row for row, _ in entries], Path(out) / "table1.png", stamp=stamp))
    return written


def plot_updates(entries: list, path, *, per_layer: bool = False) -> None:
    """Update-magnitude histograms of :class:`wdbound.updates.UpdateEntry` s. Panels: all checkpoints' final
    histograms overlaid (fraction of coordinates per bin); with ``per_layer`` one panel per checkpoint with a
    line per layer coloured by depth; and, for checkpoints that recorded histograms during training, one
    panel each with up to six epochs."""
    from .stats import BINS, LOW_EXP

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


CURVE_PANELS = (("sharpness", "lambda_max(H)"), ("preconditioned_sharpness", "lambda_max(P^-1 H)"),
                ("adamw", "err/d, AdamW form (Thm 6)"), ("l2-adam", "err/d, l2-Adam form (Thm 7)"))


def plot_curves(curves: list, path) -> Path:
    """Curvature over training (:class:`wdbound.curves.Curve` s): one row per architecture, one column per
    quantity (sharpness, Adam's preconditioned sharpness with Cohen et al.'s 38/η, err/d of both bound forms),
    one line per run (its optimizer), steps on a log axis."""
    plt = _pyplot()
    archs = list(dict.fromkeys(c.arch or c.label for c in curves))
    fig, axes = plt.subplots(len(archs), len(CURVE_PANELS), figsize=(4.4 * len(CURVE_PANELS), 3.2 * len(archs)),
                             squeeze=False)
    for row, arch in zip(axes, archs):
        runs = [c for c in curves if (c.arch or c.label) == arch]
        for ax, (key, title) in zip(row, CURVE_PANELS):
            for i, curve in enumerate(runs):
                colour = plt.cm.tab10(i % 10)
                steps = [r.step for r in curve.records]
                if key == "sharpness":
                    values = [r.sharpness[0] if r.sharpness else np.nan for r in curve.records]
                elif key == "preconditioned_sharpness":
                    values = [r.preconditioned_sharpness if r.preconditioned_sharpness is not None else np.nan
                              for r in curve.records]
                    ax.plot(steps, [r.edge_of_stability() for r in curve.records], "--", color=colour, lw=0.8,
                            label=f"38/eta ({curve.optimizer or curve.label})")
                else:
                    values = [(r.err_mean or {}).get(key, np.nan) for r in curve.records]
                ax.plot(steps, values, "o-", ms=3, color=colour, label=curve.optimizer or curve.label)
            ax.set_xscale("log")
            ax.set_title(f"{arch}: {title}", fontsize=9)
            ax.set_xlabel("training step")
            if key == "preconditioned_sharpness":
                ax.set_yscale("log")
            ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)
