"""Where a :class:`~wdbound.monitor.Monitor` writes its records: JSON Lines (always available), TensorBoard
(through ``torch.utils.tensorboard``, which needs the ``tensorboard`` package) and Weights & Biases (when
``wandb`` is installed). Every sink has ``write(record)`` and ``close()``; any object with those two methods
can be passed to the monitor as a sink of its own.

The scalars are the record's :meth:`~wdbound.monitor.MonitorRecord.scalars` under the tag ``wdbound/<name>``
at the record's training step; the update-magnitude histograms (quantity ``updates``) go to TensorBoard as
histograms of :math:`\\log_2 |\\hat m / (\\sqrt{\\hat v} + \\epsilon)|` (one bucket per log2 bin, the bins of
``wdbound updates``), and to W&B as ``wandb.Histogram`` of the same buckets.

>>> import json, tempfile, pathlib
>>> from wdbound.monitor import MonitorRecord
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "curves.jsonl").write_text('{"step": 1}\\n{"step": 2, "lo')  # a record cut off mid-write
27
>>> sink = JsonLinesSink(folder / "curves.jsonl")
>>> sink.write(MonitorRecord(step=3, epoch=None, loss=0.5)); sink.close()
>>> [json.loads(line)["step"] for line in (folder / "curves.jsonl").read_text().splitlines()]
[1, 3]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import WdboundError
from .stats import BINS, LOW_EXP

TAG = "wdbound"


class JsonLinesSink:
    """One JSON object per record, one line each, appended and flushed to disk as each record finishes.

    A line is written whole with one ``write`` and synced; a file whose last line was cut off (the process was
    killed mid-write) has that partial line removed when the sink opens it, so every line of the file is a
    complete record."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(self.path)

    def write(self, record) -> None:
        """Append ``record`` as one line."""
        line = json.dumps(record.to_json()) + "\n"
        with open(self.path, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Nothing held open between records."""


class TensorBoardSink:
    """Scalars and update histograms as TensorBoard events (``torch.utils.tensorboard.SummaryWriter``).

    ``target``: a log directory, or a ``SummaryWriter`` of your own (then left open on :meth:`close`)."""

    def __init__(self, target) -> None:
        if isinstance(target, (str, Path)):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise WdboundError("TensorBoard logging needs the tensorboard package (pip install tensorboard)",
                                   "tensorboard") from None
            self.writer, self.owned = SummaryWriter(log_dir=str(target)), True
        else:
            self.writer, self.owned = target, False

    def write(self, record) -> None:
        """Every scalar of the record, and its update histograms, at the record's step."""
        for name, value in record.scalars().items():
            self.writer.add_scalar(f"{TAG}/{name}", value, record.step)
        for layer, counts in (record.updates or {}).items():
            counts = np.asarray(counts, dtype=np.float64)
            if counts.sum() == 0:
                continue
            centres = bin_centres_log2()
            self.writer.add_histogram_raw(f"{TAG}/updates/{layer}", min=float(centres[counts > 0].min()),
                                          max=float(centres[counts > 0].max()), num=int(counts.sum()),
                                          sum=float((counts * centres).sum()),
                                          sum_squares=float((counts * centres**2).sum()),
                                          bucket_limits=bin_upper_log2().tolist(), bucket_counts=counts.tolist(),
                                          global_step=record.step)
        self.writer.flush()

    def close(self) -> None:
        """Close the writer this sink opened."""
        if self.owned:
            self.writer.close()


class WandbSink:
    """Scalars and update histograms logged to a Weights & Biases run at the record's step.

    ``run``: a ``wandb`` run (``wandb.init(...)``'s result), or ``True`` for the active run (``wandb.run``)."""

    def __init__(self, run=True) -> None:
        try:
            import wandb
        except ImportError:
            raise WdboundError("Weights & Biases logging needs the wandb package (pip install wandb)",
                               "wandb") from None
        self.wandb = wandb
        self.run = wandb.run if run is True else run
        if self.run is None:
            raise WdboundError("no active wandb run: call wandb.init(...) first, or pass the run", "wandb")

    def write(self, record) -> None:
        """One ``run.log`` of every scalar and histogram of the record."""
        logged = {f"{TAG}/{name}": value for name, value in record.scalars().items()}
        for layer, counts in (record.updates or {}).items():
            edges = np.concatenate([[bin_upper_log2()[0] - 1.0], bin_upper_log2()])
            logged[f"{TAG}/updates/{layer}"] = self.wandb.Histogram(np_histogram=(np.asarray(counts), edges))
        self.run.log(logged, step=record.step)

    def close(self) -> None:
        """The run stays the user's to finish."""


def bin_upper_log2() -> np.ndarray:
    """The upper edge of each update bin in log2 units: ``LOW_EXP, ..., -1, 0, 1`` (the last bin, >= 1, is drawn
    one unit wide).

    >>> bin_upper_log2()[[0, 1, -2, -1]].tolist()
    [-27.0, -26.0, 0.0, 1.0]
    """
    return np.arange(LOW_EXP, LOW_EXP + BINS, dtype=np.float64)


def bin_centres_log2() -> np.ndarray:
    """The middle of each bin in log2 units (what the histogram's sums are computed from)."""
    return bin_upper_log2() - 0.5


def sinks_for(path=None, tensorboard=None, wandb=None, extra=()) -> list:
    """The sinks a monitor writes to: JSON Lines at ``path``, TensorBoard at ``tensorboard`` (a directory or a
    ``SummaryWriter``), W&B to ``wandb`` (a run, or True for the active one), then any ``extra`` sinks."""
    sinks = [JsonLinesSink(path)] if path is not None else []
    if tensorboard is not None:
        sinks.append(TensorBoardSink(tensorboard))
    if wandb is not None and wandb is not False:
        sinks.append(WandbSink(wandb))
    for sink in extra:
        if not (callable(getattr(sink, "write", None)) and callable(getattr(sink, "close", None))):
            raise WdboundError(f"a sink needs write(record) and close() methods; {type(sink).__name__} has not",
                               "sinks")
        sinks.append(sink)
    return sinks


def _drop_partial_line(path: Path) -> None:
    """Truncate ``path`` after its last complete line (nothing to do when it is missing or ends in a newline)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


__all__ = ["JsonLinesSink", "TensorBoardSink", "WandbSink", "sinks_for"]
