"""plots.py: every figure is written whole (atomically, format by suffix) or returned for a notebook."""

import numpy as np

from wdbound.analysis import BoundFigures
from wdbound.estimators import SLQ
from wdbound.estimators.quadrature_interval import Interval
from wdbound.plots import (BINS_PER_DECADE, density_figure, density_grid, exact_log_spectrum, log_axis, plot_table,
                           plot_updates, slq_log_spectrum, table_plots)
from wdbound.stats import gaussian_smooth
from wdbound.tables import TableRow
from wdbound.updates import histogram_entry


def _slq(seed=0):
    rng = np.random.default_rng(seed)
    alphas, betas = rng.uniform(0, 5, (3, 6)), rng.uniform(0.1, 1, (3, 5))
    return SLQ.from_tridiagonals(alphas, betas, np.array([6, 6, 6]), np.full(3, 40.0), 40, null_weight=2.0)


class _Spectrum:
    def __init__(self, seed):
        self.slq, self.exact_eigenvalues = _slq(seed), None


def test_density_grid_integrates_to_one():
    grid, dens, width = density_grid(_slq(), points=4000)
    assert abs(np.trapezoid(dens, grid) - 1) < 0.02 and width > 0


def _total(spec):
    width = np.diff(spec.edges)
    return float(((spec.positive + spec.negative) * width).sum()) + spec.zero + spec.below_floor


def test_exact_log_spectrum_keeps_every_eigenvalue():
    """Zero, below-floor, positive and negative masses add up to 1 on an axis spanning the data; the negative
    share is the fraction of eigenvalues below zero (at or above the floor)."""
    ev = np.concatenate([np.zeros(5), [3e-8, -2e-7], np.geomspace(1e-5, 40, 60), -np.geomspace(1e-4, 2, 20)])
    edges = log_axis([ev], 1e-6)
    spec = exact_log_spectrum(ev, edges, 1e-6)
    assert abs(_total(spec) - 1) < 1e-12
    assert spec.zero == 5 / len(ev) and spec.below_floor == 2 / len(ev)
    assert abs(spec.negative_share - 20 / len(ev)) < 1e-12
    assert edges[0] <= np.log10(1e-5) and edges[-1] >= np.log10(40) and edges[-1] - edges[0] < 7.5


def test_slq_log_spectrum_spreads_nodes_over_their_cells():
    """Each Ritz value's mass is spread over its cell, so the binned SLQ measure keeps all the mass (the
    deflated null space as the zero bar) and is never a single-bin spike where the rule has one node."""
    run = _slq()
    nodes, _ = run.measure()
    edges = log_axis([nodes], 1e-6)
    edges = np.concatenate([[edges[0] - 3], edges, [edges[-1] + 3]])  # room for the outer cells
    spec = slq_log_spectrum(run, edges, 1e-6)
    assert abs(_total(spec) - 1) < 1e-9
    assert abs(spec.zero - 2.0 / 40) < 1e-12
    busy = (spec.positive > 0).sum()
    assert busy > len(np.unique(nodes[nodes > 0]))  # wider than one bin per node


def test_density_figure_to_file_or_returned(tmp_path):
    fig = density_figure(_slq(), np.linspace(-1, 6, 40), "t")
    bars, ax = fig.axes
    assert len(ax.patches) == 4 and ax.get_yscale() == "log"  # exact +/- filled, SLQ +/- lines
    assert len(bars.patches) == 4  # (zero, below floor) x (exact, SLQ)
    assert ax.get_legend() is not None and all(t.get_text() for t in ax.get_legend().get_texts())
    path = tmp_path / "d.svg"
    assert density_figure(_slq(), None, "t", path) is None
    assert path.read_text().lstrip().startswith("<?xml") and [p.name for p in tmp_path.iterdir()] == ["d.svg"]


def test_table_plots_names(tmp_path):
    figures = BoundFigures("adamw", "slq", 1.0, 0.1, 0.5, 0.05, None, 0.0, 1.0, 0.0, 0)
    rows = [TableRow(f"net-{o}-e1.pt", "net(depth=2)", 1, o, o.split("-d")[0], None, figures=figures) for o in
            ("adamw", "l2-adam")]
    written = table_plots([(row, _Spectrum(i)) for i, row in enumerate(rows)], tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "density/net-adamw-e1.png", "density/net-l2-adam-e1.png", "spectra-net-depth2.png", "table1.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_plot_updates(tmp_path):
    layers = {"0.weight": [1] * 29, "1.weight": [0] * 28 + [5]}
    entry = histogram_entry("x", layers, [{"epoch": 1, "step": 3, "layers": layers}])
    plot_updates([entry], tmp_path / "u.png", per_layer=True)
    assert (tmp_path / "u.png").read_bytes()[:4] == b"\x89PNG"


def test_gaussian_smooth_mass():
    grid = np.linspace(-20, 20, 8001)
    dens = gaussian_smooth(grid, np.array([-1.0, 2.0]), np.array([0.25, 0.5]), 0.7)
    assert abs(np.trapezoid(dens, grid) - 0.75) < 1e-6


def test_plot_table_points_and_intervals(tmp_path):
    """err/d per cell, AdamW and l2-Adam side by side; an SLQ cell carries its interval as an error bar."""
    exact = BoundFigures("adamw", "exact", 1.0, 0.0, 0.5, 0.0, None, 0.0, 1.0, 0.0, 0)
    slq = BoundFigures("l2-adam", "slq", 1.0, 0.1, 0.6, 0.05, Interval(0.6, 0.55, 0.7), 0.0, 1.0, 0.0, 0)
    rows = [TableRow("m-adamw-e1.pt", "m", 1, "adamw", "adamw", "constant", figures=exact, test_acc=0.9),
            TableRow("m-l2-adam-e1.pt", "m", 1, "l2-adam", "l2-adam", "constant", figures=slq, test_acc=0.8)]
    path = plot_table(rows, tmp_path / "t.png", stamp="made by wdbound test")
    assert path.read_bytes()[:4] == b"\x89PNG"
