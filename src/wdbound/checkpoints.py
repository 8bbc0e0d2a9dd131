"""Safe loading and atomic saving of checkpoints.

Checkpoints are untrusted files. ``.pt`` files are read with
``torch.load(..., weights_only=True)``, which refuses any pickled object that
is not a tensor, dict, list, string or number, so a malicious pickle cannot
run code. ``.safetensors`` files carry no code at all.

A wdbound checkpoint (format ``wdbound/1``) is a plain dict::

    format       "wdbound/1"
    arch         registry name (see wdbound.models)
    arch_kwargs  dict of constructor arguments
    state_dict   model tensors, BatchNorm buffers included
    optimizer    {"name", "hyper": {...}, "state": {param: {"exp_avg", "exp_avg_sq", "step"}}}
    train        {"data", "n_train", "batch_size", "epochs", "steps", "lr_schedule",
                  "eta", "wd_schedule", "lam", "seed", "command", "versions", ...}
    metrics      {"train_loss", "test_loss", "test_acc"}

In ``.safetensors`` the tensors are stored under ``model/<name>`` and
``optim/<param>/<moment>``, the rest as JSON in the header metadata under the
key ``wdbound``. A plain state_dict (``.pt`` or ``.safetensors``, optionally
nested under ``state_dict`` or ``model``) loads when the architecture and the
training facts are passed as overrides.
"""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WdboundError
from .io_utils import atomic_path, sha256_file
from .models import arch_arguments, build_model, count_parameters, infer_arch_kwargs

FORMAT = "wdbound/1"
_FACTS = ("eta", "lam", "batch_size", "n_train")
FACT_NAMES = {"eta": "eta (the last learning rate)", "lam": "lam (lambda, the last weight decay)",
              "batch_size": "batch_size (b, the minibatch size)", "n_train": "n_train (n, the training-set size)"}


@dataclass(frozen=True)
class TrainingFacts:
    """The training facts the bounds need, each from the checkpoint or an override."""

    eta: float  # last learning rate actually used
    lam: float  # weight decay at the last step
    batch_size: int
    n_train: int


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode and its metadata."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        """The file name without its suffix."""
        return self.path.stem

    @property
    def optimizer_name(self) -> str | None:
        """The optimizer that trained the checkpoint (``adamw``, ``l2-adam-d``, ...), None when not recorded."""
        return optimizer_name(self.meta)

    def facts(self) -> TrainingFacts:
        """η, λ, b and n read from the metadata (see :func:`training_facts`)."""
        return training_facts(self.meta)


def optimizer_name(meta: dict[str, Any]) -> str | None:
    """The optimizer name recorded in checkpoint metadata (None for a plain state_dict)."""
    name = (meta.get("optimizer") or {}).get("name")
    return None if name is None else str(name)


@dataclass(frozen=True)
class CheckpointSummary:
    """One row of ``wdbound summary``: what a checkpoint records (None where it does not record it)."""

    path: str
    arch: str
    optimizer: str | None
    params: int  # d, the trainable parameters
    epochs: int | None
    eta: float | None  # the last learning rate
    lam: float | None  # the last weight decay
    batch_size: int | None
    n_train: int | None
    test_acc: float | None  # a fraction
    sha256: str

    def to_json(self) -> dict:
        """The row by field name."""
        return asdict(self)


def summarise(path: str | Path) -> CheckpointSummary:
    """Load ``path`` (safely, :func:`load_checkpoint`) and read off its :class:`CheckpointSummary`; a file that
    does not load is a one-line :class:`WdboundError`."""
    ckpt = load_checkpoint(path)
    train, metrics = ckpt.meta.get("train") or {}, ckpt.meta.get("metrics") or {}

    def number(value, kind):
        try:
            return None if value is None else kind(value)
        except (TypeError, ValueError):
            return None

    return CheckpointSummary(str(path), str(ckpt.meta["arch"]), ckpt.optimizer_name, count_parameters(ckpt.model),
                             number(train.get("epochs"), int), number(train.get("eta"), float),
                             number(train.get("lam"), float), number(train.get("batch_size"), int),
                             number(train.get("n_train"), int), number(metrics.get("test_acc"), float), ckpt.sha256)


def checkpoint_paths(paths: list[Path]) -> list[Path]:
    """Files as given and, for each folder, its ``.pt`` / ``.safetensors`` files in name order; none at all is a
    one-line error."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".pt", ".safetensors"))
        else:
            found.append(path)
    if not found:
        raise WdboundError(f"no checkpoints (.pt, .safetensors) in {', '.join(map(str, paths))}")
    return found


