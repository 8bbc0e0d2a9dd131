"""What produced a number: library versions and the checkpoint / data facts every result records.

>>> sorted(library_versions())
['numpy', 'python', 'scikit-learn', 'torch', 'wdbound']
"""

from __future__ import annotations

import platform


def library_versions() -> dict[str, str]:
    """Versions of wdbound and of the libraries whose arithmetic the numbers depend on."""
    import numpy as np
    import sklearn
    import torch

    from . import __version__

    # str(): torch.__version__ is a str subclass that weights_only loading refuses.
    return {"wdbound": str(__version__), "torch": str(torch.__version__), "numpy": str(np.__version__),
            "scikit-learn": str(sklearn.__version__), "python": platform.python_version()}


def checkpoint_provenance(ckpt, data: str, cache_key: str) -> dict:
    """The checkpoint a result was computed from (path, SHA-256, architecture and how it was read), the data
    spec it was evaluated on and the cache key of the result."""
    return {"checkpoint": str(ckpt.path), "checkpoint_sha256": ckpt.sha256, "arch": ckpt.meta.get("arch"),
            "arch_kwargs": ckpt.meta.get("arch_kwargs"), "arch_kwargs_inferred": ckpt.meta.get("arch_kwargs_inferred"),
            "data": data, "cache_key": cache_key}
