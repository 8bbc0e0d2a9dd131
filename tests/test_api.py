"""wdbound.Hessian and wdbound.err on a model class of the test's own, against torch.func.hessian."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from conftest import raises_param
import wdbound
from wdbound import defaults
from wdbound import WdboundError


class Net(nn.Module):
    """Not in wdbound's registry."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 5))

    def forward(self, x):
        return self.body(x)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = Net()
    x, y = torch.randn(80, 6), torch.randint(0, 5, (80,))
    return model, x, y


def _dense(model, x, y, loss):
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(v):
        tensors, start = {}, 0
        for n, s in zip(names, shapes):
            tensors[n] = v[start:start + s.numel()].view(s)
            start += s.numel()
        return loss(functional_call(model, tensors, (x.double(),)), y)

    return hessian(f)(flat)


@pytest.mark.parametrize("loss", [None, nn.CrossEntropyLoss(label_smoothing=0.1)])
def test_hessian_against_torch_func(loss):
    model, x, y = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    H = wdbound.Hessian(model, (x, y), loss)
    dense = _dense(_copy(model, before), x, y, loss or nn.functional.cross_entropy)
    ev = torch.linalg.eigvalsh(dense).numpy()
    top = H.top_eigenvalues(3)
    assert np.allclose(top.values, ev[::-1][:3], rtol=1e-8)
    exact = H.exact()
    assert np.allclose(exact.eigenvalues, ev, atol=1e-10 * abs(ev).max())
    trace = H.trace(probes=64)
    assert abs(trace.estimate - ev.sum()) <= 4 * trace.stderr
    density = H.density(probes=8, steps=40)
    nodes, weights = density.slq.measure()
    assert weights.sum() == pytest.approx(1.0) and density.support.low <= ev.min() and density.support.high >= ev.max()
    # The model is left as it was (mode, dtype, values).
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_density_of_a_run_that_spans_the_space_is_the_exact_spectrum():
    """The default density (one probe, at most 1,280 steps, here all d = 149) after the zero rows and the
    logit-shift directions are deflated: the probe's Krylov space fills the rest, so the measure is every
    eigenvalue once with mass 1/d, not the probe's random weights on them; its W1 from torch.func's spectrum is
    rounding only (the probe's weights alone are ~1e-3 λmax away)."""
    from scipy.stats import wasserstein_distance

    model, x, y = _setup()
    ev = torch.linalg.eigvalsh(_dense(_copy(model, model.state_dict()), x, y, nn.functional.cross_entropy)).numpy()
    density = wdbound.Hessian(model, (x, y), progress=False).density()
    assert density.slq.spanning_probe() is not None
    nodes, weights = density.slq.measure()
    assert wasserstein_distance(nodes, ev, u_weights=weights) / abs(ev).max() < 1e-9
    plain = np.concatenate(density.slq.weights) * density.slq.norms_sq[0] / density.slq.dim
    gauss = wasserstein_distance(np.r_[density.slq.nodes[0], 0.0], ev, u_weights=np.r_[plain, 1 - plain.sum()])
    assert gauss / abs(ev).max() > 1e-6