def training_facts(meta: dict[str, Any]) -> TrainingFacts:
    """Read η, λ, b and n from metadata; a missing or invalid one is an error naming that parameter."""
    train = meta.get("train") or {}
    values: dict[str, Any] = {}
    missing = [key for key in _FACTS if train.get(key) is None]
    if missing:
        names = [FACT_NAMES[k] for k in missing]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        raise WdboundError(f"the checkpoint does not record {listed}, which the bounds need", missing[0],
                           tuple(missing))
    for key in _FACTS:
        value = train.get(key)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise WdboundError(f"{key} = {value!r} is not a number", key) from None
        if not math.isfinite(number):
            raise WdboundError(f"{key} = {value} is not finite", key)
        values[key] = number
    if values["eta"] <= 0:
        raise WdboundError(f"learning rate eta = {values['eta']:g} must be > 0 (the bounds divide by it)", "eta")
    if values["lam"] < 0:
        raise WdboundError(f"weight decay lambda = {values['lam']:g} must be >= 0", "lam")
    for key in ("batch_size", "n_train"):
        if values[key] <= 0 or values[key] != int(values[key]):
            raise WdboundError(f"{key} = {values[key]:g} must be a positive integer", key)
    return TrainingFacts(values["eta"], values["lam"], int(values["batch_size"]), int(values["n_train"]))


# ---------------------------------------------------------------- loading

