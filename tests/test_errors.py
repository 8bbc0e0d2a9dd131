"""wdbound.errors: one exception type naming the parameters that fix it."""

import pytest

from wdbound.errors import Interrupted, WdboundError, about, check_seed


def test_params_default_to_the_single_param_and_carry_through_about():
    single = WdboundError("eta = 0 must be > 0", "eta")
    assert single.params == ("eta",) and single.param == "eta"
    several = WdboundError("missing facts", "eta", ("eta", "lam", "n_train"))
    assert several.param == "eta" and several.params == ("eta", "lam", "n_train")
    labelled = about("run.pt", several)
    assert str(labelled) == "run.pt: missing facts" and labelled.params == several.params
    assert WdboundError("no parameter").params == ()


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "3"])
def test_check_seed_refuses_what_numpy_cannot_seed(seed):
    with pytest.raises(WdboundError, match="must be an integer in"):
        check_seed(seed)


def test_interrupted_exit_codes_are_the_shell_s():
    assert Interrupted(2).code == 130 and Interrupted(15).code == 143
    assert not isinstance(Interrupted(2), Exception)  # no `except Exception` swallows it
