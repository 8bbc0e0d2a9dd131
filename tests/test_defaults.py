"""wdbound.defaults: the one owner of every default the CLI, the API and the reports read."""

import math

import pytest

from wdbound import defaults


def test_spectrum_probes_hold_the_sampling_bound_within_the_caps():
    """The count is the fewest k with range / sqrt(2 d k) <= SPECTRUM_SAMPLING_TOL x range (clamped): checked
    against the bound itself, not the implementation's formula."""
    for dim in (10, 854, 2_410, 99_999, 150_000, 250_000, 11_000_000):
        k = defaults.spectrum_probes(dim)
        assert defaults.SPECTRUM_MIN_PROBES <= k <= defaults.SPECTRUM_PROBES
        meets = lambda j: 1 / math.sqrt(2 * (dim + 2) * j) <= defaults.SPECTRUM_SAMPLING_TOL  # noqa: E731
        if defaults.SPECTRUM_MIN_PROBES < k < defaults.SPECTRUM_PROBES:
            assert meets(k) and not meets(k - 1)
    assert [defaults.spectrum_probes(d) for d in (1_000, 10**5, 10**6, 10**7)] == sorted(
        [defaults.spectrum_probes(d) for d in (1_000, 10**5, 10**6, 10**7)], reverse=True)


@pytest.mark.parametrize("dim,diagonal,expected", [(2_410, "auto", 0), (30_000, "auto", 16 - 1),
                                                   (30_000, "exact", 0), (100, "hutchinson", 16 - 1)])
def test_q_diagonal_probes_fill_up_to_the_theorem_probes(dim, diagonal, expected):
    assert defaults.q_diagonal_probes(dim, 1, 16, diagonal) == expected
    assert defaults.q_diagonal_probes(dim, 40, 16, diagonal) == 0  # never negative


def test_api_and_cli_read_the_same_defaults():
    """The API's err() and Hessian.density() take their defaults from here, as the CLI's options do."""
    import inspect

    import wdbound
    from wdbound.cli.options import Opt

    err = inspect.signature(wdbound.err).parameters
    assert err["tau"].default == defaults.TAU == Opt.tau.default
    assert err["sigma_floor"].default == defaults.SIGMA_FLOOR == Opt.sigma_floor.default
    assert err["rho"].default is None and Opt.rho.default is None  # both: 1/sqrt(input dimension)
    assert inspect.signature(wdbound.Hessian.density).parameters["probes"].default == defaults.PROBES == Opt.probes.default
    assert inspect.signature(wdbound.Hessian.trace).parameters["method"].default == defaults.SPECTRUM_TRACE
    trace = inspect.signature(wdbound.Hessian.trace).parameters
    assert trace["rtol"].default == defaults.TRACE_RTOL  # the trace alone; `spectrum`'s own is looser:
    assert Opt.spectrum_trace_rtol.default == defaults.SPECTRUM_TRACE_RTOL > defaults.TRACE_RTOL
