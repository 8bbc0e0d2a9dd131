"""wdbound: Hessian spectra of trained networks and the AdamW / l2-Adam bound terms.

Public API::

    ckpt = wdbound.load_checkpoint("checkpoints/digits-cnn-adamw-e40.pt")
    ckpt.model      # nn.Module in eval mode
    ckpt.meta       # dict: arch, optimizer, train (eta, lam, batch_size, n_train, ...), metrics
    data = wdbound.load_dataset("digits", "test")   # items: (tensor [C, H, W], int label)

    H = wdbound.Hessian(model, (inputs, targets), loss=None)   # any nn.Module, any mean loss
    H.top_eigenvalues(5); H.trace(); H.diagonal(); H.density(); H.exact()
    wdbound.err(H, eta=1e-4, lam=5e-2, b=64, n=1437, optimizer="adamw")   # Corollary 3 of that optimizer's form
    report = wdbound.table("checkpoints/")   # Table I as `wdbound table` makes it; report.to_pandas()

The CLI's loss is the mean cross-entropy over the chosen split; the Python API takes any mean loss.
"""

import os as _os

# Large CPU tensors on transparent huge pages (PyTorch's allocator madvises blocks of 2 MB and more when this is
# set): a fresh 90 MB vector is faulted in 4-5x faster, and `wdbound spectrum` on an 11 M-parameter ResNet-18 took
# 68 s against 77 s (docs/decisions.md, "Large-model overhead"). PyTorch reads it once, at its first allocation,
# so it acts when wdbound is imported before torch (the CLI always is); a value already set is kept.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from ._version import __version__  # noqa: E402

from .checkpoints import Checkpoint, TrainingFacts, load_checkpoint, save_checkpoint  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import WdboundError  # noqa: E402
from .api import Density, ErrResult, ExactSpectrum, Hessian, err, table  # noqa: E402
from .monitor import Monitor  # noqa: E402
from .updates import UpdateRecorder  # noqa: E402

__all__ = ["Checkpoint", "Density", "ErrResult", "ExactSpectrum", "Hessian", "Monitor", "TrainingFacts", "UpdateRecorder", "WdboundError",
           "__version__", "err", "load_checkpoint", "load_dataset", "save_checkpoint", "table"]