class TokenNet(nn.Module):
    """Integer token ids in (an embedding), mean-pooled, tied output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, tokens):
        return torch.tanh(self.mix(self.embed(tokens).mean(1))) @ self.embed.weight.T


def test_integer_inputs_stay_integer_and_the_hessian_matches_finite_differences():
    # Token ids must reach the model as integers (before the fix they were cast to the operator's float
    # dtype and the embedding refused them). Reference: central differences of autograd gradients.
    torch.manual_seed(0)
    model = TokenNet().double()
    tokens, y = torch.randint(0, 9, (30, 5)), torch.randint(0, 9, (30,))
    H = wdbound.Hessian(model, (tokens, y))
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def gradient(v):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(v, params)
        model.zero_grad()
        nn.functional.cross_entropy(model(tokens), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    eps = 1e-6  # truncation ~eps^2 |third derivative|, rounding ~1e-16 / eps
    columns = [(gradient(flat + eps * e) - gradient(flat - eps * e)) / (2 * eps)
               for e in torch.eye(H.dim, dtype=torch.float64)]
    reference = torch.stack(columns).numpy()
    assert np.allclose(H.dense(), reference, rtol=0, atol=1e-7 * np.abs(reference).max())


def test_density_reads_the_lower_end_off_its_own_run_when_it_has_converged():
    # A long density run has converged at the bottom: L comes from it (no run on -H) and holds the exact
    # smallest eigenvalue; a short one has not, and the run on -H is made as before.
    model, x, y = _setup(1)
    H = wdbound.Hessian(model, (x, y))
    ev = H.exact().eigenvalues
    long = H.density(probes=2, steps=120)
    assert long.support.low_from == "density run" and long.provenance["support"]["low_from"] == "density run"
    assert ev[0] - 1e-9 * abs(ev).max() <= long.support.low <= ev[0]
    # Its top end too: the 119-step density run certifies lambda_max more tightly than the top-1 run.
    assert long.provenance["top_from"] == "density run" and abs(long.support.high - ev[-1]) <= 1e-9 * abs(ev).max()
    short = H.density(probes=2, steps=6)
    assert short.support.low_from == "lanczos on -H" and short.support.low <= ev[0]


def _copy(model, state):
    clone = Net()
    clone.load_state_dict(state)
    return clone


def test_err_from_python_matches_the_formula_and_covers_exact():
    model, x, y = _setup(1)
    H = wdbound.Hessian(model, (x, y))
    exact = wdbound.err(H, eta=1e-3, lam=5e-2, b=16, n=1000, rho=0.1)
    ev = H.exact().eigenvalues
    for form in ("adamw", "l2-adam"):
        sigma = np.maximum(np.abs(ev), 1e-6)
        root = np.sqrt(sigma)
        xv = 2 * 0.1 * 16 * (root + (5e-2 if form == "adamw" else 5e-2 / root)) / 1e-3
        assert exact[form].method == "exact"
        assert exact[form].err_mean == pytest.approx(float(np.mean(np.log(xv) + 1 / xv)), rel=1e-9)
        assert exact[form].theorem_term is not None and math.isfinite(exact[form].phi)
    slq = wdbound.err(H.density(probes=8, steps=12), eta=1e-3, lam=5e-2, b=16, n=1000, rho=0.1)
    for form in ("adamw", "l2-adam"):
        assert slq[form].method == "slq" and slq[form].err_mean_interval.contains(exact[form].err_mean)
    assert "err/d" in repr(slq["adamw"]) and slq["adamw"]._repr_html_().startswith("<pre>")


def test_parameter_subset_and_data_forms():
    model, x, y = _setup(2)
    head = wdbound.Hessian(model, (x, y), params=["body.2.weight", "body.2.bias"])
    assert head.dim == 12 * 5 + 5
    dense = _dense(model, x, y, nn.functional.cross_entropy).numpy()
    block = dense[-65:, -65:]  # the head's block of the full Hessian
    assert np.allclose(head.exact().eigenvalues, np.linalg.eigvalsh(block), atol=1e-10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    assert np.allclose(wdbound.Hessian(model, loader).exact().eigenvalues,
                       wdbound.Hessian(model, (x, y)).exact().eigenvalues, atol=1e-12)
    # A Dataset's floating targets (regression) are stacked as they are, not cast to class labels.
    targets = torch.randn(len(y), 5, generator=torch.Generator().manual_seed(1))
    regression = wdbound.Hessian(model, torch.utils.data.TensorDataset(x, targets), loss=nn.MSELoss()).dense()
    assert np.array_equal(regression, wdbound.Hessian(model, (x, targets), loss=nn.MSELoss()).dense())
    assert np.allclose(regression, _dense(model, x, targets, nn.MSELoss()).numpy(), atol=1e-12)


def test_bad_inputs_are_wdbound_errors():
    model, x, y = _setup()
    with pytest.raises(WdboundError, match="scalar"):
        wdbound.Hessian(model, (x, y), loss=lambda out, t: nn.functional.cross_entropy(out, t, reduction="none"))
    with pytest.raises(WdboundError, match="nan"):
        wdbound.Hessian(model, (x, y), loss=lambda out, t: out.sum() * float("nan"))
    with pytest.raises(WdboundError, match="no parameter named"):
        wdbound.Hessian(model, (x, y), params=["nope"])
    with pytest.raises(WdboundError, match="data must be"):
        wdbound.Hessian(model, [1, 2, 3])

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"x": x[i], "y": y[i]}

    # A dict item or batch is Hugging Face's convention: keyword inputs plus a "labels" key, which these lack.
    with pytest.raises(WdboundError, match="a dict batch needs a 'labels' key .the targets., got keys .'x', 'y'."):
        wdbound.Hessian(model, Dicts())
    with pytest.raises(WdboundError, match="a dict batch needs a 'labels' key"):
        wdbound.Hessian(model, torch.utils.data.DataLoader(Dicts(), batch_size=8))
    triples = torch.utils.data.TensorDataset(x, y, y)
    with pytest.raises(WdboundError, match="got a tuple of 3"):
        wdbound.Hessian(model, triples)
    with raises_param("eta"):
        wdbound.err(wdbound.Hessian(model, (x, y)), eta=0.0, lam=0.1, b=8, n=10)
    H = wdbound.Hessian(model, (x, y))
    # sizes and types out of range: one-line errors naming the parameter, not IndexError/ValueError/TypeError
    # from inside (and no silently empty or truncated top-k)
    for call, param in ((lambda: H.top_eigenvalues(0), "top_k"), (lambda: H.top_eigenvalues(-2), "top_k"),
                        (lambda: H.top_eigenvalues(H.dim + 1), "top_k"), (lambda: H.trace(0), "probes"),
                        (lambda: H.diagonal(0), "probes"), (lambda: H.density(probes=0), "probes"),
                        (lambda: H.density(steps=0), "steps"), (lambda: H.density(steps=H.dim + 1), "steps"),
                        (lambda: wdbound.err(H, eta=1e-3, lam=0.1, b=8.5, n=10), "b"),
                        (lambda: wdbound.err(H, eta="0.1", lam=0.1, b=8, n=10), "eta"),
                        (lambda: wdbound.Hessian(model, (x, y), seed=-1), "seed"),
                        (lambda: wdbound.Hessian(model, (x, torch.full_like(y, 7))), "loss")):
        with raises_param(param):
            call()


def test_mse_loss_keeps_the_logit_shift_directions():
    """MSE is not invariant to a common shift of the outputs: nothing beyond zero rows is deflated."""
    model, x, y = _setup(3)
    onehot = nn.functional.one_hot(y, 5).float()
    H = wdbound.Hessian(model, (x, onehot), loss=nn.functional.mse_loss, keep_graph=False)
    density = H.density(probes=2, steps=5)
    assert density.provenance["deflation"]["logit_shift"] == 0
    # torch has no forward-mode derivative here: the operator fell back to double backward and says so.
    assert density.provenance["hvp_fallback"] and H.operator.mode == "double-backward"
    # With the gradient graph kept (the default when it fits), double backward is the mode from the start.
    kept = wdbound.Hessian(model, (x, onehot), loss=nn.functional.mse_loss)
    assert kept.operator.keep_graph and kept.operator.mode == "double-backward"
    np.testing.assert_allclose(kept.density(probes=2, steps=5).slq.alphas, density.slq.alphas, rtol=1e-10)
    dense = _dense(model, x, onehot, nn.functional.mse_loss)
    assert np.allclose(H.exact().eigenvalues, torch.linalg.eigvalsh(dense).numpy(), atol=1e-10)
    assert wdbound.Hessian(model, (x, y)).density(probes=2, steps=5).provenance["deflation"]["logit_shift"] == 13


FACTORY = '''
import torch
from torch import nn


def build(hidden=6):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def broken(**_):
    raise RuntimeError("no such layer")
'''


def test_model_factory_from_the_cli_matches_python(tmp_path, capsys, monkeypatch):
    import json

    from conftest import run_cli

    (tmp_path / "usernets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernets

    torch.manual_seed(0)
    model = usernets.build(hidden=6)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    out = tmp_path / "spec.json"
    code, stdout, err = run_cli(["spectrum", tmp_path / "mine.pt", "--dtype", "float64", "--model-factory", "usernets:build", "--arch-kwarg",
                                 "hidden=6", "--data", "digits", "--max-samples", "60", "--exact", "on",
                                 "--probes", "2", "--steps", "5", "--json", out, "--no-cache"], capsys)
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert payload["provenance"]["arch"] == "factory:usernets:build"
    from wdbound.data import evaluation_subset

    data = wdbound.load_dataset("digits", "test")
    chosen = evaluation_subset(len(data), 60, 0).tolist()  # --max-samples 60 --seed 0: a seeded random subset
    x = torch.stack([data[i][0] for i in chosen])
    y = torch.tensor([data[i][1] for i in chosen])
    ev = wdbound.Hessian(model, (x, y)).exact().eigenvalues
    assert np.allclose(payload["exact"]["eigenvalues"], ev, atol=1e-10 * abs(ev).max())
    # Label smoothing changes the Hessian; the loss is recorded.
    code, _, err = run_cli(["spectrum", tmp_path / "mine.pt", "--dtype", "float64", "--model-factory", "usernets:build", "--arch-kwarg",
                            "hidden=6", "--data", "digits", "--max-samples", "60", "--exact", "on", "--probes", "2",
                            "--steps", "5", "--loss", "label-smoothing:0.1", "--json", out, "--no-cache"], capsys)
    assert code == 0, err
    smoothed = wdbound.Hessian(model, (x, y), nn.CrossEntropyLoss(label_smoothing=0.1)).exact().eigenvalues
    payload = json.loads(out.read_text())
    assert np.allclose(payload["exact"]["eigenvalues"], smoothed, atol=1e-10 * abs(smoothed).max())
    assert "label-smoothing:0.1" in payload["provenance"]["loss"]
    for args, flag in ((["--model-factory", "nowhere_module:build"], "--model-factory"),
                       (["--model-factory", "usernets:broken"], "--model-factory"),
                       (["--model-factory", "usernets"], "--model-factory"),
                       (["--model-factory", "usernets:build", "--loss", "hinge"], "--loss")):
        code, _, err = run_cli(["spectrum", tmp_path / "mine.pt", *args, "--json", tmp_path / "bad.json"], capsys)
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "bad.json").exists()


def test_python_err_equals_the_cli_on_a_checkpoint(tiny_checkpoint, tmp_path, capsys):
    import json

    from conftest import run_cli

    out = tmp_path / "err.json"
    code, _, err = run_cli(["err", tiny_checkpoint, "--max-samples", "100", "--json", out], capsys)
    assert code == 0, err
    cli = json.loads(out.read_text())
    from wdbound.data import evaluation_subset

    ckpt = wdbound.load_checkpoint(tiny_checkpoint)
    data = wdbound.load_dataset("digits", "test")
    chosen = evaluation_subset(len(data), 100, 0).tolist()  # what --max-samples 100 --seed 0 evaluates
    x = torch.stack([data[i][0] for i in chosen])
    y = torch.tensor([data[i][1] for i in chosen])
    facts = ckpt.facts()
    H = wdbound.Hessian(ckpt.model, (x, y))
    exact = H.exact()
    spent = H.operator.matvecs
    # The API's defaults are the CLI's: rho = 1/sqrt(input dimension), and the dense Hessian just built is reused.
    python = wdbound.err(H, eta=facts.eta, lam=facts.lam, b=facts.batch_size, n=facts.n_train)
    assert H.operator.matvecs == spent and python["adamw"].inputs.rho == cli["inputs"]["rho"] == 0.125
    assert exact.trace == pytest.approx(float(np.trace(H.dense())), rel=1e-12)
    for form in ("adamw", "l2-adam"):
        assert python[form].err_mean == pytest.approx(cli[form]["err_mean"], rel=1e-9)
        assert python[form].theorem_term == pytest.approx(cli[form]["theorem_term"], rel=1e-9)
        assert python[form].phi == pytest.approx(cli[form]["phi"], rel=1e-9)
    for text in (repr(H.top_eigenvalues(2)), repr(H.trace(4)), repr(H.diagonal(None)), repr(H.density(2, 5)),
                 repr(H.exact())):
        assert "\n" not in text and len(text) < 300


def test_a_model_that_asserts_on_its_input_is_a_one_line_error():
    """timm's ViTs assert on the image size; that failure is bad input (data vs model), not a traceback."""
    import torch
    from torch import nn

    from wdbound import Hessian
    from wdbound.errors import WdboundError

    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            assert x.shape[-1] == 4, f"Input width ({x.shape[-1]}) doesn't match model (4)."
            return self.linear(x)

    with pytest.raises(WdboundError, match="doesn't match model") as info:
        Hessian(Picky(), (torch.randn(8, 5), torch.randint(0, 2, (8,))))
    assert info.value.param == "loss" and "\n" not in str(info.value)


