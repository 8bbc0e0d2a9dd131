"""The monitor inside the frameworks people train with: a Hugging Face ``Trainer`` callback.

``transformers`` is optional: this module imports it, the rest of wdbound does not.

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


__all__ = ["HuggingFaceMonitor"]
