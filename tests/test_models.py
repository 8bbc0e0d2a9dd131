import pytest
import torch

from wdbound import WdboundError
from wdbound.models import available, build_model, count_parameters, input_shape


@pytest.mark.parametrize("arch, kwargs, low, high", [("digits-mlp", {}, 2000, 3000), ("digits-cnn", {}, 1500, 3000),
                                                     ("digits-vit", {}, 4000, 6000),
                                                     ("digits-mlp", {"depth": 8}, 9000, 11000)])
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
    with pytest.raises(WdboundError, match="--arch"):
        build_model("alexnet")
    with pytest.raises(WdboundError, match="bad arguments"):
        build_model("digits-mlp", width=3)
