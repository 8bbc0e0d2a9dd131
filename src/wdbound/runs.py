"""Your own training runs in Table I: a runs file (CSV or TOML) naming, per checkpoint, what a plain state_dict
does not record.

A row (CSV: one line under a header; TOML: one ``[[run]]`` table) has:

=============  ======================================================================================
``path``       the checkpoint, relative to the runs file's folder (or absolute); required
``arch``       architecture registry name (``resnet18``, ``timm:vit_small_patch16_224``, ``digits-cnn``)
``arch_kwargs`` its arguments: ``key=value`` pairs separated by ``;`` in CSV, an inline table in TOML
``model_factory`` ``module:function`` building the model instead of ``arch``
``optimizer``  the training rule: adamw, adamw-d, l2-adam, l2-adam-d, adamprox, adams, adal
``lr``         η, the last learning rate; ``wd``: λ, the last weight decay
``batch_size`` b; ``n_train``: n, the training-set size
``epochs``     the training length (Table I's column)
``label``      the model's name in the table (default: the architecture and its non-default arguments)
``test_acc``   the test accuracy in [0, 1] (default: recorded, else computed on the evaluation data)
=============  ======================================================================================

Empty cells (CSV) and absent keys (TOML) keep what the checkpoint records. A wdbound checkpoint needs no
column but ``path``.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "runs.csv").write_text("path,arch,arch_kwargs,optimizer,lr,wd,batch_size,n_train,epochs\\n"
...                                      "a.pt,digits-mlp,depth=2;hidden=8,adamw,1e-4,0.05,64,1437,40\\n")
>>> run = read_runs(folder / "runs.csv")[0]
>>> run.path.name, run.arch_kwargs, run.optimizer, run.epochs
('a.pt', {'depth': 2, 'hidden': 8}, 'adamw', 40)
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WdboundError

COLUMNS = ("path", "arch", "arch_kwargs", "model_factory", "optimizer", "lr", "wd", "batch_size", "n_train", "epochs",
           "label", "test_acc")
_FLOATS = ("lr", "wd", "test_acc")
_INTS = ("batch_size", "n_train", "epochs")


@dataclass(frozen=True)
class RunSpec:
    """One checkpoint and what to tell about it beyond (or instead of) what it records (None: keep the record).
    The same overrides the model/data/facts flags of ``err`` and ``table`` give every checkpoint."""

    path: Path
    arch: str | None = None
    arch_kwargs: dict | None = None
    model_factory: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    wd: float | None = None
    batch_size: int | None = None
    n_train: int | None = None
    epochs: int | None = None
    label: str | None = None
    test_acc: float | None = None

    def resolved_arch(self) -> str | None:
        """``arch``, or ``factory:<model_factory>``; both given is an error."""
        if self.model_factory:
            if self.arch:
                raise WdboundError(f"{self.path.name}: give either arch or model_factory, not both", "runs")
            return f"factory:{self.model_factory}"
        return self.arch

    def with_defaults(self, shared: "RunSpec") -> "RunSpec":
        """This run with every unset field taken from ``shared`` (the command line's flags)."""
        values = {name: getattr(self, name) for name in COLUMNS}
        for name in COLUMNS[1:]:
            if values[name] is None:
                values[name] = getattr(shared, name)
        return RunSpec(**values)


def parse_arch_kwargs(text: str, where: str) -> dict:
    """``key=value;key=value`` with JSON values where they parse (``depth=8;cifar_stem=false``).

    >>> parse_arch_kwargs("depth=8; act=tanh", "x")
    {'depth': 8, 'act': 'tanh'}
    """
    out = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise WdboundError(f"{where}: arch_kwargs item {item!r} is not key=value", "runs")
        try:
            out[key.strip()] = json.loads(raw.strip())
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip()
    return out


def _value(name: str, raw: Any, where: str) -> Any:
    """One cell as its field's type (None when empty); a bad number is a one-line error naming the cell."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if name == "arch_kwargs":
        if isinstance(raw, dict):
            return dict(raw)
        return parse_arch_kwargs(str(raw), where)
    if name in _FLOATS or name in _INTS:
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise WdboundError(f"{where}: {name} = {raw!r} is not a number", "runs") from None
        if not math.isfinite(number):
            raise WdboundError(f"{where}: {name} = {raw!r} is not finite", "runs")
        if name in _INTS:
            if number != int(number) or number <= 0:
                raise WdboundError(f"{where}: {name} = {raw!r} must be a positive integer", "runs")
            return int(number)
        return number
    return str(raw).strip()


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(where, raw fields) per run of a CSV or TOML runs file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise WdboundError(f"{path}: cannot read the runs file ({str(exc).splitlines()[0][:100]})", "runs") from None
    if path.suffix.lower() == ".toml":
        try:
            runs = tomllib.loads(text).get("run")
        except tomllib.TOMLDecodeError as exc:
            raise WdboundError(f"{path}: not valid TOML ({exc})", "runs") from None
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise WdboundError(f"{path}: expected [[run]] tables", "runs")
        return [(f"{path.name} run {i + 1}", r) for i, r in enumerate(runs)]
    if path.suffix.lower() != ".csv":
        raise WdboundError(f"{path}: a runs file ends in .csv or .toml", "runs")
    reader = csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not reader.fieldnames:
        raise WdboundError(f"{path}: empty runs file (expected a header line with path, arch, ...)", "runs")
    return [(f"{path.name} line {i + 2}", dict(r)) for i, r in enumerate(reader)]


def read_runs(path: str | Path) -> list[RunSpec]:
    """The runs of a runs file (see the module docstring); paths are resolved against the file's folder.
    Unknown columns, a missing path, a bad number or an empty file are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise WdboundError(f"{path}: no such runs file", "runs")
    runs = []
    for where, raw in _rows(path):
        unknown = sorted(set(raw) - set(COLUMNS) - {None})
        if unknown or None in raw:
            bad = ", ".join(unknown) if unknown else "a cell beyond the header"
            raise WdboundError(f"{where}: unknown column {bad} (columns: {', '.join(COLUMNS)})", "runs")
        values = {name: _value(name, raw.get(name), where) for name in COLUMNS}
        if not values["path"]:
            raise WdboundError(f"{where}: no path", "runs")
        file = Path(values["path"]).expanduser()
        values["path"] = file if file.is_absolute() else path.parent / file
        if values["test_acc"] is not None and not 0 <= values["test_acc"] <= 1:
            raise WdboundError(f"{where}: test_acc = {values['test_acc']} must be in [0, 1]", "runs")
        runs.append(RunSpec(**values))
    if not runs:
        raise WdboundError(f"{path}: no runs", "runs")
    return runs
