import math

import pytest
import torch

from conftest import raises_param
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

    with raises_param("wd_gamma"):
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


def _hand_vector_adam(xs, grad_fn, steps, lr, lam, rule, b1=0.9, b2=0.999, eps=1e-8, norm="global"):
    """AdamProx / AdamS / AdaL written out with Python floats over a list of 'tensors' (lists of scalars),
    from shared/SPEC.md and the papers' algorithms, independently of wdbound.optim."""
    xs = [list(x) for x in xs]
    ms = [[0.0] * len(x) for x in xs]
    vs = [[0.0] * len(x) for x in xs]
    for k in range(steps):
        t = k + 1
        gs = grad_fn(xs)
        if rule == "adal":
            gs = [[g + lam * xi for g, xi in zip(gv, xv)] for gv, xv in zip(gs, xs)]
            if norm == "global":
                total = sum(abs(g) for gv in gs for g in gv)
                gs = [[total * g for g in gv] for gv in gs]
            else:
                gs = [[sum(abs(h) for h in gv) * g for g in gv] for gv in gs]
        dirs, vhat_all = [], []
        for i, gv in enumerate(gs):
            d = []
            for j, g in enumerate(gv):
                ms[i][j] = b1 * ms[i][j] + (1 - b1) * g
                vs[i][j] = b2 * vs[i][j] + (1 - b2) * g * g
                mh, vh = ms[i][j] / (1 - b1**t), vs[i][j] / (1 - b2**t)
                vhat_all.append(vh)
                d.append(mh / (math.sqrt(vh) + eps))
            dirs.append(d)
        if rule == "proximal":
            xs = [[(x - lr * d) / (1 + lr * lam) for x, d in zip(xv, dv)] for xv, dv in zip(xs, dirs)]
        elif rule == "stable":
            decay = lr * lam / math.sqrt(sum(vhat_all) / len(vhat_all))
            xs = [[(1 - decay) * x - lr * d for x, d in zip(xv, dv)] for xv, dv in zip(xs, dirs)]
        else:  # adal: step size lr / sqrt(t)
            xs = [[x - lr / math.sqrt(t) * d for x, d in zip(xv, dv)] for xv, dv in zip(xs, dirs)]
    return xs


@pytest.mark.parametrize("name, rule", [("adamprox", "proximal"), ("adams", "stable"), ("adal", "adal")])
@pytest.mark.parametrize("steps", [1, 6])
def test_new_optimizers_match_hand_computation(name, rule, steps):
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    start = [a.detach().tolist(), b.detach().tolist()]
    weights = [[1.0, 2.0, 3.0], [0.5, 4.0]]

    def grad_fn(xs):  # gradient of sum_i w_i x_i^2 / 2
        return [[w * x for w, x in zip(wv, xv)] for wv, xv in zip(weights, xs)]

    opt = make_optimizer(name, [a, b], lr=0.05, wd=0.3)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum((torch.tensor(w, dtype=torch.float64) * p**2).sum() / 2 for w, p in zip(weights, (a, b)))
        loss.backward()
        opt.step()
    expected = _hand_vector_adam(start, grad_fn, steps, 0.05, 0.3, rule)
    assert a.detach().tolist() == pytest.approx(expected[0], rel=1e-12, abs=1e-14)
    assert b.detach().tolist() == pytest.approx(expected[1], rel=1e-12, abs=1e-14)


def test_adal_per_tensor_norm_and_recorded_step_size():
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    start = [a.detach().tolist(), b.detach().tolist()]
    opt = make_optimizer("adal", [a, b], lr=0.1, wd=0.0, adal_norm="tensor")
    for _ in range(3):
        opt.zero_grad()
        ((a**2).sum() / 2 + (b**2).sum() / 2).backward()
        opt.step()
    expected = _hand_vector_adam(start, lambda xs: [list(x) for x in xs], 3, 0.1, 0.0, "adal", norm="tensor")
    assert a.detach().tolist() == pytest.approx(expected[0], rel=1e-12)
    assert opt.last_lr == pytest.approx(0.1 / math.sqrt(3))


def test_adams_records_its_effective_decay():
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = make_optimizer("adams", [p], lr=0.01, wd=0.2)
    p.grad = torch.full((5,), 0.5, dtype=torch.float64)
    opt.step()
    # After one step v_hat = g^2 = 0.25 everywhere: lambda_eff = 0.2 / sqrt(0.25) = 0.4.
    assert opt.last_lam == pytest.approx(0.4) and opt.last_lam_nominal == 0.2


def test_families_of_the_new_optimizers():
    from wdbound.optim import optimizer_spec

    assert [optimizer_spec(n).family for n in ("adamprox", "adams", "adal")] == ["adamw", "adamw", "l2-adam"]


def test_bound_form_of_every_optimizer():
    from wdbound.optim import bound_form

    assert [bound_form(n) for n in ("adamw", "adamw-d", "adamprox", "adams")] == ["adamw"] * 4
    assert [bound_form(n) for n in ("l2-adam", "l2-adam-d", "adal")] == ["l2-adam"] * 3
    assert bound_form("sgd") is None
