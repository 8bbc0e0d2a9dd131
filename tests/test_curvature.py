"""The operator against independent exact Hessians."""

import pytest
import torch
from torch.func import hessian

from wdbound.curvature import DenseOperator, HessianOperator, dense_matrix
from wdbound.models import build_model

SMALL = {"digits-mlp": {"hidden": 16}, "digits-cnn": {"channels": 4}, "digits-vit": {"dim": 8, "depth": 1, "mlp": 16, "patch": 2}}


def _operator(arch, data, mode="forward-over-reverse", batch_size=40, samples=80):
    torch.manual_seed(0)
    model = build_model(arch, **SMALL[arch])
    if arch == "digits-cnn":  # non-trivial running statistics, so eval mode matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return HessianOperator(model, data, batch_size=batch_size, max_samples=samples, dtype=torch.float64, mode=mode)


def _module_hessian(op):
    """Reference independent of the operator: torch.func.hessian of the full-batch loss."""
    inputs = torch.cat([x for x, _ in op.chunks()])
    labels = torch.cat([y for _, y in op.chunks()])
    return hessian(lambda flat: op.loss(flat, inputs, labels))(op.params)


def _autograd_hessian(model, inputs, labels):
    """Reference by plain autograd on the nn.Module itself (rows by double backward)."""
    params = [p for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    rows = []
    for i in range(grads.numel()):
        row = torch.autograd.grad(grads[i], params, retain_graph=True)
        rows.append(torch.cat([r.reshape(-1) for r in row]))
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["digits-mlp", "digits-cnn"])
def test_dense_from_hvps_equals_torch_func_hessian(arch, digits_test):
    op = _operator(arch, digits_test)
    reference = _module_hessian(op)
    ours = dense_matrix(op, chunk=97)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-12 * reference.abs().max())


def test_vit_hvp_equals_autograd_and_finite_differences(digits_test):
    # torch.func.hessian (jacfwd/jacrev over vmap) is wrong by ~2% on this ViT under torch 2.14,
    # so the reference here is plain autograd on the module plus central finite differences.
    op = _operator("digits-vit", digits_test, samples=30, batch_size=30)
    inputs, labels = next(op.chunks())
    reference = _autograd_hessian(op.model, inputs, labels)
    ours = dense_matrix(op)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-11 * reference.abs().max())
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gradient = torch.func.grad(op.loss)
    eps = 1e-6  # truncation error ~eps^2 * |third derivative|, rounding ~1e-16/eps
    fd = (gradient(op.params + eps * v, inputs, labels) - gradient(op.params - eps * v, inputs, labels)) / (2 * eps)
    assert torch.allclose(ours @ v, fd, rtol=0, atol=1e-6 * fd.abs().max())


@pytest.mark.parametrize("arch", ["digits-mlp", "digits-cnn", "digits-vit"])
def test_modes_and_chunking_agree(arch, digits_test):
    vectors = torch.randn(3, _operator(arch, digits_test).dim, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))
    full = _operator(arch, digits_test, batch_size=80).matmat(vectors)
    for mode in ("forward-over-reverse", "double-backward"):
        for batch_size in (7, 80):
            out = _operator(arch, digits_test, mode=mode, batch_size=batch_size).matmat(vectors)
            assert torch.allclose(out, full, rtol=0, atol=1e-12 * full.abs().max()), (mode, batch_size)


def test_zero_pixels_give_exact_zero_hessian_rows(digits_test):
    op = _operator("digits-mlp", digits_test, samples=None)
    inputs = torch.cat([x for x, _ in op.chunks()])
    dead_pixels = (inputs == 0).all(0).reshape(-1).nonzero().squeeze(1)
    assert dead_pixels.numel() > 0
    e = torch.zeros(1, op.dim, dtype=torch.float64)
    e[0, dead_pixels[0]] = 1.0  # first-layer weight (unit 0, dead pixel)
    assert torch.count_nonzero(op.matmat(e)) == 0


def test_zero_rows_found_exactly_and_deflated_slq_is_exact():
    import numpy as np
    import torch

    from wdbound.curvature import DenseOperator, zero_rows
    from wdbound.estimators.hutchinson import rademacher
    from wdbound.estimators.lanczos import lanczos, slq_from_run

    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 30))
    h = a @ a.T / 30
    dead = [0, 7, 8, 29]
    h[dead, :] = 0
    h[:, dead] = 0
    op = DenseOperator(torch.from_numpy(h))
    gen = torch.Generator().manual_seed(0)
    mask = zero_rows(op, gen)
    assert mask.nonzero().squeeze(1).tolist() == dead
    z = rademacher(3, 30, gen, torch.float64) * ~mask
    run = slq_from_run(lanczos(op, z, 30), 30, null_weight=float(mask.sum()))
    f = lambda t: np.log(np.maximum(np.abs(t), 1e-6))  # noqa: E731 — singular at 0, like h(x_l2)
    ev = np.linalg.eigvalsh(h)
    # Full Krylov space: each probe's quadrature is exact for z^T f(H) z; the null part is exact too.
    for sample, zi in zip(run.quadrature(f), z.numpy()):
        vals, vecs = np.linalg.eigh(h)
        assert sample == pytest.approx(float(zi @ vecs @ np.diag(f(vals)) @ vecs.T @ zi) + 4 * f(np.zeros(1))[0],
                                       rel=1e-8)
    nodes, weights = run.measure()
    assert weights.sum() == pytest.approx(1.0)
    assert weights[nodes == 0].sum() >= 4 / 30 - 1e-12
    assert np.sum(np.abs(ev) < 1e-12) == 4


