"""spectrum.py: the estimator pipeline against a dense matrix, the caching wrapper, settings and outputs."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import raises_param
from wdbound.cache import Cache
from wdbound.checkpoints import load_checkpoint
from wdbound.curvature import DenseOperator
from wdbound.spectrum import (SpectrumSettings, compute_spectrum, estimate_spectrum, expected_hvps, loss_function,
                              per_layer_json, per_layer_spectra, resolve_exact, write_spectrum_json)


def _matrix(dim=60, zeros=(3, 17, 40), seed=0):
    """A symmetric matrix with a spread spectrum, a few negative eigenvalues and exactly-zero rows."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    values = np.concatenate([-np.geomspace(1e-2, 0.5, 4), np.geomspace(1e-4, 50.0, dim - 4)])
    matrix = basis @ np.diag(values) @ basis.T
    keep = np.setdiff1d(np.arange(dim), zeros)
    out = np.zeros_like(matrix)
    out[np.ix_(keep, keep)] = matrix[np.ix_(keep, keep)]
    return torch.from_numpy(out)


def test_estimate_spectrum_against_the_dense_matrix():
    matrix = _matrix()
    exact = torch.linalg.eigvalsh(matrix).numpy()
    operator = DenseOperator(matrix)
    settings = SpectrumSettings(probes=8, steps=40, top_k=3)
    result = estimate_spectrum(operator, settings)
    # Top-k by Lanczos: converged Ritz values agree with eigvalsh to rounding.
    np.testing.assert_allclose(result.top.values, exact[::-1][:3], rtol=1e-8)
    assert result.top.converged
    # The three zero rows are found and deflated as exact zero eigenvalues.
    assert result.zero_rows.tolist() == [3, 17, 40] and result.slq.null_weight == 3
    # Hutchinson from the SLQ probes: within 4 standard errors of the exact trace.
    assert abs(result.trace.estimate - exact.sum()) <= 4 * result.trace.stderr
    # The support brackets the whole spectrum (the top end is a converged Ritz value: equal to rounding).
    low, high = result.support.bounds()
    assert low <= exact.min() and high >= exact.max() * (1 - 1e-12) and result.negative_mass > 0
    assert operator.matvecs == result.hvps <= expected_hvps(settings, 60)


def test_exact_spectrum_reads_top_trace_and_ends_off_the_dense_matrix():
    """With the dense matrix the top-k, trace, diagonal and ends are exact and no Lanczos run is spent on
    them: d columns, the zero-row and logit-shift checks and the SLQ cross-check are all the HVPs."""
    matrix = _matrix()
    exact = torch.linalg.eigvalsh(matrix).numpy()
    operator = DenseOperator(matrix)
    settings = SpectrumSettings(probes=2, steps=40, top_k=3, exact=True)
    result = estimate_spectrum(operator, settings)
    np.testing.assert_allclose(result.top.values, exact[::-1][:3], rtol=1e-13)
    assert result.top.converged and result.top.steps == 0 and result.provenance["top_from"] == "dense Hessian"
    assert result.trace.method == "exact" and result.trace.stderr == 0
    assert abs(result.trace.estimate - np.trace(matrix.numpy())) <= 1e-12 * abs(exact).sum()
    np.testing.assert_allclose(result.exact_eigenvalues, exact, atol=1e-12)
    np.testing.assert_allclose(result.exact_diagonal, np.diag(matrix.numpy()), atol=0)
    assert result.diagonal.probes == 0 and not result.diagonal.stderr.any()
    low, high = result.support.bounds()
    assert low <= exact.min() and high >= exact.max() and high - exact.max() <= 1e-10
    assert result.zero_rows.tolist() == [3, 17, 40] and result.slq.null_weight == 3
    assert operator.matvecs == result.hvps <= expected_hvps(settings, 60) <= 60 + 5 + 2 * 40
    assert result.hvps >= 60 + 2 * 40


def test_estimate_spectrum_exact_diagonal_without_dense_matrix():
    matrix = _matrix(seed=1)
    result = estimate_spectrum(DenseOperator(matrix), SpectrumSettings(probes=4, steps=20, top_k=1,
                                                                       diagonal="exact"))
    assert result.exact_eigenvalues is None
    np.testing.assert_allclose(result.exact_diagonal, np.diag(matrix.numpy()), atol=1e-14)
    # The Hutchinson diagonal is unbiased: every entry within 5 stderr (exactly 0 on the zero rows).
    diag = result.diagonal
    assert np.all(np.abs(diag.estimate - np.diag(matrix.numpy())) <= 5 * diag.stderr + 1e-12)
    assert np.all(diag.estimate[[3, 17, 40]] == 0)