def test_api_trace_is_the_spectrum_command_s_estimator_to_its_own_target(tiny_checkpoint, tmp_path, capsys):
    """Hessian.spectrum().trace is `wdbound spectrum`'s number (same seed, dtype, data); Hessian.trace() is the
    same estimator (deflated Hutchinson on a Lanczos run's complement) to the tighter target of the trace alone
    (defaults.TRACE_RTOL): within 3 of its standard errors of the exact trace, and that error meets the target
    (or the probe cap was reached), where plain Hutchinson stays 16 probes."""
    import json

    from conftest import run_cli

    out = tmp_path / "spectrum.json"
    code, _, err = run_cli(["spectrum", tiny_checkpoint, "--no-cache", "--json", out], capsys)
    assert code == 0, err
    cli = json.loads(out.read_text())["trace"]
    ckpt = wdbound.load_checkpoint(tiny_checkpoint)
    H = wdbound.Hessian(ckpt.model, wdbound.load_dataset("digits", "test"), dtype="float32", progress=False)
    assert H.spectrum().trace.estimate == pytest.approx(cli["estimate"], rel=1e-5)
    api = H.trace()
    assert api.method == cli["method"] == "krylov-deflated hutchinson"
    exact = float(np.trace(wdbound.Hessian(ckpt.model, wdbound.load_dataset("digits", "test")).dense()))
    assert abs(api.estimate - exact) <= 3 * api.stderr + 1e-4 * abs(exact)
    assert (api.stderr <= defaults.TRACE_RTOL * abs(api.estimate)
            or len(api.samples) == max(defaults.TRACE_ALONE_PROBES, defaults.TRACE_MAX_PROBES))
    plain = H.trace(16, method="hutchinson")
    assert plain.method == "hutchinson" and len(plain.samples) == 16