def load_checkpoint(path: str | Path, *, arch: str | None = None, arch_kwargs: dict | None = None,
                    lr: float | None = None, wd: float | None = None, batch_size: int | None = None,
                    n_train: int | None = None, dtype: torch.dtype = torch.float32, optimizer: str | None = None,
                    epochs: int | None = None) -> Checkpoint:
    """Load a checkpoint safely and rebuild its model (eval mode).

    Overrides replace what the file records (or supply what a plain
    state_dict lacks): ``arch``/``arch_kwargs`` the architecture, ``lr`` the
    last learning rate η, ``wd`` the last weight decay λ, ``batch_size`` b,
    ``n_train`` n, ``optimizer`` the training rule (``adamw``, ``l2-adam-d``, ...)
    and ``epochs`` the training length.
    """
    path = Path(path)
    if not path.is_file():
        raise WdboundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        state_dict, meta = _read_safetensors(path)
    else:
        state_dict, meta = _read_torch(path)
    meta = copy.deepcopy(meta)
    if arch is not None:
        meta["arch"] = arch
    if not meta.get("arch"):
        from .models import fitting_architectures

        fits = fitting_architectures(state_dict)
        raise WdboundError(f"{path} is a plain state_dict without an architecture"
                           + (f"; it fits {' and '.join(fits)}" if fits else "; no registered architecture fits its "
                              "keys and shapes (a model factory may)"), "arch")
    if meta.get("format") == "state_dict" and not str(meta["arch"]).startswith("factory:"):
        # a plain state_dict: what its shapes say (classes, stem, widths, image size), under any given arguments
        inferred = infer_arch_kwargs(meta["arch"], state_dict)
        meta["arch_kwargs_inferred"] = inferred
        meta["arch_kwargs"] = {**inferred, **dict(arch_kwargs or {})}
    elif arch_kwargs is not None:
        meta["arch_kwargs"] = dict(arch_kwargs)
    train = meta.setdefault("train", {})
    for key, value in (("eta", lr), ("lam", wd), ("batch_size", batch_size), ("n_train", n_train), ("epochs", epochs)):
        if value is not None:
            train[key] = value
    if optimizer is not None:
        from .optim import OPTIMIZERS

        if optimizer not in OPTIMIZERS:
            raise WdboundError(f"unknown training rule {optimizer!r}; use {', '.join(OPTIMIZERS)}", "optimizer")
        meta["optimizer"] = {**(meta.get("optimizer") or {}), "name": optimizer}
    model = build_model(meta["arch"], **dict(meta.get("arch_kwargs") or {}))
    _fit_state_dict(model, state_dict, meta["arch"], path)
    model.to(dtype).eval()
    return Checkpoint(model, meta, path, sha256_file(path))


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (optimizer state included) without building its model; same safety as
    :func:`load_checkpoint`. A plain state_dict gives ``{"format": "state_dict"}``."""
    path = Path(path)
    if not path.is_file():
        raise WdboundError(f"{path}: no such checkpoint file")
    _, meta = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return meta


def _short(exc: BaseException) -> str:
    r"""The cause of a failed load in one line. torch's weights-only refusal is reduced to the unpickler's own
    reason (its preamble suggests ``weights_only=False``, which would run the file's code).

    >>> _short(ValueError("Weights only load failed. ... WeightsUnpickler error: \n\nUnsupported operand 149\n\nCheck"))
    'refused by the weights-only unpickler: Unsupported operand 149'
    >>> _short(EOFError())
    'EOFError'
    """
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "Weights only load failed" in message:
        reason = message.split("WeightsUnpickler error:", 1)[1].strip().splitlines() if "WeightsUnpickler error:" \
            in message else []
        return "refused by the weights-only unpickler" + (f": {reason[0].strip()[:120]}" if reason else "")
    text = message.strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:160]


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a pickle, or a pickle with forbidden globals
        raise WdboundError(f"{path}: not a loadable checkpoint ({_short(exc)}); only tensors and plain data are accepted") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        state_dict = obj.get("state_dict")
        if not isinstance(state_dict, dict):
            raise WdboundError(f"{path}: wdbound checkpoint without a state_dict")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return state_dict, meta
    if isinstance(obj, dict) and "format" in obj:
        raise WdboundError(f"{path}: unknown checkpoint format {obj['format']!r} (this wdbound reads {FORMAT})")
    state_dict = _plain_state_dict(obj)
    if state_dict is None:
        raise WdboundError(f"{path}: neither a wdbound checkpoint nor a state_dict of tensors")
    return state_dict, {"format": "state_dict"}


def _plain_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise WdboundError(f"{path}: not a readable safetensors file ({_short(exc)})") from None
    if "wdbound" not in header:
        return tensors, {"format": "state_dict"}
    try:
        meta = json.loads(header["wdbound"])
    except json.JSONDecodeError as exc:
        raise WdboundError(f"{path}: corrupt wdbound metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WdboundError(f"{path}: unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    state_dict = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optim_state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            param, _, moment = key[len("optim/"):].rpartition("/")
            optim_state.setdefault(param, {})[moment] = value
    if optim_state and isinstance(meta.get("optimizer"), dict):
        steps = meta["optimizer"].pop("steps", {})
        for param, entry in optim_state.items():
            entry["step"] = steps.get(param, 0)
        meta["optimizer"]["state"] = optim_state
    return state_dict, meta


def _fit_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    takes = arch_arguments(arch)
    hint = (f"; {arch} takes {', '.join(takes)}: pass the one that differs as an architecture argument KEY=VALUE"
            if takes else "; pass the architecture's arguments KEY=VALUE")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        from .models import fitting_architectures

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        fits = fitting_architectures(state_dict, exclude=arch)
        advice = (f"; it fits {' and '.join(fits)}" if fits else
                  hint if arch == "digits-mlp" or "depth" in takes else
                  "; no registered architecture fits its keys (a model factory may)")
        raise WdboundError(f"{path}: state_dict does not fit arch {arch!r}: {'; '.join(parts)}{advice}", "arch")
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise WdboundError(
                f"{path}: state_dict does not fit arch {arch!r}: {key} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[key].shape)}{hint}",
                "arch_kwarg",
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WdboundError(f"{path}: weights contain NaN or infinity ({key})")
    model.load_state_dict(state_dict)


# ---------------------------------------------------------------- saving

def save_checkpoint(path: str | Path, model: nn.Module, *, arch: str, arch_kwargs: dict | None = None,
                    optimizer: "dict | str", train: dict, metrics: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a wdbound/1 checkpoint atomically (``.pt`` or ``.safetensors`` by suffix): the weights with the
    facts the bounds need, from any training loop.

    ``arch`` (+ ``arch_kwargs``) rebuilds the model: a registry name (``resnet18``, ``timm:NAME``,
    ``digits-cnn``) or ``factory:module:function``. ``optimizer`` is the training rule's name (``adamw``,
    ``adamw-d``, ``l2-adam``, ``l2-adam-d``, ``adamprox``, ``adams``, ``adal``) or a dict with ``name`` (and,
    for the update histograms, ``state``: torch's ``optimizer.state_dict()["state"]``). ``train`` holds the
    last learning rate ``eta``, the last weight decay ``lam``, ``batch_size``, ``n_train`` and ``epochs``;
    ``metrics`` e.g. ``test_acc`` in [0, 1]. A missing or invalid fact is a one-line error here, not at
    analysis time.

    >>> import tempfile, pathlib
    >>> from wdbound.models import build_model
    >>> model = build_model("digits-mlp", hidden=8)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.pt"
    >>> _ = save_checkpoint(path, model, arch="digits-mlp", arch_kwargs={"hidden": 8}, optimizer="adamw",
    ...                     train={"eta": 1e-4, "lam": 0.05, "batch_size": 64, "n_train": 1437, "epochs": 40},
    ...                     metrics={"test_acc": 0.93})
    >>> ckpt = load_checkpoint(path)
    >>> ckpt.optimizer_name, ckpt.facts().eta, ckpt.meta["train"]["epochs"]
    ('adamw', 0.0001, 40)
    """
    from .optim import OPTIMIZERS

    optimizer = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer)
    if optimizer.get("name") not in OPTIMIZERS:
        raise WdboundError(f"unknown training rule {optimizer.get('name')!r}; use {', '.join(OPTIMIZERS)}",
                           "optimizer")
    training_facts({"train": train})
    arch_kwargs, metrics = arch_kwargs or {}, metrics or {}
    path = Path(path)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "arch": arch, "arch_kwargs": dict(arch_kwargs), "state_dict": state_dict,
               "optimizer": optimizer, "train": train, "metrics": metrics, **(extra or {})}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            _write_safetensors(tmp, payload)
        else:
            torch.save(payload, tmp)
    return path


def _write_safetensors(tmp: Path, payload: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v.contiguous() for k, v in payload["state_dict"].items()}
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    optimizer = copy.deepcopy({k: v for k, v in meta["optimizer"].items() if k != "state"})
    steps = {}
    for param, entry in (payload["optimizer"].get("state") or {}).items():
        for moment, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{param}/{moment}"] = value.contiguous()
            else:
                steps[param] = value
    optimizer["steps"] = steps
    meta["optimizer"] = optimizer
    save_file(tensors, str(tmp), metadata={"wdbound": json.dumps(meta)})