def test_compute_spectrum_caches_and_writes_json(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint, dtype=torch.float64)
    settings = SpectrumSettings(max_samples=80, probes=3, steps=12, top_k=2, device="cpu", diagonal="hutchinson")
    cache = Cache(tmp_path / "cache")
    first = compute_spectrum(ckpt, settings, cache=cache)
    again = compute_spectrum(ckpt, settings, cache=cache)
    assert not first.cached and again.cached and first.hvps > 0
    np.testing.assert_array_equal(first.slq.alphas, again.slq.alphas)
    assert again.trace.estimate == first.trace.estimate
    assert json.dumps(again.provenance, sort_keys=True) == json.dumps(first.provenance, sort_keys=True)
    assert first.provenance["checkpoint_sha256"] == ckpt.sha256 and first.provenance["data"] == "digits"
    json_path, diag_path = write_spectrum_json(first, tmp_path / "out" / "s.json")
    data = json.loads(json_path.read_text())
    assert data["d"] == first.d and data["diagonal"]["path"] == str(diag_path)
    stacked = np.load(diag_path)
    assert stacked.shape == (2, first.d) and np.array_equal(stacked[0], first.diagonal.estimate)
    layers = per_layer_spectra(ckpt, SpectrumSettings(max_samples=80, probes=2, steps=8, top_k=1, device="cpu", diagonal="hutchinson",
                                                      params=("1.*",)))
    assert [layer.name for layer in layers] == ["1.weight", "1.bias"] or all(l.name.startswith("1") for l in layers)
    out = per_layer_json(ckpt, settings, layers)
    assert [entry["name"] for entry in out["layers"]] == [layer.name for layer in layers]
    assert sum(entry["d"] for entry in out["layers"]) == sum(layer.spectrum.d for layer in layers)


def test_settings_and_modes():
    assert resolve_exact("auto", 10_000) and not resolve_exact("auto", 10_001)
    assert resolve_exact("on", 10**6) and not resolve_exact("off", 5) and resolve_exact(True, 5)
    with raises_param("exact"):
        resolve_exact("maybe", 5)
    for bad in (dict(probes=0), dict(steps=0), dict(rtol=1.0), dict(diagonal="x"), dict(lanczos="x"),
                dict(loss="hinge"), dict(backend="x")):
        with raises_param(next(iter(bad))):
            SpectrumSettings(**bad).validate()
    assert SpectrumSettings(max_hvps=7).refine_cap() == 7 and SpectrumSettings(probes=2, steps=3).refine_cap() == 0
    assert loss_function("cross-entropy") is None
    logits, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    smoothed = loss_function("label-smoothing:0.1")(logits, labels)
    expected = -(0.95 * math.log(math.exp(2) / (math.exp(2) + 1)) + 0.05 * math.log(1 / (math.exp(2) + 1)))
    assert float(smoothed) == pytest.approx(expected)
    assert float(loss_function("mse")(logits, labels)) == pytest.approx(((2 - 1) ** 2 + 0) / 2)


def test_spectrum_command_defaults_deflated_trace_without_ends():
    from wdbound.spectrum import spectrum_command_settings

    from wdbound import defaults

    settings = spectrum_command_settings(top_k=3)
    assert (settings.probes, settings.steps, settings.dtype, settings.trace, settings.ends, settings.top_k) == (
        None, 40, "float32", "deflated", False, 3)  # probes: from the dimension when the operator is known
    assert settings.for_dim(2_000).probes == defaults.SPECTRUM_PROBES
    assert settings.for_dim(11_000_000).probes == defaults.SPECTRUM_MIN_PROBES
    assert settings.for_dim(2_000).for_dim(11_000_000).probes == defaults.SPECTRUM_PROBES  # fixed once
    assert settings.single_pass and settings.density_tol == defaults.SPECTRUM_DENSITY_TOL > 0
    assert SpectrumSettings().probes == defaults.PROBES and not SpectrumSettings().single_pass  # err's own
    matrix = _matrix(seed=2)
    exact = torch.linalg.eigvalsh(matrix).numpy()
    operator = DenseOperator(matrix)
    result = estimate_spectrum(operator, SpectrumSettings(probes=4, steps=30, top_k=3, trace="deflated",
                                                          ends=False))
    assert result.support is None and result.trace.method == "krylov-deflated hutchinson"
    assert result.top.steps >= 40  # the deflated trace's span had its minimum of steps
    assert result.top.span is None  # ... and is released once the spectrum is built (err's Theorem runs follow)
    assert abs(result.trace.estimate - exact.sum()) <= 4 * result.trace.stderr
    assert operator.matvecs == result.hvps <= expected_hvps(
        SpectrumSettings(probes=4, steps=30, top_k=3, trace="deflated", ends=False), 60)
    with raises_param("trace"):
        SpectrumSettings(trace="exact").validate()
    with raises_param("trace_probes"):
        SpectrumSettings(trace_probes=1).validate()