def test_api_trace_to_a_target_on_a_known_spectrum():
    """On a model whose Hessian is computed exactly here, each rtol's standard error meets its target (or the
    cap), the estimate lies within 4 standard errors of the exact trace, and a tighter target spends more."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))  # d = 874: the span is not the space
    x, y = torch.randn(200, 16), torch.randint(0, 10, (200,))
    H = wdbound.Hessian(model, (x, y), progress=False)
    exact = float(np.trace(_dense(model, x, y, nn.functional.cross_entropy).numpy()))
    spent = []
    for rtol in (0.05, 0.003):
        before = H.operator.matvecs
        est = H.trace(rtol=rtol)
        spent.append(H.operator.matvecs - before)
        assert abs(est.estimate - exact) <= 4 * est.stderr + 1e-10 * abs(exact)
        assert est.method == "krylov-deflated hutchinson"
        assert est.stderr <= rtol * abs(est.estimate) or len(est.samples) == defaults.TRACE_MAX_PROBES
    assert spent[1] >= spent[0]
    with pytest.raises(WdboundError, match="rtol"):
        H.trace(rtol=1.5)


def test_api_trace_with_a_fixed_budget_spends_it_and_a_longer_span_deflates_more():
    """``steps`` sets the deflation run's length: at ``rtol=0`` a trace costs exactly ``steps + probes`` HVPs, tr T
    of the span is the exact trace of H on it, and over 12 seeds the RMS error with a 40-step span is below a
    5-step span's: least squares on features scaled by i^-0.75 (H = 2XᵀX/n, d = 300, a spectrum decaying like a
    trained network's), where the longer span leaves the probes a smaller tail (measured: 0.011 against 0.091,
    trace 5.17). Bad steps: one-line error."""
    torch.manual_seed(3)
    model = nn.Linear(300, 1, bias=False)
    x, y = torch.randn(500, 300) / torch.arange(1, 301) ** 0.75, torch.randn(500, 1)
    H = wdbound.Hessian(model, (x, y), loss=lambda out, target: ((out - target) ** 2).mean(), progress=False)
    exact = float(np.trace(2 * x.double().T @ x.double() / len(x)))  # closed form
    rms = []
    for steps in (5, 40):
        errors = []
        for seed in range(12):
            H.seed = seed
            before = H.operator.matvecs
            est = H.trace(probes=8, rtol=0.0, steps=steps)
            assert H.operator.matvecs - before == steps + 8 and len(est.samples) == 8
            errors.append(est.estimate - exact)
        rms.append(float(np.sqrt(np.mean(np.square(errors)))))
    assert rms[1] < rms[0] / 3
    for bad in (0, 2.5, True):
        with pytest.raises(WdboundError, match="steps"):
            H.trace(steps=bad)


def _hf_reference(model, flat_names, call, labels):
    """The dense Hessian of the mean token / image cross-entropy by torch.autograd.functional.hessian (not
    torch.func.hessian: wrong for affine LayerNorm under torch 2.14.1, docs/decisions.md)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in flat_names]
    numels = [params[n].numel() for n in flat_names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in flat_names])

    def loss(vector):
        tensors = {n: t.view(s) for n, t, s in zip(flat_names, vector.split(numels), shapes)}
        logits = call(tensors).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("kind", ["gpt2", "vit"])