def test_zero_rows_none_when_rows_are_not_exactly_zero():
    import torch

    from wdbound.curvature import DenseOperator, zero_rows

    h = torch.eye(5, dtype=torch.float64) * 1e-300  # tiny but not zero
    assert not zero_rows(DenseOperator(h), torch.Generator().manual_seed(0)).any()


def test_zero_rows_match_exact_hessian_on_digits_mlp(digits_test):
    import torch

    from wdbound.curvature import HessianOperator, dense_matrix, zero_rows
    from wdbound.models import build_model

    torch.manual_seed(0)
    model = build_model("digits-mlp", hidden=8).double()
    op = HessianOperator(model, digits_test, max_samples=120)
    mask = zero_rows(op, torch.Generator().manual_seed(1))
    dense = dense_matrix(op)
    exact_zero = (dense == 0).all(1)
    assert exact_zero.sum() > 0  # always-blank pixels exist in the digits data
    assert torch.equal(mask, exact_zero)


def test_unfold_convolution_equals_conv2d_and_its_hvp(digits_test):
    """float64 on the CPU swaps Conv2d for UnfoldConv2d: same outputs, same HVPs as the stock convolution."""
    from torch import nn

    from wdbound.curvature import UnfoldConv2d, _use_unfold_convolutions
    from wdbound.models import build_model

    torch.manual_seed(0)
    for conv in (nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
                 nn.Conv2d(3, 4, 1, bias=False)):
        conv = conv.double()
        x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
        swapped = nn.Sequential(conv)
        reference = conv(x)
        _use_unfold_convolutions(swapped)
        assert type(swapped[0]) is UnfoldConv2d
        assert torch.allclose(swapped[0](x), reference, rtol=1e-12, atol=1e-12)
    model = build_model("digits-cnn")
    fast = HessianOperator(model, digits_test, max_samples=40, dtype=torch.float64)
    assert any(type(m) is UnfoldConv2d for m in fast.model.modules())
    slow = HessianOperator(model, digits_test, max_samples=40, dtype=torch.float64)
    for module in slow.model.modules():
        if type(module) is UnfoldConv2d:
            module.__class__ = nn.Conv2d
    v = torch.randn(2, fast.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(fast.matmat(v), slow.matmat(v), rtol=1e-10, atol=1e-12)


def test_float32_on_the_cpu_unfolds_only_small_convolution_outputs(digits_test):
    """float32 on the CPU: convolutions with at most SMALL_CONV_POSITIONS output positions per example run as
    unfold + matmul, larger ones call the stock convolution; values and HVPs are the stock ones to rounding."""
    from torch import nn
    from torch.nn import functional as F

    from wdbound.curvature import SMALL_CONV_POSITIONS, UnfoldConv2d
    from wdbound.data import ArrayDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(6 * 16, 10))
    x = torch.randn(12, 3, 16, 16)  # outputs of 16 x 16, 8 x 8 and 4 x 4 positions
    data = ArrayDataset(x, torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(0)))
    fast = HessianOperator(model, data, dtype=torch.float32)
    convs = [m for m in fast.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(type(m) is UnfoldConv2d and m.unfold_positions == SMALL_CONV_POSITIONS for m in convs)
    calls = []
    unfold = F.unfold
    try:
        F.unfold = lambda *a, **k: calls.append(a[0].shape) or unfold(*a, **k)
        out = fast.model(x)
    finally:
        F.unfold = unfold
    assert calls == [torch.Size([12, 6, 8, 8])]  # only the last convolution (4 x 4 = 16 positions) unfolded
    assert torch.allclose(out, model(x), rtol=1e-5, atol=1e-6)
    slow = HessianOperator(model, data, dtype=torch.float32)
    for module in slow.model.modules():
        if type(module) is UnfoldConv2d:
            module.__class__ = nn.Conv2d
    v = torch.randn(3, fast.dim, generator=torch.Generator().manual_seed(1))
    reference = slow.matmat(v)
    assert float((fast.matmat(v) - reference).norm() / reference.norm()) < 1e-5  # float32 rounding
    assert float((fast.matmat(v, mode="double-backward") - reference).norm() / reference.norm()) < 1e-5


def test_stock_layers_undoes_the_operators_rewrites():
    """The benchmarks' peers get the user's layers back: the same function, stock classes, no extra state."""
    from torch import nn

    from wdbound.curvature import UnfoldConv2d, stock_layers
    from wdbound.data import ArrayDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=4),
                          nn.Flatten(), nn.Linear(36, 10))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(6, 3, 12, 12)
    op = HessianOperator(model, ArrayDataset(x, torch.arange(6)), dtype=torch.float32)
    assert type(op.model[0]) is UnfoldConv2d and type(op.model[1]) is not nn.BatchNorm2d
    stock = stock_layers(op.model)
    assert [type(m) for m in stock] == [type(m) for m in model]
    assert not any("unfold_positions" in vars(m) for m in stock)
    assert type(op.model[0]) is UnfoldConv2d  # the operator's own model is untouched
    with torch.no_grad():
        assert torch.allclose(stock(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_diagonal_by_columns_is_the_exact_diagonal():
    from wdbound.curvature import diagonal_by_columns

    a = torch.randn(70, 70, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    matrix = a + a.T
    op = DenseOperator(matrix)
    assert torch.equal(diagonal_by_columns(op, chunk=16), torch.diagonal(matrix))
    assert op.matvecs == 70


def test_logit_shift_directions_are_exact_null_vectors(digits_test):
    """The head's bias and weight columns moved along the all-ones vector of the classes leave the CE loss
    constant: Deflation finds in_features + 1 of them (minus columns already in zero rows), they are null
    vectors of the dense Hessian, and projecting them out keeps everything else."""
    from wdbound.curvature import Deflation, zero_rows

    model = build_model("digits-mlp", hidden=12)
    op = HessianOperator(model, digits_test, max_samples=60)
    generator = torch.Generator().manual_seed(0)
    null = zero_rows(op, generator)
    dense = dense_matrix(op)
    scale = float(torch.linalg.eigvalsh(dense).abs().max())
    deflation = Deflation.find(op, null, scale, generator)
    assert deflation.shift_directions == 12 + 1 and deflation.null_count == float(null.sum()) + 13
    z = torch.randn(5, op.dim, dtype=torch.float64, generator=generator)
    projected = deflation.project(z)
    removed = z * ~null - projected
    assert torch.allclose(deflation.project(projected), projected, atol=1e-14)  # a projector
    assert float((dense @ removed.T).norm()) <= 1e-9 * scale * float(removed.norm())
    assert torch.allclose(projected @ dense, (z * ~null) @ dense, atol=1e-10)  # HP = H
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert int((eigenvalues.abs() <= 1e-10 * scale).sum()) >= deflation.null_count
    again = Deflation.from_json(deflation.to_json(), null)
    assert torch.equal(again.project(z), projected)


def test_no_logit_shift_without_a_linear_head(digits_test):
    from torch import nn

    from wdbound.curvature import Deflation

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Tanh())  # the last layer is not the logits' producer
    op = HessianOperator(model, digits_test, max_samples=30)
    deflation = Deflation.find(op, torch.zeros(op.dim, dtype=torch.bool), 1.0, torch.Generator().manual_seed(0))
    assert deflation.shift_directions == 0


def test_auto_hvp_mode_is_a_rule_per_model(digits_test):
    """--hvp auto: double backward where measured faster (convolutions, attention), forward-over-reverse for
    plain MLPs; the products agree with the explicit modes."""
    for arch, kwargs, expected in (("digits-mlp", {"hidden": 8}, "forward-over-reverse"),
                                   ("digits-cnn", {"channels": 2}, "double-backward"),
                                   ("digits-vit", {"dim": 8, "depth": 1, "mlp": 8}, "double-backward")):
        torch.manual_seed(0)
        model = build_model(arch, **kwargs)
        auto = HessianOperator(model, digits_test, max_samples=40, mode="auto")
        assert auto.mode == expected, arch
        explicit = HessianOperator(model, digits_test, max_samples=40, mode=expected)
        v = torch.randn(2, auto.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert torch.equal(auto.matmat(v), explicit.matmat(v))


@pytest.mark.parametrize("arch", ["digits-cnn", "digits-vit", "digits-mlp"])
def test_kept_gradient_graph_gives_the_same_products(arch, digits_test):
    streamed = _operator(arch, digits_test, mode="double-backward")
    kept = _operator(arch, digits_test, mode="double-backward")
    kept.use_kept_graph(True)
    vectors = torch.randn(3, streamed.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the second product reuses the graph the first one built
        torch.testing.assert_close(kept.matmat(vectors), streamed.matmat(vectors), rtol=1e-12, atol=1e-14)
    assert kept._graphs is not None and len(kept._graphs) == 2  # one graph per chunk (80 samples, chunks of 40)
    kept.use_kept_graph(False)
    assert kept._graphs is None


def test_kept_graph_with_auto_mode_switches_to_double_backward(digits_test):
    op = HessianOperator(build_model("digits-mlp", hidden=8), digits_test, max_samples=30, dtype=torch.float64)
    assert op.mode == "forward-over-reverse" and not op.auto_mode
    auto = HessianOperator(build_model("digits-mlp", hidden=8), digits_test, max_samples=30, dtype=torch.float64,
                           mode="auto")
    auto.use_kept_graph(True)
    assert auto.mode == "double-backward" and auto.keep_graph
    pinned = HessianOperator(build_model("digits-mlp", hidden=8), digits_test, max_samples=30, dtype=torch.float64,
                             mode="forward-over-reverse")
    pinned.use_kept_graph(True)  # an explicit mode is respected: products stay forward-over-reverse
    v = torch.randn(1, pinned.dim, dtype=torch.float64)
    pinned.matmat(v)
    assert pinned.mode == "forward-over-reverse" and pinned._graphs is None


def test_affine_batch_norm_is_the_same_function_and_hessian():
    """Eval-mode BatchNorm written as x*s + t (the operator's copy): same outputs, state dict and Hessian as the
    stock layer, for 1d (N, C) and (N, C, L), 2d and 3d inputs, with and without affine parameters."""
    from torch import nn

    from wdbound.curvature import _AffineEvalBatchNorm, _use_affine_batch_norm

    torch.manual_seed(0)
    cases = [(nn.BatchNorm1d(4), (6, 4)), (nn.BatchNorm1d(4), (6, 4, 5)), (nn.BatchNorm2d(4), (6, 4, 3, 3)),
             (nn.BatchNorm3d(4), (6, 4, 2, 2, 2)), (nn.BatchNorm2d(4, affine=False), (6, 4, 3, 3))]
    for norm, shape in cases:
        norm = norm.double().eval()
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.3, 2.0)
        if norm.affine:
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.3, 0.3)
        x = torch.randn(*shape, dtype=torch.float64)
        model = nn.Sequential(norm)
        reference, keys, stock = model(x), list(model.state_dict()), type(norm)
        _use_affine_batch_norm(model)
        assert isinstance(model[0], _AffineEvalBatchNorm) and isinstance(model[0], stock)
        assert torch.allclose(model(x), reference, rtol=1e-13, atol=1e-13) and list(model.state_dict()) == keys
        model.train()  # training mode keeps the stock forward (batch statistics)
        assert torch.allclose(model(x), nn.functional.batch_norm(x, None, None, norm.weight, norm.bias, True),
                              atol=1e-12)
    # The Hessian of a small CNN's loss with the swapped layers equals plain autograd on the stock module.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 8 * 8, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 10)).double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    model.eval()
    inputs = torch.randn(12, 1, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 10, (12,))
    reference = _autograd_hessian(model, inputs, labels)
    from wdbound.data import ArrayDataset

    op = HessianOperator(model, ArrayDataset(inputs, labels), dtype=torch.float64, mode="double-backward")
    assert sum(isinstance(m, _AffineEvalBatchNorm) for m in op.model.modules()) == 2
    assert not any(isinstance(m, _AffineEvalBatchNorm) for m in model.modules())  # the caller's model is untouched
    assert torch.allclose(dense_matrix(op), reference, rtol=0, atol=1e-11 * reference.abs().max())


def test_dense_build_path_is_a_rule_and_both_paths_agree(digits_test):
    """The dense build's vmapped / one-pass-per-column choice is a rule of the model (same command, same bytes),
    and the two paths give the same matrix to rounding."""
    from wdbound.curvature import vmapped_passes_rule, dense_matrix

    assert vmapped_passes_rule(build_model("digits-mlp", hidden=4))
    assert vmapped_passes_rule(build_model("digits-vit", dim=8, depth=1, mlp=8))
    assert not vmapped_passes_rule(build_model("digits-cnn", channels=2))
    torch.manual_seed(0)
    model = build_model("digits-mlp", hidden=6)
    vmapped = HessianOperator(model, digits_test, max_samples=50, mode="double-backward", probe_chunk=16)
    looped = HessianOperator(model, digits_test, max_samples=50, mode="double-backward", probe_chunk=1)
    a, b = dense_matrix(vmapped), dense_matrix(looped)
    assert vmapped.batched and not looped.batched
    assert torch.allclose(a, b, rtol=0, atol=1e-12 * float(a.abs().max()))
    assert torch.equal(a, dense_matrix(vmapped))  # the same path twice: the same bytes
