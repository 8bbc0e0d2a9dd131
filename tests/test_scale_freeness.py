"""Scale-freeness measured by two trainings (adamw_proximal_scale_freeness.txt, Sections 3 and 4.2)."""

import json

import pytest

from conftest import raises_param, run_cli
from wdbound.scale_freeness import drift
from wdbound.train import TrainConfig


def _config(optimizer, eps):
    return TrainConfig(model="digits-mlp", optimizer=optimizer, epochs=1, lr=1e-3, wd=5e-2, eps=eps, dtype="float64",
                       arch_kwargs={"hidden": 8})


@pytest.mark.parametrize("optimizer", ["adamw", "adamprox"])
def test_decoupled_rules_are_scale_free_as_eps_vanishes(optimizer):
    tiny, usual = drift(_config(optimizer, 1e-16), 1024.0), drift(_config(optimizer, 1e-8), 1024.0)
    assert tiny.scale_free and tiny.epochs[-1].relative < 1e-10
    # eps = 1e-8 is not negligible against sqrt(v_hat) of the small gradients: it breaks the invariance.
    assert usual.epochs[-1].relative > 1e3 * tiny.epochs[-1].relative


def test_l2_adam_is_not_scale_free():
    report = drift(_config("l2-adam", 1e-16), 1024.0)
    assert not report.scale_free and report.epochs[-1].relative > 1e-3


def test_per_coordinate_scaling_of_one_layer():
    report = drift(_config("adamw", 1e-16), 64.0, layer="1.weight")
    assert report.layer == "1.weight" and report.scale_free
    with raises_param("layer"):
        drift(_config("adamw", 1e-16), 64.0, layer="nope.weight")
    with raises_param("scale"):
        drift(_config("adamw", 1e-16), -1.0)


def test_scale_freeness_cli(tmp_path, capsys):
    out = tmp_path / "sf.json"
    code, stdout, err = run_cli(["scale-freeness", "--optimizer", "adamw,l2-adam", "--epochs", "1", "--eps", "1e-16",
                                 "--arch-kwarg", "hidden=8", "--json", out], capsys)
    assert code == 0, err
    runs = {r["optimizer"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["adamw"]["scale_free"] is True and runs["l2-adam"]["scale_free"] is False
    assert "scale-free here?" in stdout
    code, _, err = run_cli(["scale-freeness", "--optimizer", "sgd", "--json", tmp_path / "x.json"], capsys)
    assert code == 2 and "--optimizer" in err and not (tmp_path / "x.json").exists()
    code, _, err = run_cli(["scale-freeness", "--eps", "0", "--json", tmp_path / "x.json"], capsys)
    assert code == 2 and "--eps" in err