def test_single_pass_against_the_dense_matrix():
    """Top-k, trace and density from the SLQ probes alone: top-k within the certified residuals of the exact
    eigenvalues, the deflated trace within 4 stderr, no separate Lanczos run, and fewer HVPs than the
    two-run pipeline at the same probes and steps."""
    matrix = _matrix(dim=120, seed=3)
    exact = torch.linalg.eigvalsh(matrix).numpy()
    settings = SpectrumSettings(probes=4, steps=30, top_k=3, single_pass=True, density_tol=1e-3, trace="deflated",
                                ends=False, diagonal="hutchinson")
    operator = DenseOperator(matrix)
    result = estimate_spectrum(operator, settings)
    assert result.provenance["top_from"] == "slq union" and result.top.converged
    for value, residual, truth in zip(result.top.values, result.top.residuals, exact[::-1]):
        assert abs(value - truth) <= residual + 1e-12 and residual <= 1e-4 * abs(value)
    assert abs(result.trace.estimate - exact.sum()) <= 4 * result.trace.stderr
    assert result.slq.rule == "union" and result.zero_rows.tolist() == [3, 17, 40]
    record = result.provenance["single_pass"]
    assert record["steps"] == result.slq.alphas.shape[1] <= 30 and record["checks"][-1]["steps"] == record["steps"]
    two_runs = estimate_spectrum(DenseOperator(matrix), replace(settings, single_pass=False))
    assert result.hvps < two_runs.hvps and operator.matvecs == result.hvps <= expected_hvps(settings, 120)


def test_single_pass_falls_back_to_a_lanczos_run_when_the_union_cannot_certify():
    matrix = _matrix(dim=120, seed=4)
    exact = torch.linalg.eigvalsh(matrix).numpy()
    settings = SpectrumSettings(probes=2, steps=3, top_k=3, single_pass=True, top_rtol=1e-9, trace="deflated")
    result = estimate_spectrum(DenseOperator(matrix), settings)
    assert result.provenance["top_from"] == "lanczos" and not result.provenance["single_pass"]["top_certified"]
    np.testing.assert_allclose(result.top.values, exact[::-1][:3], rtol=1e-8)


