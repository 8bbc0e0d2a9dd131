"""The monitor inside the frameworks people train with: a Hugging Face ``Trainer`` callback and a Lightning
callback.

``transformers`` and ``lightning`` are optional: this module imports them, the rest of wdbound does not.

    callback = HuggingFaceMonitor(eval_data, every=50, path="curvature.jsonl")
    Trainer(model=model, args=args, train_dataset=train, callbacks=[callback]).train()
    callback.monitor.to_pandas()

The callback builds a :class:`wdbound.monitor.Monitor` on the model and optimizer the ``Trainer`` made (at the
start of training) and counts every optimizer step; records follow the monitor's schedule and never change
training.
"""

from __future__ import annotations

from .errors import WdboundError
from .monitor import Monitor

try:
    from transformers import TrainerCallback as _Base
except ImportError:  # pragma: no cover - without transformers the class cannot be used, and says so
    _Base = object
try:
    from lightning.pytorch import Callback as _LightningBase
except ImportError:  # pragma: no cover - the standalone package of older releases, else unusable (and says so)
    try:
        from pytorch_lightning import Callback as _LightningBase
    except ImportError:
        _LightningBase = object


class HuggingFaceMonitor(_Base):
    """A ``transformers.TrainerCallback`` that records curvature with a :class:`~wdbound.monitor.Monitor`.

    Parameters
    ----------
    data:
        The evaluation data of the Hessian, as :class:`wdbound.Hessian` takes it: e.g. ``({"input_ids": ids},
        next_token_targets)`` for a causal language model (targets aligned with the positions; wdbound does not
        shift them), or a ``DataLoader`` of dicts with ``"labels"``.
    **monitor_options:
        Passed to :class:`~wdbound.monitor.Monitor` (``every``, ``schedule``, ``quantities``, ``top_k``,
        ``path``, ``dtype``, ...).
    """

    def __init__(self, data, **monitor_options) -> None:
        if _Base is object:
            raise WdboundError("HuggingFaceMonitor needs transformers (pip install transformers)")
        self.data, self.options = data, monitor_options
        self.monitor: Monitor | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Build the monitor on the Trainer's model and optimizer."""
        if model is None or optimizer is None:
            raise WdboundError("the Trainer gave the callback no model or optimizer at the start of training")
        self.monitor = Monitor(model, optimizer, self.data, **self.options)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        """One optimizer step taken: the monitor records when its schedule says so."""
        if self.monitor is not None:
            self.monitor.step()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        """With ``schedule="epochs"``: a record at each epoch's end."""
        if self.monitor is not None and self.monitor.schedule == "epochs":
            self.monitor.epoch_end(round(state.epoch) - 1 if state.epoch is not None else None)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        """Close the monitor's sinks."""
        if self.monitor is not None:
            self.monitor.close()
        return control


class LightningMonitor(_LightningBase):
    """A Lightning ``Callback`` that records curvature with a :class:`~wdbound.monitor.Monitor`.

        callback = LightningMonitor((x_eval, y_eval), every=50, tensorboard="runs/curvature")
        lightning.Trainer(max_epochs=10, callbacks=[callback]).fit(module, loader)
        callback.monitor.to_pandas()

    Parameters
    ----------
    data:
        The evaluation data of the Hessian, as :class:`wdbound.Hessian` takes it.
    submodule:
        The attribute of the ``LightningModule`` that maps inputs to logits (e.g. ``"net"``); default: the
        module itself (its ``forward`` must then return the logits).
    **monitor_options:
        Passed to :class:`~wdbound.monitor.Monitor`.

    The monitor counts optimizer steps (``trainer.global_step``), so gradient accumulation is counted as the
    optimizer sees it; the first optimizer of ``configure_optimizers`` is the one read.
    """

    def __init__(self, data, submodule: str | None = None, **monitor_options) -> None:
        if _LightningBase is object:
            raise WdboundError("LightningMonitor needs lightning (pip install lightning)")
        self.data, self.submodule, self.options = data, submodule, monitor_options
        self.monitor: Monitor | None = None
        self._seen_steps = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        """Build the monitor on the module (or its ``submodule``) and the trainer's first optimizer."""
        if not trainer.optimizers:
            raise WdboundError("the Lightning module configured no optimizer")
        model = getattr(pl_module, self.submodule) if self.submodule else pl_module
        self.monitor = Monitor(model, trainer.optimizers[0], self.data, **self.options)
        self._seen_steps = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Count the optimizer steps taken since the last batch; the monitor records when its schedule says so."""
        while self.monitor is not None and self._seen_steps < trainer.global_step:
            self._seen_steps += 1
            self.monitor.step()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """With ``schedule="epochs"``: a record at each epoch's end."""
        if self.monitor is not None and self.monitor.schedule == "epochs":
            self.monitor.epoch_end(trainer.current_epoch)

    def on_fit_end(self, trainer, pl_module) -> None:
        """Close the monitor's sinks."""
        if self.monitor is not None:
            self.monitor.close()


__all__ = ["HuggingFaceMonitor", "LightningMonitor"]
