"""wdbound.monitor: the preconditioned sharpness against a dense P^-1/2 H P^-1/2, records that never change
training (bit for bit), the schedules, JSON Lines and pandas."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import wdbound
from wdbound.errors import WdboundError
from wdbound.monitor import Monitor, preconditioner_scale


def _setup(seed=0):
    torch.manual_seed(seed)
    data = wdbound.load_dataset("digits", "test")
    x = torch.stack([data[i][0] for i in range(120)]).flatten(1)
    y = torch.tensor([data[i][1] for i in range(120)])
    model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))
    return model, x, y


def _train(model, optimizer, x, y, steps, monitor=None):
    model.train()
    for i in range(steps):
        optimizer.zero_grad()
        batch = slice(8 * i % 120, 8 * i % 120 + 32)
        loss = nn.functional.cross_entropy(nn.functional.dropout(model(x[batch]), 0.1), y[batch])
        loss.backward()
        optimizer.step()
        if monitor is not None:
            monitor.step()


@pytest.mark.parametrize("rule", ["torch-adamw", "torch-adam-l2", "adamw", "l2-adam", "adams", "adal"])
def test_preconditioned_sharpness_is_the_top_eigenvalue_of_the_dense_preconditioned_hessian(rule):
    model, x, y = _setup()
    if rule == "torch-adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    elif rule == "torch-adam-l2":
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=0.05)
    else:
        from wdbound.optim import make_optimizer

        optimizer = make_optimizer(rule, model.parameters(), lr=3e-3, wd=0.05)
    _train(model, optimizer, x, y, 6)
    monitor = Monitor(model, optimizer, (x, y), quantities=("sharpness", "preconditioned_sharpness"), top_k=2)
    record = monitor.record()
    H = wdbound.Hessian(model, (x, y), progress=False).dense()
    scale = preconditioner_scale(optimizer, model, [n for n, _ in model.named_parameters()]).numpy()
    # By hand: P = sqrt(v_hat) + eps from the optimizer's own state.
    state = optimizer.state[model[0].weight]
    beta2, eps = optimizer.param_groups[0]["betas"][1], optimizer.param_groups[0]["eps"]
    step = float(state["step"])
    by_hand = 1 / np.sqrt(np.sqrt(state["exp_avg_sq"].double().numpy().ravel() / (1 - beta2 ** step)) + eps)
    assert np.allclose(scale[: by_hand.size], by_hand, rtol=1e-12)
    exact = np.linalg.eigvalsh(scale[:, None] * H * scale[None, :])
    assert record.preconditioned_sharpness == pytest.approx(exact[-1], rel=1e-8)
    assert record.preconditioned_top[1] == pytest.approx(exact[-2], rel=1e-6)
    assert record.sharpness[0] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-8)
    assert all(b <= 1e-3 * abs(v) for v, b in zip(record.preconditioned_top, record.preconditioned_bound))


def test_recording_never_changes_training_bit_for_bit(tmp_path):
    """Two identical runs (dropout draws from the global RNG), one recording every step: the same parameters,
    optimizer state, gradients, mode and RNG state."""
    runs = []
    for monitored in (False, True):
        model, x, y = _setup(seed=3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        monitor = Monitor(model, optimizer, (x, y), every=1, path=tmp_path / "m.jsonl", budget=None,
                          quantities=("loss", "sharpness", "preconditioned_sharpness", "trace")) if monitored else None
        _train(model, optimizer, x, y, 5, monitor)
        runs.append((model, optimizer, torch.get_rng_state(), monitor))
    (plain, plain_opt, plain_rng, _), (watched, watched_opt, watched_rng, monitor) = runs
    assert watched.training and torch.equal(plain_rng, watched_rng)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    for a, b in zip(plain_opt.state.values(), watched_opt.state.values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5] == [r.step for r in monitor.records]
    assert all(r["hvps"] <= r["planned_hvps"] and r["trace_stderr"] >= 0 for r in lines)
    frame = monitor.to_pandas()
    assert len(frame) == 5 and frame["lambda_max"].tolist() == [r.sharpness[0] for r in monitor.records]


def test_schedules_loss_and_bad_input():
    model, x, y = _setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    log = Monitor(model, optimizer, (x, y), schedule="log", quantities=("loss",))
    assert [s for s in range(1, 20) if log.due(s)] == [1, 2, 4, 8, 16]
    record = log.record()
    assert record.loss == pytest.approx(float(nn.functional.cross_entropy(model(x).double(), y)), rel=1e-6)
    assert log.epoch_end().epoch == 0 and log.epoch_end(7).epoch == 7
    with pytest.raises(WdboundError, match="record after the optimizer's first step"):
        Monitor(model, optimizer, (x, y), quantities=("preconditioned_sharpness",)).record()
    with pytest.raises(WdboundError, match="unknown quantities"):
        Monitor(model, optimizer, (x, y), quantities=("hessian",))
    with pytest.raises(WdboundError, match="every = 0"):
        Monitor(model, optimizer, (x, y), every=0)
    with pytest.raises(WdboundError, match="budget = -1"):
        Monitor(model, optimizer, (x, y), budget=-1)
    with pytest.raises(WdboundError, match="updates needs the optimizer"):
        Monitor(model, None, (x, y), quantities=("updates",))
    assert Monitor(model, None, (x, y)).quantities == ("loss", "accuracy", "sharpness")  # the defaults it can
    epochs = Monitor(model, optimizer, (x, y), schedule="epochs", quantities=("loss",))
    assert not any(epochs.due(s) for s in range(1, 100))


class _Clock:
    """A fake ``time.perf_counter``: training steps and records take the seconds the test says."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_budget_holds_records_back_until_they_fit(monkeypatch):
    """Every step trains 1 s; a record takes 3 s of (fake) time per call of the clock inside it. With a budget
    of 10 %, a record every step cannot all be taken: each waits until 10 % of the training time covers it,
    and the share of time in records stays within the budget after the first."""
    import wdbound.monitor as monitor_module

    clock = _Clock()
    monkeypatch.setattr(monitor_module.time, "perf_counter", clock)
    model, x, y = _setup()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    monitor = Monitor(model, optimizer, (x, y), every=1, quantities=("loss", "sharpness"), budget=0.1)
    measure = monitor._measure

    def slow_measure(due_step):
        clock.now += 3.0
        return measure(due_step)

    monkeypatch.setattr(monitor, "_measure", slow_measure)
    taken = []
    for step in range(1, 201):
        clock.now += 1.0  # one training step
        if monitor.step() is not None:
            taken.append(step)
    assert taken[0] == 2  # the first waits for training time to pay for it (its forward-based estimate)
    assert 5 <= len(taken) <= 8  # ~ 0.1 x 200 s of training / 3 s a record
    assert monitor.overhead() <= 0.1 + 3.0 / monitor.train_seconds
    assert monitor.train_seconds == pytest.approx(199.0)  # the steps' time, the records' time left out
    late = [r for r in monitor.records if r.due_step is not None]
    assert late and all(r.due_step < r.step for r in late)  # held back from the step that asked for it
    unbounded = Monitor(model, optimizer, (x, y), every=50, quantities=("loss",), budget=None)
    assert [s for s in range(1, 201) if unbounded.step() is not None] == [50, 100, 150, 200]


