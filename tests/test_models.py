import pytest
import torch

from conftest import raises_param
from wdbound import WdboundError
from wdbound.models import available, build_model, count_parameters, input_shape


@pytest.mark.parametrize("arch, kwargs, low, high", [("digits-mlp", {}, 2410, 2410), ("digits-cnn", {}, 854, 854),
                                                     ("digits-vit", {}, 1490, 1490),
                                                     ("digits-vit", {"patch": 2, "dim": 16, "mlp": 32}, 5018, 5018),
                                                     ("digits-mlp", {"depth": 8, "hidden": 16}, 3114, 3114)])
def test_digits_models_are_small_and_run(arch, kwargs, low, high):
    model = build_model(arch, **kwargs)
    assert low <= count_parameters(model) <= high
    assert model(torch.zeros(3, *input_shape(arch))).shape == (3, 10)


@pytest.mark.parametrize("arch, kwargs", [("resnet18", {"num_classes": 10}), ("resnet18", {"cifar_stem": False}),
                                          ("vit_b_16", {"num_classes": 10, "image_size": 32})])
def test_torchvision_models_construct_without_download(arch, kwargs):
    model = build_model(arch, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *input_shape(arch, **kwargs)))
    assert out.shape[1] == kwargs.get("num_classes", 10)
    if arch == "resnet18":
        assert model.conv1.kernel_size == ((3, 3) if kwargs.get("cifar_stem", True) else (7, 7))


def test_unknown_arch_and_bad_kwargs():
    assert "digits-cnn" in available()
    with raises_param("arch"):
        build_model("alexnet")
    with pytest.raises(WdboundError, match="bad arguments"):
        build_model("digits-mlp", width=3)


# ---------------------------------------------------------------- architecture arguments from state_dict shapes

INFERABLE = [
    ("digits-mlp", {"hidden": 12, "depth": 3, "num_classes": 7}),
    ("digits-cnn", {"channels": 5, "num_classes": 4}),
    ("digits-vit", {"dim": 12, "depth": 3, "mlp": 20, "patch": 4, "num_classes": 6}),
    ("digits-vit", {"dim": 12, "depth": 1, "mlp": 20, "patch": 2, "num_classes": 6}),
    ("resnet18", {"num_classes": 7, "cifar_stem": False}),
    ("resnet34", {"num_classes": 3, "cifar_stem": True}),
    ("resnet50", {"num_classes": 5, "cifar_stem": False}),
    ("vit_b_16", {"num_classes": 4, "image_size": 64}),
]


def test_every_registered_architecture_has_an_inference_case():
    assert {arch for arch, _ in INFERABLE} == set(available())


@pytest.mark.parametrize("arch, kwargs", INFERABLE, ids=[a for a, _ in INFERABLE])
def test_arch_kwargs_inferred_from_a_saved_state_dict(arch, kwargs, tmp_path):
    """Build with non-default arguments, save the plain state_dict, load it naming only --arch."""
    from wdbound.checkpoints import load_checkpoint
    from wdbound.models import infer_arch_kwargs

    torch.manual_seed(0)
    model = build_model(arch, **kwargs)
    state = model.state_dict()
    assert infer_arch_kwargs(arch, state) == kwargs
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    ckpt = load_checkpoint(path, arch=arch, lr=1e-3, wd=0.0, batch_size=8, n_train=100)
    assert ckpt.meta["arch_kwargs_inferred"] == kwargs
    assert count_parameters(ckpt.model) == count_parameters(model)


def test_timm_vit_small_inferred_from_safetensors(tmp_path):
    import timm  # noqa: F401 - a test extra: the test runs, never skips
    from safetensors.torch import save_file

    from wdbound.checkpoints import load_checkpoint

    model = build_model("timm:vit_small_patch16_224", num_classes=7, img_size=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "vits.safetensors"))
    ckpt = load_checkpoint(tmp_path / "vits.safetensors", arch="timm:vit_small_patch16_224")
    assert ckpt.meta["arch_kwargs"] == {"num_classes": 7, "img_size": 32}
    assert input_shape("timm:vit_small_patch16_224", img_size=32) == (3, 32, 32)
    with torch.no_grad():
        assert ckpt.model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_a_misfit_names_the_arch_kwarg(tmp_path):
    """digits-vit's heads change no shape (not inferable); a wrong explicit argument is named with the
    arguments the architecture takes."""
    from wdbound.checkpoints import load_checkpoint

    torch.save(build_model("digits-mlp", hidden=12).state_dict(), tmp_path / "mlp.pt")
    with raises_param("arch_kwarg") as info:
        load_checkpoint(tmp_path / "mlp.pt", arch="digits-mlp", arch_kwargs={"hidden": 10})
    assert "hidden" in str(info.value) and "digits-mlp takes hidden, depth, num_classes" in str(info.value)
    torch.save(build_model("resnet18").state_dict(), tmp_path / "r18.pt")
    with pytest.raises(WdboundError, match="does not fit arch 'resnet50'") as info:
        load_checkpoint(tmp_path / "r18.pt", arch="resnet50")
    # Other keys than the model's: the registered architecture that fits is named, not argument advice.
    assert "it fits resnet18" in str(info.value) and info.value.param == "arch"


def test_image_size_is_what_the_architecture_expects():
    """An image folder is resized to the model's input: timm's ViTs read it from their config (224) or
    ``img_size``, torchvision's from ``image_size``; a factory says it through its kwargs or not at all."""
    import timm  # noqa: F401 - a test extra: the test runs, never skips
    from wdbound.models import image_size

    assert image_size("timm:vit_tiny_patch16_224") == 224 == image_size("vit_tiny_patch16_224")
    assert image_size("timm:vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8}) == 64
    assert image_size("resnet18", {"image_size": 48}) == 48 and image_size("digits-cnn") == 8
    assert image_size("factory:mymod:build") is None and image_size("factory:mymod:build", {"img_size": 96}) == 96
