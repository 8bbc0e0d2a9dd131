"""Curvature over training, read back: the curves ``wdbound train --curves`` stores in a checkpoint, or the JSON
Lines file of a :class:`wdbound.Monitor`, as typed records, with the step from which the paper's ordering
(err/d of the AdamW form below the l2-Adam form) holds.

>>> from wdbound.monitor import MonitorRecord
>>> curve = Curve("run", None, "adamw", "adamw", "log", [
...     MonitorRecord(1, 0, err_mean={"adamw": 3.0, "l2-adam": 2.0}),
...     MonitorRecord(2, 0, err_mean={"adamw": 1.0, "l2-adam": 2.0}),
...     MonitorRecord(4, 1, err_mean={"adamw": 1.5, "l2-adam": 2.0})])
>>> curve.ordering_from()
2
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import WdboundError
from .monitor import MonitorRecord

CHECKPOINT_SUFFIXES = (".pt", ".safetensors")


@dataclass(frozen=True)
class Curve:
    """One training run's records: where they came from, the run's architecture and optimizer (None for a
    monitor's file, which does not know them), the schedule, and the records in step order."""

    label: str
    arch: str | None
    optimizer: str | None
    family: str | None  # "adamw" (decoupled) or "l2-adam" (coupled), as the checkpoint records it
    schedule: str | None
    records: list[MonitorRecord]

    def ordering_from(self) -> int | None:
        """The first recorded step from which err/d of the AdamW form stays below the l2-Adam form's to the end
        of the run (None: not at the last record, or err not recorded)."""
        steps = None
        for record in self.records:
            both = record.err_mean or {}
            if "adamw" not in both or "l2-adam" not in both:
                continue
            ordered = both["adamw"] < both["l2-adam"]
            steps = (steps if steps is not None else record.step) if ordered else None
        return steps

    def to_pandas(self):
        """One row per record: ``run``, ``arch``, ``optimizer``, then the record's scalars (err per form as
        ``err_mean/adamw``, ...) and ``step``, ``epoch``, ``eta``."""
        import pandas as pd

        rows = []
        for record in self.records:
            eta = (record.err_inputs or {}).get("eta")
            rows.append({"run": self.label, "arch": self.arch, "optimizer": self.optimizer, "step": record.step,
                         "epoch": record.epoch, "eta": eta, **record.scalars()})
        return pd.DataFrame(rows)

    def to_json(self) -> dict:
        """The curve with every record's fields."""
        return {"label": self.label, "arch": self.arch, "optimizer": self.optimizer, "family": self.family,
                "schedule": self.schedule, "ordering_from_step": self.ordering_from(),
                "records": [r.to_json() for r in self.records]}


def record_from_json(data: dict) -> MonitorRecord:
    """A :class:`MonitorRecord` from its JSON (fields a newer writer added are ignored; missing ones default)."""
    known = {f.name for f in fields(MonitorRecord)}
    if not isinstance(data, dict) or "step" not in data:
        raise WdboundError("a curve record without a step")
    return MonitorRecord(**{k: v for k, v in data.items() if k in known and k != "epoch"},
                         epoch=data.get("epoch"))


def read_curve(path: str | Path) -> Curve:
    """The curve of one checkpoint (``train --curves``) or one monitor JSON Lines file; one that holds none is a
    one-line error."""
    path = Path(path)
    if path.suffix in CHECKPOINT_SUFFIXES:
        from .checkpoints import read_meta

        meta = read_meta(path)
        stored = (meta.get("train") or {}).get("curves")
        if not stored:
            raise WdboundError(f"{path} records no curves: train it with `wdbound train --curves log` (or any "
                               "schedule)", "curves")
        optimizer = meta.get("optimizer") or {}
        return Curve(str(path), meta.get("arch"), optimizer.get("name"), optimizer.get("family"),
                     stored.get("schedule"), [record_from_json(r) for r in stored["records"]])
    if not path.is_file():
        raise WdboundError(f"{path}: no such file")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(record_from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise WdboundError(f"{path}:{number} is not a monitor record ({str(exc).splitlines()[0]})") from None
    if not records:
        raise WdboundError(f"{path} holds no monitor records")
    return Curve(str(path), None, None, None, None, sorted(records, key=lambda r: r.step))


def read_curves(paths) -> list[Curve]:
    """Every curve of ``paths``: checkpoints and JSON Lines files as given; in a folder, the checkpoints that
    record curves (a folder with none is an error)."""
    curves = []
    for path in map(Path, paths):
        if not path.is_dir():
            curves.append(read_curve(path))
            continue
        found = []
        for child in sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES):
            try:
                found.append(read_curve(child))
            except WdboundError:
                continue
        if not found:
            raise WdboundError(f"no checkpoint in {path} records curves (train with --curves)", "curves")
        curves += found
    return curves


def curves_to_pandas(curves: list[Curve]):
    """All curves in one ``pandas.DataFrame`` (rows of :meth:`Curve.to_pandas`)."""
    import pandas as pd

    frames = [c.to_pandas() for c in curves]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


__all__ = ["Curve", "curves_to_pandas", "read_curve", "read_curves", "record_from_json"]