def test_the_budget_caps_the_lanczos_steps_of_a_record_it_can_pay_only_in_part(monkeypatch):
    """A record whose HVPs the budget left pays for only in part runs its Lanczos with fewer steps (at least
    10) and says so (``step_cap``); each Ritz value stays below lambda_max and within its residual bound of
    an eigenvalue of the dense Hessian (which one is known only once converged)."""
    model, x, y = _setup()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, optimizer, x, y, 2)
    monitor = Monitor(model, optimizer, (x, y), every=1, quantities=("sharpness",), budget=0.1)
    monitor.train_seconds, monitor._first_seconds_per_hvp = 1.0, 0.1 / 12  # the budget pays for 12 HVPs
    assert monitor.affordable() and monitor.planned_hvps() == 12
    record = monitor.record()
    assert record.step_cap == 12 and record.hvps <= 12
    exact = np.linalg.eigvalsh(wdbound.Hessian(model, (x, y), progress=False).dense())
    assert max(record.sharpness) <= exact[-1] + 1e-12
    assert all(np.min(np.abs(exact - v)) <= b + 1e-12 for v, b in zip(record.sharpness, record.sharpness_bound))
    monitor.record_seconds = 0.1  # spent: nothing left for 10 steps
    assert not monitor.affordable()


def test_accuracy_and_update_histograms():
    from wdbound.updates import UpdateRecorder

    model, x, y = _setup()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, optimizer, x, y, 3)
    record = Monitor(model, optimizer, (x, y), quantities=("accuracy", "updates")).record()
    model.eval()
    assert record.accuracy == pytest.approx(float((model(x).argmax(1) == y).double().mean()), abs=1e-12)
    assert record.updates == UpdateRecorder(optimizer, model).current()
    assert sum(sum(c) for c in record.updates.values()) == sum(p.numel() for p in model.parameters())
    assert record.hvps == 0 and "accuracy" in record.scalars()


def test_err_over_training_equals_wdbound_err_at_the_optimizer_s_last_step():
    """err/d of both forms in a record is wdbound.err on the same Hessian with the last step's eta and lambda
    (AdaL: alpha / sqrt(t), read off wdbound's optimizer), exact below 10,000 parameters."""
    from wdbound.monitor import last_eta_lam
    from wdbound.optim import make_optimizer

    model, x, y = _setup()
    optimizer = make_optimizer("adal", model.parameters(), lr=3e-3, wd=0.05)
    _train(model, optimizer, x, y, 4)
    assert last_eta_lam(optimizer) == pytest.approx((3e-3 / 2, 0.05))  # the 4th step: alpha / sqrt(4)
    with pytest.raises(WdboundError, match="minibatch size and training-set size"):
        Monitor(model, optimizer, (x, y), quantities=("err",))
    record = Monitor(model, optimizer, (x, y), quantities=("err",), batch_size_train=32, n_train=1437).record()
    direct = wdbound.err(wdbound.Hessian(model, (x, y), progress=False), eta=3e-3 / 2, lam=0.05, b=32, n=1437)
    for form in ("adamw", "l2-adam"):
        assert record.err_mean[form] == pytest.approx(direct[form].err_mean, rel=1e-12)
        low, high = record.err_interval[form]
        assert low == high == pytest.approx(direct[form].err_mean, rel=1e-12)  # exact: a point
    assert record.err_inputs["method"] == "exact" and record.err_inputs["rho"] == pytest.approx(0.125)
    assert record.hvps <= record.planned_hvps
    torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.02)
    assert last_eta_lam(torch_opt) == (1e-3, 0.02)
