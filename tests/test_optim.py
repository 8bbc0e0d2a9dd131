import math

import pytest
import torch

from wdbound.optim import AdamFamily, adam_direction, lr_at, make_optimizer


def _run(opt_factory, steps=5, seed=0):
    torch.manual_seed(seed)
    x = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    target = torch.randn(7, dtype=torch.float64)
    opt = opt_factory([x])
    for _ in range(steps):
        opt.zero_grad()
        ((x - target) ** 2 * torch.arange(1, 8)).sum().backward()
        opt.step()
    return x.detach()


def test_adamw_matches_torch_adamw():
    ours = _run(lambda p: make_optimizer("adamw", p, lr=0.05, wd=0.3))
    ref = _run(lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.3))
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_l2_adam_matches_torch_adam_with_weight_decay():
    ours = _run(lambda p: make_optimizer("l2-adam", p, lr=0.05, wd=0.3))
    ref = _run(lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.3))
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)


def _hand_adam(x, grads, lr, lam_of_k, coupled, b1=0.9, b2=0.999, eps=1e-8):
    """Scalar Adam written out from shared/SPEC.md, step by step."""
    m = v = 0.0
    for k, g in enumerate(grads):
        lam = lam_of_k(k)
        if coupled:
            g = g + lam * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        t = k + 1
        d = (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
        x = (x if coupled else (1 - lr * lam) * x) - lr * d
    return x


@pytest.mark.parametrize("name", ["adamw", "adamw-d", "l2-adam", "l2-adam-d"])
def test_every_optimizer_matches_a_hand_computed_update(name):
    c1, gamma, lr = 0.2, 0.5, 0.1
    grads = [1.0, -2.0, 0.5]
    p = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    opt = make_optimizer(name, [p], lr=lr, wd=c1, gamma=gamma)
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    decaying = name.endswith("-d")
    expected = _hand_adam(1.5, grads, lr, lambda k: c1 * gamma**k if decaying else c1, coupled=name.startswith("l2"))
    assert p.item() == pytest.approx(expected, rel=1e-12)
    assert opt.last_lam == pytest.approx(c1 * gamma**2 if decaying else c1)


def test_first_adamw_step_closed_form():
    # One step: m_hat = g, v_hat = g^2, so x1 = (1 - lr*lam) x0 - lr * g/(|g| + eps).
    p = torch.nn.Parameter(torch.tensor([2.0, -1.0], dtype=torch.float64))
    opt = AdamFamily([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.tensor([3.0, -4.0], dtype=torch.float64)
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([0.95 * 2 - 0.1 * 3 / (3 + 1e-8), 0.95 * -1 + 0.1 * 4 / (4 + 1e-8)],
                                                   dtype=torch.float64), rtol=1e-14)


def test_decaying_variant_requires_gamma():
    from wdbound import WdboundError

    with pytest.raises(WdboundError, match="--wd-gamma"):
        make_optimizer("adamw-d", [torch.nn.Parameter(torch.zeros(1))], lr=0.1, wd=0.1)


def test_adam_direction_is_the_next_step_direction():
    m, v = torch.tensor([0.3]), torch.tensor([0.04])
    d = adam_direction(m, v, step=2, betas=(0.9, 0.999), eps=1e-8)
    assert d.item() == pytest.approx((0.3 / 0.19) / (math.sqrt(0.04 / (1 - 0.999**2)) + 1e-8))


def test_schedules():
    assert lr_at(5, 10, schedule="constant", lr=0.1) == 0.1
    assert lr_at(0, 10, schedule="cosine", lr=0.1, lr_min=0.01) == pytest.approx(0.1)
    assert lr_at(5, 10, schedule="cosine", lr=0.1, lr_min=0.01) == pytest.approx(0.055)
    assert lr_at(9, 10, schedule="step", lr=0.1) == pytest.approx(0.001)
    assert lr_at(4, 10, schedule="step", lr=0.1) == pytest.approx(0.1)
