"""train.py: deterministic training, the recorded facts, the weight-decay scaling rule and its errors."""

import pytest
import torch

from conftest import raises_param
from wdbound.train import TrainConfig, train

CONFIG = TrainConfig(model="digits-mlp", optimizer="adamw-d", epochs=1, lr=2e-3, wd=0.1, wd_gamma=0.99,
                     batch_size=128, arch_kwargs={"hidden": 4}, seed=3)


def test_training_is_deterministic_and_records_its_facts():
    model, contents = train(CONFIG)
    again, _ = train(CONFIG)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    facts = contents["train"]
    steps = -(-facts["n_train"] // 128)
    assert facts["steps"] == steps and facts["eta"] == 2e-3
    # -D variant: lambda_k = c1 * gamma^k at the last step k = steps - 1 (shared/SPEC.md).
    assert facts["lam"] == pytest.approx(0.1 * 0.99 ** (steps - 1), rel=1e-12)
    assert 0 <= contents["metrics"]["test_acc"] <= 1 and contents["metrics"]["test_loss"] > 0


def test_weight_decay_scaling_rule_and_bad_configs():
    from dataclasses import replace

    assert replace(CONFIG, wd_base_batch=64).weight_decay() == 0.1 * 128 / 64
    assert CONFIG.weight_decay() == 0.1
    with raises_param("scale_wd_with_batch"):
        replace(CONFIG, wd_base_batch=0).weight_decay()
    with raises_param("epochs"):
        train(replace(CONFIG, epochs=0))
    with raises_param("batch_size"):
        train(replace(CONFIG, batch_size=0))
    with raises_param("lr"):
        train(replace(CONFIG, optimizer="adamw", wd_gamma=None, lr=0.0))