def test_single_pass_on_a_network_against_its_exact_hessian(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    settings = SpectrumSettings(probes=4, steps=40, top_k=5, single_pass=True, density_tol=5e-4, trace="deflated",
                                ends=False, diagonal="hutchinson", dtype="float32", max_samples=200)
    result = compute_spectrum(ckpt, settings)
    exact = compute_spectrum(ckpt, replace(settings, exact=True, dtype="float64")).exact_eigenvalues
    assert result.top.converged and result.provenance["kept_graph"]
    # The logit-shift check without a lambda_max estimate yet (|Hg|/|g| as the scale): found all the same.
    assert result.shift_directions == 17 and not result.provenance["hvp_fallback"]
    np.testing.assert_allclose(result.top.values, exact[::-1][:5], rtol=2e-4)  # float32 HVPs, 1e-4 certificates
    assert abs(result.trace.estimate - exact.sum()) <= 4 * result.trace.stderr + 1e-5 * abs(exact.sum())
    from wdbound.stats import wasserstein1

    nodes, weights = result.slq.measure()
    assert wasserstein1(nodes, weights, exact, np.ones_like(exact)) <= 5e-3 * exact.max()


def test_the_union_rule_survives_the_cache(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    settings = SpectrumSettings(probes=3, steps=10, top_k=2, single_pass=True, trace="deflated", max_samples=100)
    cache = Cache()
    fresh = compute_spectrum(ckpt, settings, cache=cache)
    again = compute_spectrum(ckpt, settings, cache=cache)
    assert again.cached and again.slq.rule == "union"
    for a, b in zip(fresh.slq.measure(), again.slq.measure()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("field, value, param", [("top_rtol", 0.0, "top_rtol"), ("density_tol", 1.0, "density_tol"),
                                                 ("density_tol", math.nan, "density_tol")])
def test_single_pass_settings_are_checked(field, value, param):
    with raises_param(param):
        SpectrumSettings(**{field: value}).validate()


def test_resolved_negative_mass_against_the_exact_spectrum():
    """A dense matrix whose negative eigenvalues are well separated from 0 (-0.5 .. -0.05, lambda_max 50):
    the resolved negative mass (below -1e-3 x lambda_max) is within SLQ's sampling error of the exact share."""
    rng = np.random.default_rng(5)
    dim = 200
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    values = np.concatenate([-np.linspace(0.05, 0.5, 40), np.geomspace(1e-2, 50.0, dim - 40)])
    matrix = torch.from_numpy(basis @ np.diag(values) @ basis.T)
    settings = SpectrumSettings(probes=16, steps=40, top_k=1, single_pass=True, trace="deflated")
    result = estimate_spectrum(DenseOperator(matrix), settings)
    assert result.resolved_negative_mass == pytest.approx(40 / dim, abs=0.05)
    payload = result.to_json()["resolved_negative_mass"]
    assert payload["mass"] == result.resolved_negative_mass and payload["below"] == pytest.approx(-0.05, rel=1e-6)


def test_the_single_pass_takes_room_from_the_probe_block(monkeypatch):
    """When the single pass's basis does not fit all its steps beside a block of 5 vmapped probes (whose HVP
    pass holds 5 sets of activations), the plan narrows the block to 1 probe if that fits more steps; it never
    narrows it for nothing. Activations are made to dominate (as on ResNet-18) by a large per-example count."""
    import wdbound.spectrum as spectrum
    from wdbound.curvature import HessianOperator
    from wdbound.data import load_dataset
    from wdbound.memory import plan_memory, with_single_pass
    from wdbound.spectrum import memory_plan, spectrum_command_settings

    monkeypatch.setattr("wdbound.memory.current_bytes", lambda device: 0)
    monkeypatch.setattr(spectrum, "activation_floats", lambda model, example: 20_000)
    monkeypatch.setattr(spectrum, "kept_graph_size", lambda operator, activation=None: 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    data = load_dataset("digits", "test")
    settings = spectrum_command_settings(probes=5, steps=40)
    narrowed = 0
    for megabytes in range(20, 400, 5):
        op = HessianOperator(model, data, dtype=torch.float32)
        try:
            chosen = memory_plan(op, replace(settings, memory=f"{megabytes}MB"))
        except Exception:  # too tight for anything
            continue

        def steps_with(block: int) -> int:
            base = plan_memory(dim=op.dim, probes=5, steps=40, top_k=5, hvp_bytes=4, example_floats=64,
                               activation_per_example=20_000, n_eval=op.n_eval, data_resident=op.resident,
                               hvp_chunk=op.batch_size, probe_chunk=block, budget=megabytes * 10**6,
                               budget_source="test", mode="auto", trace_vectors=spectrum.TRACE_WORK_VECTORS)
            return with_single_pass(base, dim=op.dim, probes=5, steps=40,
                                    trace_vectors=spectrum.TRACE_WORK_VECTORS).single_pass_steps or 0

        wide, got = steps_with(5), chosen.single_pass_steps or 0
        if got != wide:  # narrowed: only for more steps, only when the wide block did not fit them all
            assert got > wide and wide < 40 and chosen.probe_block == op.probe_chunk == 1 and got == steps_with(1)
            narrowed += got == 40
        else:
            assert wide == 40 or steps_with(1) <= wide
    assert narrowed  # some budget fits all 40 steps only with a block of 1


def test_the_single_pass_comes_before_a_kept_graph_at_every_probe_block(monkeypatch):
    """A block of 1 frees activations, and the planner may give them to a kept gradient graph; the single pass
    still comes first (on ResNet-18 with 256 images, a graph on the narrowed block left it no room, and the
    slow two-run path ran). Sizes are chosen so that the graph takes what the narrowing frees; the budgets
    where only the narrowed block fits a single pass, and only without its graph, come from the pure planner;
    the whole plan is then asked at each."""
    import wdbound.memory as memory
    import wdbound.spectrum as spectrum
    from wdbound.curvature import HessianOperator
    from wdbound.data import load_dataset
    from wdbound.memory import plan_memory, with_single_pass
    from wdbound.spectrum import memory_plan, spectrum_command_settings

    # As on an 11 M-parameter model: the SLQ basis is never kept whole (its cap is 4 GiB there), so the plan
    # is a low-memory one whose phases are far smaller than the single pass's bases.
    monkeypatch.setattr(memory, "FULL_BASIS_MAX_BYTES", 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    data = load_dataset("digits", "test")
    op = HessianOperator(model, data, dtype=torch.float32)
    single = dict(dim=op.dim, probes=5, steps=40, trace_vectors=spectrum.TRACE_WORK_VECTORS)

    def planned(block: int, kept: int, budget: int):
        return plan_memory(dim=op.dim, probes=5, steps=40, top_k=5, hvp_bytes=4, example_floats=64,
                           activation_per_example=20_000, n_eval=op.n_eval, data_resident=op.resident,
                           hvp_chunk=op.batch_size, probe_chunk=block, budget=budget, budget_source="test",
                           mode="auto", trace_vectors=spectrum.TRACE_WORK_VECTORS, graph=kept)

    def steps(plan) -> int:
        return with_single_pass(plan, **single).single_pass_steps or 0

    wide_fixed = planned(2, 0, 10**12).fixed
    graph = wide_fixed - planned(1, 0, 10**12).fixed - 5 * 10**5  # about what a block of 1 frees
    monkeypatch.setattr("wdbound.memory.current_bytes", lambda device: 0)
    monkeypatch.setattr(spectrum, "activation_floats", lambda model, example: 20_000)
    monkeypatch.setattr(spectrum, "kept_graph_size", lambda operator, activation=None: graph)
    crowded = []
    for budget in range(wide_fixed, wide_fixed + 10 * 10**6, 10_000):
        wide, narrow = planned(2, graph, budget), planned(1, graph, budget)
        if (wide.probe_block == 2 and not steps(replace(wide, graph=0)) and narrow.keep_graph
                and not steps(narrow) and steps(replace(narrow, graph=0))):
            crowded.append(budget)
    assert crowded  # the planner meets the case the rule is for
    settings = spectrum_command_settings(probes=5, steps=40, lanczos="auto")
    for budget in crowded[:: max(1, len(crowded) // 5)]:
        op = HessianOperator(model, data, dtype=torch.float32)
        chosen = memory_plan(op, replace(settings, memory=f"{budget}B"))
        assert chosen.single_pass_steps and not chosen.keep_graph and chosen.probe_block == 1


def test_spectrum_to_pandas_is_what_the_command_prints():
    """The summary frame's rows are the spectrum's own figures (top-k with its bounds, trace, zero rows)."""
    H = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64))
    result = estimate_spectrum(DenseOperator(H), SpectrumSettings(probes=2, steps=6, top_k=2, exact=True))
    frame = result.to_pandas().set_index("quantity")
    assert frame.loc["lambda_1", "value"] == pytest.approx(3.0) and frame.loc["lambda_2", "value"] == pytest.approx(2.0)
    assert frame.loc["trace", "value"] == pytest.approx(6.5) and frame.loc["exact trace", "value"] == pytest.approx(6.5)
    assert frame.loc["lambda_1", "kind"] == "exact"


def test_top_one_beside_a_long_density_run_comes_from_the_sharper_of_the_two():
    # Evenly spaced eigenvalues: the top one has a relative gap of 1/600, so a 60-step top-1 run cannot certify
    # it (bound ~6e-3); the 500-step density run that follows does, and its value replaces the run's.
    rng = np.random.default_rng(0)
    dim = 600
    values = np.linspace(0.0, 10.0, dim)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    operator = DenseOperator(torch.from_numpy(basis @ np.diag(values) @ basis.T))
    settings = SpectrumSettings(probes=1, steps=500, top_k=1, diagonal="hutchinson")
    result = estimate_spectrum(operator, settings)
    assert result.provenance["top_from"] == "density run" and result.top.converged
    assert abs(result.top.values[0] - 10.0) <= result.top.bounds[0] + 1e-12 and result.top.bounds[0] < 1e-9
    assert result.support.high >= 10.0 - 1e-12
    # The plan counts the 60-step top-1 run, not 300 steps; what ran stays within it.
    assert result.hvps <= expected_hvps(settings, dim) == 60 + 1 + 150 + 5 + 500
    # Top-k (k > 1) keeps its own run of up to 300 steps: one density probe repeats converged eigenvalues.
    assert expected_hvps(replace(settings, top_k=5), dim) == 300 + 1 + 150 + 5 + 500