def test_hugging_face_models_through_the_api(kind, digits_test):
    """A tiny transformers GPT-2 (dict batch with input_ids, per-token logits, -100 ignored) and ViT (eager
    attention, ImageClassifierOutput.logits) through wdbound.Hessian with the default loss: the dense Hessian
    equals autograd's, and err() runs with the CLI's default rho."""
    import transformers  # a test extra: the test runs, never skips
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         attn_implementation="eager", bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config).double().eval()
        ids = torch.randint(0, 13, (6, 8))
        labels = torch.cat([ids[:, 1:], torch.full((6, 1), -100)], 1)  # next-token targets, last one ignored
        batches = torch.utils.data.DataLoader([{"input_ids": i, "labels": t} for i, t in zip(ids, labels)],
                                              batch_size=4)
        H = wdbound.Hessian(model, batches, progress=False)
        inputs = {"input_ids": ids}
    else:
        config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=8,
                                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                        num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                        attn_implementation="eager")
        model = transformers.ViTForImageClassification(config).double().eval()
        x = torch.stack([digits_test[i][0] for i in range(40)]).double()
        labels = torch.tensor([digits_test[i][1] for i in range(40)])
        H = wdbound.Hessian(model, ({"pixel_values": x}, labels), progress=False)
        inputs = {"pixel_values": x}
    reference = _hf_reference(model, H.operator.names,
                              lambda tensors: torch.func.functional_call(model, tensors, (), inputs), labels)
    dense = torch.from_numpy(H.dense())
    assert dense.shape == reference.shape and H.dim > 800
    assert (dense - reference).abs().max() <= 1e-9 * reference.abs().max()
    top = H.top_eigenvalues(1)
    assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(reference)[-1]), rel=1e-8)
    result = wdbound.err(H, eta=1e-3, lam=0.05, b=8, n=1000, optimizer="adamw")
    assert list(result) == ["adamw"] and result["adamw"].method == "exact"
    assert result["adamw"].inputs.rho == pytest.approx(1 / math.sqrt(H.input_dim))


