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
_INFER: dict[str, Callable[[dict], dict]] = {}
TIMM_PREFIX = "timm:"
StateDict = dict  # parameter name -> tensor


def register(name: str, input_shape: Callable[..., tuple[int, ...]], infer: Callable[[StateDict], dict] | None = None):
    """Register an architecture: its factory, the input shape it expects, and how to read its keyword
    arguments back from a state_dict's shapes (``infer``)."""
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        _INPUT_SHAPE[name] = input_shape
        if infer is not None:
            _INFER[name] = infer
        return factory

    return wrap


def available() -> list[str]:
    """Registered architecture names (``timm:<model>`` and ``factory:module:function`` come on top)."""
    return sorted(_REGISTRY)


def canonical_arch(arch: str) -> str:
    """``arch`` as the registry spells it: a bare timm model name (``vit_small_patch16_224``) becomes
    ``timm:vit_small_patch16_224`` when no built-in architecture has that name and timm (installed) knows it.

    >>> canonical_arch("digits-mlp"), canonical_arch("timm:vit_tiny_patch16_224")
    ('digits-mlp', 'timm:vit_tiny_patch16_224')
    """
    if arch in _REGISTRY or arch.startswith((TIMM_PREFIX, "factory:")):
        return arch
    try:
        import timm
    except ImportError:
        return arch
    return TIMM_PREFIX + arch if arch in timm.list_models() else arch


def build_model(arch: str, **arch_kwargs) -> nn.Module:
    """Construct a registered architecture, ``timm:<name>`` (or a bare timm name: :func:`canonical_arch`) or
    ``factory:module:function`` (random init, eval mode not set)."""
    arch = canonical_arch(arch)
    if arch.startswith("factory:"):
        return build_from_factory(arch[len("factory:"):], **arch_kwargs)
    if arch.startswith(TIMM_PREFIX):
        return _timm_model(arch[len(TIMM_PREFIX):], **arch_kwargs)
    if arch not in _REGISTRY:
        raise WdboundError(f"unknown architecture {arch!r}; known: {', '.join(available())}, timm:<model>, "
                           "or a model factory", "arch")
    try:
        return _REGISTRY[arch](**arch_kwargs)
    except TypeError as exc:
        raise WdboundError(f"bad arguments for architecture {arch!r}: {exc}", "arch_kwarg") from None


def arch_arguments(arch: str) -> list[str]:
    """The keyword arguments an architecture takes (for error messages)."""
    import inspect

    factory = _REGISTRY.get(arch)
    return list(inspect.signature(factory).parameters) if factory is not None else []


def infer_arch_kwargs(arch: str, state_dict: StateDict) -> dict:
    """Architecture arguments read from a state_dict's shapes (classes, stem, widths, depth, image size, patch);
    those the shapes do not determine are left out (the factory's default applies). ``{}`` when the
    architecture has no rule or the state_dict does not look like it (the fit check then names the misfit)."""
    arch = canonical_arch(arch)
    rule = _timm_infer if arch.startswith(TIMM_PREFIX) else _INFER.get(arch)
    if rule is None:
        return {}
    try:
        return rule(state_dict)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        return {}


def fitting_architectures(state_dict: StateDict, exclude: str | None = None) -> list[str]:
    """The registered architectures (not ``exclude``) whose model, with the arguments read off the shapes, has
    exactly this state_dict's keys and shapes. Models are built on the ``meta`` device: no memory, no init.

    >>> fitting_architectures(digits_mlp(hidden=8).state_dict())
    ['digits-mlp']
    """
    shapes = {key: tuple(value.shape) for key, value in state_dict.items() if hasattr(value, "shape")}
    fits = []
    for name in available():
        if name == exclude:
            continue
        try:
            with torch.device("meta"):
                model = build_model(name, **infer_arch_kwargs(name, state_dict))
        except (WdboundError, TypeError, ValueError, RuntimeError):
            continue
        if {key: tuple(value.shape) for key, value in model.state_dict().items()} == shapes:
            fits.append(name)
    return fits


def is_digits_arch(arch: str) -> bool:
    """Whether ``arch`` is one of the digits zoo's architectures (the only ones the embedded data suits)."""
    return str(arch).startswith("digits-") and str(arch) in _REGISTRY


