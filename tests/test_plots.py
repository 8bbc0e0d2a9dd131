"""plots.py: every figure is written whole (atomically, format by suffix) or returned for a notebook."""

import numpy as np

from wdbound.analysis import BoundFigures
from wdbound.estimators import SLQ
from wdbound.plots import density_figure, density_grid, plot_updates, table_plots
from wdbound.stats import gaussian_smooth
from wdbound.table import TableRow
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


def test_density_figure_to_file_or_returned(tmp_path):
    fig = density_figure(_slq(), np.linspace(-1, 6, 40), "t")
    assert fig is not None and len(fig.axes[0].lines) == 2
    path = tmp_path / "d.svg"
    assert density_figure(_slq(), None, "t", path) is None
    assert path.read_text().lstrip().startswith("<?xml") and [p.name for p in tmp_path.iterdir()] == ["d.svg"]


def test_table_plots_names(tmp_path):
    figures = BoundFigures("adamw", "slq", 1.0, 0.1, 0.5, 0.05, None, 0.0, 1.0, 0.0, 0)
    rows = [TableRow(f"net-{o}-e1.pt", "net(depth=2)", 1, o, o.split("-d")[0], None, figures=figures) for o in
            ("adamw", "l2-adam")]
    written = table_plots([(row, _Spectrum(i)) for i, row in enumerate(rows)], tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "density/net-adamw-e1.png", "density/net-l2-adam-e1.png", "spectra-net-depth2.png"]
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
