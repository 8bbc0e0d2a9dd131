"""Architecture registry.

A checkpoint names its architecture by registry name plus keyword arguments, so
the model can be rebuilt without unpickling code. The digits models are small
enough (2k-6k parameters) that their exact Hessian fits in memory; the
torchvision models are constructed, never downloaded.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .errors import WdboundError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SHAPE: dict[str, Callable[..., tuple[int, ...]]] = {}


def register(name: str, input_shape: Callable[..., tuple[int, ...]]):
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        _INPUT_SHAPE[name] = input_shape
        return factory

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_model(arch: str, **arch_kwargs) -> nn.Module:
    """Construct a registered architecture, or ``factory:module:function`` (random init, eval mode not set)."""
    if arch.startswith("factory:"):
        return build_from_factory(arch[len("factory:"):], **arch_kwargs)
    if arch not in _REGISTRY:
        raise WdboundError(f"unknown architecture {arch!r}; known: {', '.join(available())}", "--arch")
    try:
        return _REGISTRY[arch](**arch_kwargs)
    except TypeError as exc:
        raise WdboundError(f"bad arguments for architecture {arch!r}: {exc}") from None


FACTORY_PREFIX = "factory:"


def build_from_factory(spec: str, **kwargs) -> nn.Module:
    """``module:function`` (the uvicorn / Lightning convention): import ``module`` (the current folder is
    searched first) and call ``function(**kwargs)``; it must return an ``nn.Module``. This runs the user's
    code, by the user's explicit choice."""
    import importlib
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise WdboundError(f"--model-factory {spec!r}: use module:function (e.g. mynets:build)", "--model-factory")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is the user's one-line error
        raise WdboundError(f"--model-factory {spec!r}: cannot import {module_name!r} "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})",
                           "--model-factory") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WdboundError(f"--model-factory {spec!r}: {module_name} has no callable {attr!r}", "--model-factory")
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise WdboundError(f"--model-factory {spec!r} raised {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else ''}", "--model-factory") from None
    if not isinstance(model, nn.Module):
        raise WdboundError(f"--model-factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module",
                           "--model-factory")
    return model


def input_shape(arch: str, **arch_kwargs) -> tuple[int, ...]:
    """Shape of one input example (C, H, W) the architecture expects."""
    if arch not in _INPUT_SHAPE:
        raise WdboundError(f"unknown architecture {arch!r}; known: {', '.join(available())}", "--arch")
    return _INPUT_SHAPE[arch](**arch_kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- digits (8x8)

def _digits_shape(**_: object) -> tuple[int, ...]:
    return (1, 8, 8)


@register("digits-mlp", _digits_shape)
def digits_mlp(hidden: int = 32, depth: int = 1, num_classes: int = 10) -> nn.Module:
    """MLP on flattened 8x8 digits: ``depth`` hidden tanh layers of ``hidden`` units.

    tanh (not ReLU) keeps the loss twice differentiable everywhere, so the
    Hessian is well defined at every weight. No normalisation layers, so a
    larger ``depth`` shows the depth effect on update magnitudes.
    """
    if depth < 1 or hidden < 1:
        raise WdboundError("digits-mlp needs depth >= 1 and hidden >= 1")
    layers: list[nn.Module] = [nn.Flatten()]
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers with BatchNorm, a max-pool and a linear head (~3.3k parameters)."""

    def __init__(self, channels: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.Tanh(),
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Tanh(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(c * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@register("digits-cnn", _digits_shape)
def digits_cnn(channels: int = 8, num_classes: int = 10) -> nn.Module:
    return DigitsCNN(channels, num_classes)


class _Attention(nn.Module):
    """Multi-head self-attention written with plain matmuls.

    Plain ops (rather than the fused kernel) keep forward-mode AD, vmap and
    double backward available, which the curvature operator needs.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise WdboundError(f"embedding dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dim // self.heads)
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A vision transformer for 8x8 digits: 2x2 patches, class token, pre-norm blocks."""

    def __init__(self, dim: int = 16, depth: int = 2, heads: int = 2, mlp: int = 32,
                 patch: int = 2, image: int = 8, channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        if image % patch:
            raise WdboundError(f"image size {image} is not divisible by patch size {patch}")
        self.patch = patch
        tokens = (image // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        batch, channels, height, width = x.shape
        patches = x.unfold(2, p, p).unfold(3, p, p)  # [B, C, H/p, W/p, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, -1, channels * p * p)
        tokens = torch.cat([self.cls.expand(batch, -1, -1), self.embed(patches)], dim=1)
        tokens = self.blocks(tokens + self.pos)
        return self.head(self.norm(tokens[:, 0]))


@register("digits-vit", _digits_shape)
def digits_vit(dim: int = 16, depth: int = 2, heads: int = 2, mlp: int = 32, num_classes: int = 10) -> nn.Module:
    return TinyViT(dim=dim, depth=depth, heads=heads, mlp=mlp, num_classes=num_classes)


# ---------------------------------------------------------------- torchvision

def _image_shape(image_size: int = 32, cifar_stem: bool = True, **_: object) -> tuple[int, ...]:
    return (3, image_size, image_size)


def _resnet(factory, num_classes: int, cifar_stem: bool) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if cifar_stem:
        # 32x32 inputs: a 3x3 stride-1 stem and no max-pool (He et al. 2016, Sec. 4.2).
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


@register("resnet18", _image_shape)
def resnet18(num_classes: int = 10, cifar_stem: bool = True, image_size: int = 32) -> nn.Module:
    from torchvision.models import resnet18 as factory

    return _resnet(factory, num_classes, cifar_stem)


@register("resnet50", _image_shape)
def resnet50(num_classes: int = 10, cifar_stem: bool = True, image_size: int = 32) -> nn.Module:
    from torchvision.models import resnet50 as factory

    return _resnet(factory, num_classes, cifar_stem)


def _vit_shape(image_size: int = 224, **_: object) -> tuple[int, ...]:
    return (3, image_size, image_size)


@register("vit_b_16", _vit_shape)
def vit_b_16(num_classes: int = 1000, image_size: int = 224) -> nn.Module:
    from torchvision.models import vit_b_16 as factory

    return factory(weights=None, num_classes=num_classes, image_size=image_size)