def _shape(state_dict: StateDict, key: str) -> tuple[int, ...]:
    return tuple(state_dict[key].shape)


def _timm_model(name: str, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise WdboundError(f"architecture timm:{name} needs timm (pip install 'wdbound[timm]')", "arch") from None
    if name not in timm.list_models():
        raise WdboundError(f"timm has no model {name!r} (see timm.list_models())", "arch")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise WdboundError(f"bad arguments for timm:{name}: {exc}", "arch_kwarg") from None


def _timm_infer(state_dict: StateDict) -> dict:
    """timm ViTs: classes from ``head.weight``, image size from ``pos_embed`` and the patch of ``patch_embed``."""
    out = {}
    if "head.weight" in state_dict:
        out["num_classes"] = _shape(state_dict, "head.weight")[0]
    if "pos_embed" in state_dict and "patch_embed.proj.weight" in state_dict:
        patch = _shape(state_dict, "patch_embed.proj.weight")[-1]
        tokens = _shape(state_dict, "pos_embed")[1] - (1 if "cls_token" in state_dict else 0)
        side = math.isqrt(tokens)
        if side * side == tokens:
            out["img_size"] = side * patch
    return out


FACTORY_PREFIX = "factory:"


def build_from_factory(spec: str, **kwargs) -> nn.Module:
    """``module:function`` (the uvicorn / Lightning convention): import ``module`` (the current folder is
    searched first) and call ``function(**kwargs)``; it must return an ``nn.Module``. This runs the user's
    code, by the user's explicit choice."""
    import importlib
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise WdboundError(f"model factory {spec!r}: use module:function (e.g. mynets:build)", "model_factory")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is the user's one-line error
        raise WdboundError(f"model factory {spec!r}: cannot import {module_name!r} "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})",
                           "model_factory") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WdboundError(f"model factory {spec!r}: {module_name} has no callable {attr!r}", "model_factory")
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise WdboundError(f"model factory {spec!r} raised {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else ''}", "model_factory") from None
    if not isinstance(model, nn.Module):
        raise WdboundError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module",
                           "model_factory")
    return model


def input_shape(arch: str, **arch_kwargs) -> tuple[int, ...]:
    """Shape of one input example (C, H, W) the architecture expects."""
    if arch.startswith(TIMM_PREFIX):
        model = build_model(arch, **arch_kwargs)
        config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
        size = arch_kwargs.get("img_size") or (config.get("input_size") or (3, 224, 224))[-1]
        return (int(arch_kwargs.get("in_chans", 3)), int(size), int(size))
    if arch not in _INPUT_SHAPE:
        raise WdboundError(f"unknown architecture {arch!r}; known: {', '.join(available())}", "arch")
    return _INPUT_SHAPE[arch](**arch_kwargs)


def image_size(arch: str, arch_kwargs: dict | None = None) -> int | None:
    """The side of the square images the architecture expects (what an image folder is resized to), or None
    when it takes no images or cannot say (a model factory without ``image_size`` / ``img_size``).

    >>> image_size("resnet18"), image_size("resnet18", {"image_size": 64}), image_size("digits-mlp")
    (32, 64, 8)
    """
    kwargs, arch = dict(arch_kwargs or {}), canonical_arch(arch)
    if arch not in _INPUT_SHAPE and not arch.startswith(TIMM_PREFIX):  # a model factory
        size = kwargs.get("image_size", kwargs.get("img_size"))
        return int(size) if size is not None else None
    shape = input_shape(arch, **kwargs)
    return int(shape[-1]) if len(shape) == 3 else None


