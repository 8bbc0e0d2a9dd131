"""analysis.py: the Theorem runs, typed bound figures, the shared per-checkpoint evaluation and `err`'s report,
against exact values computed here from the dense Hessian."""

import numpy as np
import pytest
import torch

from conftest import raises_param, train_checkpoint
from wdbound import defaults
from wdbound.analysis import (BoundFigures, NearZero, bound_inputs, evaluate, evaluate_err, parse_sweep,
                              planned_hvps, sweep_inputs)
from wdbound.bounds import BoundInputs, theorem_exact
from wdbound.checkpoints import load_checkpoint
from wdbound.progress import Observer
from wdbound.spectrum import SpectrumSettings, expected_hvps


class Recorder(Observer):
    def __init__(self):
        self.planned, self.spent, self.finished, self.plans = None, 0, None, 0

    def start(self, label, total):
        self.planned = total

    def hvps(self, count):
        self.spent += count

    def done(self, hvps):
        self.finished = hvps

    def plan(self, plan):
        self.plans += 1


def _corollary3(eigenvalues, form, p):
    """Corollary 3 written out: sum_i h(x(max(|sigma_i|, floor)))."""
    sigma = np.maximum(np.abs(eigenvalues), p.sigma_floor)
    root = np.sqrt(sigma)
    inner = root + p.lam if form == "adamw" else root + p.lam / root
    x = 2 * p.rho * p.b * inner / p.eta
    return float(np.sum(np.log(x) + 1 / x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A digits-mlp with 6 hidden units (d = 460): dense Hessians in seconds."""
    path = train_checkpoint(tmp_path_factory.mktemp("analysis"), "tiny.pt", model="digits-mlp", optimizer="adamw",
                            epochs=2, lr=3e-3, wd=1e-2, arch_kwargs={"hidden": 6}, seed=1)
    return load_checkpoint(path, dtype=torch.float64)


SETTINGS = SpectrumSettings(max_samples=120, probes=6, steps=30, top_k=2, device="cpu", rtol=0.0)


def test_evaluate_exact_figures_equal_the_formula_on_the_dense_spectrum(tiny):
    from wdbound.spectrum import build_operator
    from wdbound.curvature import dense_matrix

    inputs = bound_inputs(tiny, rho=None, tau=0.05, sigma_floor=1e-6)
    observer = Recorder()
    evaluation = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "exact": True}), inputs,
                          ["adamw", "l2-adam"], observer=observer)
    hessian = dense_matrix(build_operator(tiny, SETTINGS)).double().numpy()
    eigenvalues = np.linalg.eigvalsh(hessian)
    for form in ("adamw", "l2-adam"):
        figures = evaluation.figures[form]
        assert isinstance(figures, BoundFigures) and figures.method == "exact"
        assert figures.err_sum == pytest.approx(_corollary3(eigenvalues, form, inputs), rel=1e-9)
        assert figures.err_mean == pytest.approx(figures.err_sum / inputs.d, rel=1e-12)
        assert figures.interval == (figures.err_mean, figures.err_mean)
        assert figures.theorem.term == pytest.approx(theorem_exact(hessian, form, inputs).term, rel=1e-9)
        assert figures.slq is not None and figures.slq.method == "slq"
        schema = figures.to_json()
        assert schema["method"] == "exact" and "method" not in schema["slq"]
        assert schema["exact"]["theorem_term"] == figures.theorem.term
    # Progress: the plan was shown, the HVPs reported add up and stay within the planned upper estimate.
    assert observer.plans == 1 and observer.spent == evaluation.analysis.hvps == observer.finished
    assert 0 < observer.spent <= observer.planned


def test_evaluate_slq_intervals_cover_the_exact_values(tiny):
    inputs = bound_inputs(tiny, rho=None, tau=0.05, sigma_floor=1e-6)
    exact = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "exact": True}), inputs, ["adamw", "l2-adam"])
    observer = Recorder()
    slq = evaluate(tiny, SETTINGS, inputs, ["adamw", "l2-adam"], observer=observer)
    for form in ("adamw", "l2-adam"):
        low, high = slq.figures[form].interval
        assert low <= exact.figures[form].err_mean <= high
        theorem = slq.figures[form].theorem
        assert theorem.interval.contains(exact.figures[form].theorem.term)
        assert slq.figures[form].probes == 6 and slq.figures[form].steps == 30
    assert observer.spent <= observer.planned == planned_hvps(SETTINGS, inputs.d, ["adamw", "l2-adam"], [1e-6])


def test_slq_whose_krylov_space_fills_the_deflated_space_is_exact(tiny):
    """--exact off with one probe and at least d steps (the digits CNN's case at the defaults): the run breaks
    down when its Krylov space fills the space left after the zero rows and the logit shift, its Ritz values are
    all the eigenvalues, and err/d equals the dense-Hessian value with no probe error. A run a step short of
    that space keeps the one-probe interval, which still covers."""
    inputs = bound_inputs(tiny, rho=None, tau=0.05, sigma_floor=1e-6)
    exact = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "exact": True}), inputs, ["adamw", "l2-adam"],
                     theorem=False)
    full = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "probes": 1, "steps": inputs.d}), inputs,
                    ["adamw", "l2-adam"], theorem=False)
    slq = full.analysis.spectrum.slq
    nulls = int(slq.null_weight)
    assert nulls > 0 and slq.spanning_probe() == 0
    ev = exact.analysis.spectrum.exact_eigenvalues
    np.testing.assert_allclose(slq.spanned_eigenvalues(), np.sort(ev[np.argsort(np.abs(ev))[nulls:]]),
                               rtol=0, atol=1e-9 * np.abs(ev).max())
    short = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "probes": 1, "steps": inputs.d - nulls - 1}),
                     inputs, ["adamw", "l2-adam"], theorem=False)
    assert short.analysis.spectrum.slq.spanning_probe() is None
    for form in ("adamw", "l2-adam"):
        value = exact.figures[form].err_mean
        low, high = full.figures[form].interval
        assert low <= value <= high and (high - low) / 2 < 1e-6 * value
        assert full.figures[form].err_mean == pytest.approx(value, rel=1e-10)
        low, high = short.figures[form].interval
        assert low <= value <= high and (high - low) / 2 > 1e-4 * value


def test_low_memory_density_run_projects_off_the_top_ritz_vectors_and_covers(tiny, monkeypatch):
    """--lanczos low-memory: the three-term density run has the top-k run's kept Ritz vectors projected off and
    their values added back as atoms (no extra HVP). On a real MLP, both forms' err/d intervals still cover the
    dense-Hessian values, and the trace, taken from plain probes of its own, stays unbiased. (At d = 460 the
    20 vectors are 4 % of the space: the share allowed is raised for the test; the tool deflates at most 0.1 %.)"""
    import wdbound.spectrum

    plain = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "lanczos": "low-memory"}),
                     bound_inputs(tiny, rho=None, tau=0.05, sigma_floor=1e-6), ["adamw"], theorem=False)
    assert plain.analysis.spectrum.slq.atom_count == 0  # 20 vectors are over 0.1 % of 460 dimensions
    monkeypatch.setattr(wdbound.spectrum, "RITZ_MAX_SHARE", 1.0)
    inputs = bound_inputs(tiny, rho=None, tau=0.05, sigma_floor=1e-6)
    exact = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "exact": True}), inputs, ["adamw", "l2-adam"],
                     theorem=False)
    low = evaluate(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "lanczos": "low-memory", "trace": "hutchinson",
                                             "diag_probes": 0}),
                   inputs, ["adamw", "l2-adam"], theorem=False)
    spectrum = low.analysis.spectrum
    assert spectrum.provenance["lanczos"] == "local"
    assert spectrum.slq.atom_count >= SETTINGS.top_k and spectrum.deflation["top_ritz"] == spectrum.slq.atom_count
    assert spectrum.provenance["ritz_deflated"] == spectrum.slq.atom_count
    assert spectrum.to_json()["top_ritz"]["count"] == spectrum.slq.atom_count
    top = np.sort(exact.analysis.spectrum.exact_eigenvalues)[::-1][:SETTINGS.top_k]
    np.testing.assert_allclose(spectrum.slq.atoms[:SETTINGS.top_k], top, rtol=1e-6)
    for form in ("adamw", "l2-adam"):
        low_, high = low.figures[form].interval
        assert low_ <= exact.figures[form].err_mean <= high, (form, low.figures[form].interval)
    trace = spectrum.trace
    assert trace.samples.shape[0] == SETTINGS.probes  # as many plain probes as the SLQ had
    assert abs(trace.estimate - float(exact.analysis.spectrum.exact_eigenvalues.sum())) <= 4 * trace.stderr + 1e-9


def test_evaluate_without_theorem_and_sweeps_need_no_new_hvps(tiny):
    inputs = bound_inputs(tiny, rho=0.1, tau=0.05, sigma_floor=1e-6)
    evaluation = evaluate(tiny, SETTINGS, inputs, ["adamw"], theorem=False)
    assert evaluation.figures["adamw"].theorem is None and evaluation.analysis.runs == {}
    other = sweep_inputs(inputs, "rho", [0.3])[0]
    swept = evaluation.figures_for(other)["adamw"]
    direct = evaluate(tiny, SETTINGS, other, ["adamw"], theorem=False).figures["adamw"]
    assert swept.err_mean == pytest.approx(direct.err_mean, rel=1e-12)  # same probes: same seeds


def test_evaluate_err_report_schema_and_sweeps(tiny):
    inputs = bound_inputs(tiny, rho=None, tau=0.05, sigma_floor=1e-6)
    report = evaluate_err(tiny, SpectrumSettings(**{**SETTINGS.__dict__, "exact": True}), inputs,
                          sweeps=[parse_sweep("sigma-floor=1e-8,1e-6"), parse_sweep("tau=0.1")])
    assert report.forms == ["adamw", "l2-adam"] and report.trained_with == "adamw" and report.own_form == "adamw"
    data = report.to_json()
    assert list(data)[:5] == ["checkpoint", "trained_with", "own_form", "lam_reading", "note"]
    assert set(data["sweeps"]) == {"sigma-floor", "tau"} and len(data["sweeps"]["sigma-floor"]) == 2
    row = report.sweeps["sigma-floor"][1]  # floor 1e-6: the run's own inputs
    assert row.figures["adamw"].err_mean == report.figures["adamw"].err_mean
    low_floor = report.sweeps["sigma-floor"][0].figures["l2-adam"]
    assert low_floor.theorem is not None  # Theorem parts were prepared for the swept floor too
    with raises_param("optimizer"):
        evaluate_err(tiny, SETTINGS, inputs, ["adam"])


def test_near_zero_split_and_parse_sweep():
    split = NearZero.of(np.array([0.0, 0.0, 1e-9, -1e-8, 0.5, 2.0]), 1e-6, zero_rows=1, logit_shift=1)
    assert split.to_json() == {"deflated_zero_rows": 1, "deflated_logit_shift": 1, "raised_to_floor": 2,
                               "below_floor_total": 4}
    assert parse_sweep("rho=0.1, 1") == ("rho", [0.1, 1.0])
    for bad in ("rho", "eta=1", "rho=a", "rho="):
        with raises_param("sweep"):
            parse_sweep(bad)
    p = BoundInputs(d=3, n=10, b=2, eta=0.1, lam=0.01, rho=0.5)
    assert [q.lam for q in sweep_inputs(p, "wd", [0.0, 0.2])] == [0.0, 0.2]
    with raises_param("eta"):
        sweep_inputs(p, "lr", [0.0])


def test_planned_hvps_counts_the_theorem_runs():
    s = SpectrumSettings(probes=4, steps=10, theorem_probes=3, theorem_steps=7)
    base = planned_hvps(s, 1000)
    ends = defaults.ENDS_MAX_STEPS  # A = Q^1/2 H Q^1/2 has ends of its own
    assert planned_hvps(s, 1000, ["adamw"], [1e-6]) == base + 2 * 3 * 7 + ends  # A: ln det and trace runs
    assert planned_hvps(s, 1000, ["l2-adam"], [1e-6, 1e-8]) == base + 2 * 3 * 7  # H: trace run per floor
    assert planned_hvps(s, 1000, ["l2-adam"], [1e-6]) == base + 3 * 7  # ln det: the density run (4 >= 3 probes)
    few = SpectrumSettings(probes=2, steps=10, theorem_probes=3, theorem_steps=7)  # too few probes to reuse
    assert planned_hvps(few, 1000, ["l2-adam"], [1e-6]) == planned_hvps(few, 1000) + 2 * 3 * 7
    exact = SpectrumSettings(exact=True)  # the dense Hessian's d columns replace the Theorem runs
    # exact: the dense Hessian serves the Theorem terms too; the spectrum counts its d columns once
    assert planned_hvps(exact, 50, ["adamw"], [1e-6]) == planned_hvps(exact, 50) == expected_hvps(exact, 50) <= 50 + 5 + 50


@pytest.mark.parametrize("form", ["adamw", "l2-adam"])
def test_theorem_slq_matches_exact_on_dense_operator(form):
    import torch

    from wdbound.analysis import theorem_runs
    from wdbound.bounds import theorem_from_runs
    from wdbound.curvature import DenseOperator

    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.standard_normal((80, 80)))
    hessian = basis @ np.diag(np.geomspace(1e-3, 10, 80)) @ basis.T
    p = BoundInputs(d=80, n=500, b=16, eta=0.02, lam=0.05, rho=0.2, sigma_floor=1e-9)
    exact = theorem_exact(hessian, form, p)
    runs = theorem_runs(DenseOperator(torch.from_numpy(hessian)), np.diag(hessian), form, p.sigma_floor, probes=30,
                        steps=80, generator=torch.Generator().manual_seed(0))
    est = theorem_from_runs(runs, p)
    # m = d steps: quadrature exact per probe, so only the Hutchinson sampling error remains.
    assert abs(est.term - exact.term) < 4 * est.term_stderr + 1e-9 * abs(exact.term)
    assert est.logdet_m == pytest.approx(exact.logdet_m, rel=0.02)


@pytest.mark.parametrize("form", ["adamw", "l2-adam"])
@pytest.mark.parametrize("seed", [0, 1])
def test_theorem_interval_covers_exact_with_few_steps(form, seed):
    """20 Lanczos steps on a 300-dim Hessian with a near-zero cluster: the Gauss estimate is biased, the
    interval (CMS bracket + 3 stderr) still covers the exact term."""
    import torch

    from wdbound.analysis import theorem_runs
    from wdbound.bounds import theorem_from_runs
    from wdbound.curvature import DenseOperator

    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    ev = np.concatenate([10 ** rng.uniform(-7, -3, 150), 10 ** rng.uniform(-3, 1.5, 150)])
    hessian = basis @ np.diag(ev) @ basis.T
    p = BoundInputs(d=300, n=500, b=16, eta=0.02, lam=0.05, rho=0.2, sigma_floor=1e-6)
    exact = theorem_exact(hessian, form, p)
    runs = theorem_runs(DenseOperator(torch.from_numpy(hessian)), np.diag(hessian), form, p.sigma_floor, probes=12,
                        steps=20, generator=torch.Generator().manual_seed(seed))
    est = theorem_from_runs(runs, p)
    assert est.interval.contains(exact.term), (est.interval, exact.term)
    assert est.interval.low < est.term < est.interval.high


def test_err_plans_at_most_1500_hvps_at_its_defaults_at_any_d():
    # err's default settings without the Theorem terms (cli.err.err_settings): err/d of both forms from one
    # 1,280-step SLQ run, a top-1 run of at most 60 steps, the lower end (<= 150) and the deflation checks.
    settings = SpectrumSettings(top_k=1, diagonal="hutchinson")
    for dim in (2_410, 11_181_642, 7_000_000_000):
        assert planned_hvps(settings, dim) == 60 + 1 + 1_280 + 150 + 5 <= 1_500
    assert planned_hvps(settings, 854) == 60 + 1 + 854 + 150 + 5  # the steps capped at d