def test_api_refuses_a_diagonal_that_cannot_fit_before_any_hvp(monkeypatch):
    """The API's deflated diagonal checks what it will hold against the memory the process can still get and
    refuses in one line (param ``memory``) before the first HVP, instead of being killed by the kernel
    halfway (a 128-probe diagonal of an 11 M-parameter model needs ~32 GiB)."""
    from wdbound import memory
    from wdbound.estimators.hutchinson import deflated_diagonal_bytes

    model, x, y = _setup(4)
    H = wdbound.Hessian(model, (x, y))
    need = deflated_diagonal_bytes(H.dim, 16, 8)
    monkeypatch.setattr(memory, "available_bytes", lambda device, roots=None: (need - 1, "test limit"))
    with raises_param("memory", match=r"deflated diagonal with 16 probes needs ~.*test limit.*fewer probes"):
        H.diagonal(16)
    assert H.operator.matvecs == 0
    assert H.diagonal(4).estimate.shape == (H.dim,)  # 4 probes fit under the same limit
    monkeypatch.setattr(memory, "available_bytes", lambda device, roots=None: (2**40, "test"))
    assert H.diagonal(16).probes == 16


def test_api_density_plans_the_low_memory_recurrence_when_its_vectors_do_not_fit_whole(monkeypatch):
    """When the density's Lanczos vectors do not fit whole, ``Hessian.density()`` follows ``wdbound err``'s
    memory plan (the low-memory recurrence, a thick-restart top run) instead of failing, says so in its
    provenance, leaves a refused kept graph off, and still estimates the spectrum: W1 to the exact eigenvalues
    within range/sqrt(2dk), the bound on the expected W1 of k Rademacher probes' spectral weights."""
    from wdbound import memory
    from wdbound.stats import wasserstein1

    model, x, y = _setup(5)
    exact = torch.linalg.eigvalsh(_dense(model, x, y, nn.functional.cross_entropy)).numpy()
    H = wdbound.Hessian(model, (x, y), keep_graph=False)
    whole = H.density(probes=4, steps=40)
    assert whole.provenance["memory_plan"] is None
    monkeypatch.setattr(wdbound.api, "available_bytes", lambda device, roots=None: (1, "test"))  # never whole
    monkeypatch.setattr(memory, "FULL_BASIS_MAX_BYTES", 0)  # and the plan takes the low-memory path
    planned = H.density(probes=4, steps=40)
    plan = planned.provenance["memory_plan"]
    assert plan["lanczos_mode"] == "low-memory" and plan["restart"] == memory.RESTART_TOP
    assert not H.operator.keep_graph
    bound = (exact.max() - exact.min()) / math.sqrt(2 * H.dim * 4)
    for density in (whole, planned):
        nodes, weights = density.slq.measure()
        assert wasserstein1(nodes, weights / weights.sum(), exact, np.full(len(exact), 1 / len(exact))) <= bound