def count_parameters(model: nn.Module) -> int:
    """How many trainable parameters ``model`` has (d)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- digits (8x8)

def _digits_shape(**_: object) -> tuple[int, ...]:
    return (1, 8, 8)


def _infer_digits_mlp(sd: StateDict) -> dict:
    weights = sorted((int(k.split(".")[0]), v.shape) for k, v in sd.items() if k.endswith(".weight"))
    return {"hidden": weights[0][1][0], "depth": len(weights) - 1, "num_classes": weights[-1][1][0]}


@register("digits-mlp", _digits_shape, _infer_digits_mlp)
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
    """Two 3x3 conv layers with BatchNorm, a max-pool and a linear head (854 parameters at 4 channels)."""

    def __init__(self, channels: int = 4, num_classes: int = 10) -> None:
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


@register("digits-cnn", _digits_shape, lambda sd: {"channels": _shape(sd, "features.0.weight")[0],
                                                   "num_classes": _shape(sd, "head.weight")[0]})
def digits_cnn(channels: int = 4, num_classes: int = 10) -> nn.Module:
    """The digits CNN (:class:`DigitsCNN`) for 8x8 images."""
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
    """A vision transformer for 8x8 digits: 4x4 patches (4 tokens and a class token), pre-norm blocks
    (1,490 parameters at the defaults)."""

    def __init__(self, dim: int = 8, depth: int = 2, heads: int = 2, mlp: int = 16,
                 patch: int = 4, image: int = 8, channels: int = 1, num_classes: int = 10) -> None:
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


def _infer_digits_vit(sd: StateDict) -> dict:
    """dim, depth, mlp width, patch and classes (``heads`` does not change any shape: its default applies)."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    dim, pixels = _shape(sd, "embed.weight")
    return {"dim": dim, "depth": depth, "mlp": _shape(sd, "blocks.0.mlp.0.weight")[0],
            "patch": math.isqrt(pixels), "num_classes": _shape(sd, "head.weight")[0]}


@register("digits-vit", _digits_shape, _infer_digits_vit)
def digits_vit(dim: int = 8, depth: int = 2, heads: int = 2, mlp: int = 16, patch: int = 4,
               num_classes: int = 10) -> nn.Module:
    """The tiny ViT for 8x8 digits (``patch`` x ``patch`` patches, pre-norm blocks, a linear head)."""
    return TinyViT(dim=dim, depth=depth, heads=heads, mlp=mlp, patch=patch, num_classes=num_classes)


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


def _infer_resnet(sd: StateDict) -> dict:
    """Classes from ``fc.weight``; the stem from ``conv1.weight`` (3x3: CIFAR stem, 7x7: ImageNet stem). The
    image size does not show in the weights (a ResNet is fully convolutional): its default, 32, applies."""
    return {"num_classes": _shape(sd, "fc.weight")[0], "cifar_stem": _shape(sd, "conv1.weight")[-1] == 3}


@register("resnet18", _image_shape, _infer_resnet)
def resnet18(num_classes: int = 10, cifar_stem: bool = True, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-18; ``cifar_stem`` replaces the ImageNet stem by a 3x3 convolution without max-pool."""
    from torchvision.models import resnet18 as factory

    return _resnet(factory, num_classes, cifar_stem)


@register("resnet34", _image_shape, _infer_resnet)
def resnet34(num_classes: int = 10, cifar_stem: bool = True, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-34 (``cifar_stem`` as for :func:`resnet18`)."""
    from torchvision.models import resnet34 as factory

    return _resnet(factory, num_classes, cifar_stem)


@register("resnet50", _image_shape, _infer_resnet)
def resnet50(num_classes: int = 10, cifar_stem: bool = True, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-50 (``cifar_stem`` as for :func:`resnet18`)."""
    from torchvision.models import resnet50 as factory

    return _resnet(factory, num_classes, cifar_stem)


def _vit_shape(image_size: int = 224, **_: object) -> tuple[int, ...]:
    return (3, image_size, image_size)


def _infer_vit_b_16(sd: StateDict) -> dict:
    tokens = _shape(sd, "encoder.pos_embedding")[1] - 1
    side = math.isqrt(tokens)
    out = {"num_classes": _shape(sd, "heads.head.weight")[0]}
    if side * side == tokens:
        out["image_size"] = side * _shape(sd, "conv_proj.weight")[-1]
    return out


@register("vit_b_16", _vit_shape, _infer_vit_b_16)
def vit_b_16(num_classes: int = 1000, image_size: int = 224) -> nn.Module:
    """torchvision's ViT-B/16 for ``image_size`` images and ``num_classes`` classes."""
    from torchvision.models import vit_b_16 as factory

    return factory(weights=None, num_classes=num_classes, image_size=image_size)
