"""wdbound: Hessian spectra of trained networks and the AdamW / l2-Adam bound terms.

Public API::

    ckpt = wdbound.load_checkpoint("checkpoints/digits-cnn-adamw.pt")
    ckpt.model      # nn.Module in eval mode
    ckpt.meta       # dict: arch, optimizer, train (eta, lam, batch_size, n_train, ...), metrics
    data = wdbound.load_dataset("digits", "test")   # items: (tensor [C, H, W], int label)

The loss every analysis uses is the mean cross-entropy over the chosen split.
"""

__version__ = "0.1.0"

from .checkpoints import Checkpoint, TrainingFacts, load_checkpoint, save_checkpoint  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import WdboundError  # noqa: E402

__all__ = ["Checkpoint", "TrainingFacts", "WdboundError", "__version__", "load_checkpoint", "load_dataset",
           "save_checkpoint"]
