"""What produced a number: library versions and the checkpoint / data facts every result records.

>>> sorted(library_versions())
['numpy', 'python', 'scikit-learn', 'torch', 'wdbound']
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def library_versions() -> dict[str, str]:
    """Versions of wdbound and of the libraries whose arithmetic the numbers depend on."""
    from importlib.metadata import version

    import numpy as np
    import torch

    from ._version import __version__

    # str(): torch.__version__ is a str subclass that weights_only loading refuses. scikit-learn's version is
    # read from its metadata: importing it takes a second where the data is not the digits.
    return {"wdbound": str(__version__), "torch": str(torch.__version__), "numpy": str(np.__version__),
            "scikit-learn": version("scikit-learn"), "python": platform.python_version()}


def checkpoint_provenance(ckpt, data: str, cache_key: str) -> dict:
    """The checkpoint a result was computed from (path, SHA-256, architecture and how it was read), the data
    spec it was evaluated on and the cache key of the result."""
    return {"checkpoint": str(ckpt.path), "checkpoint_sha256": ckpt.sha256, "arch": ckpt.meta.get("arch"),
            "arch_kwargs": ckpt.meta.get("arch_kwargs"), "arch_kwargs_inferred": ckpt.meta.get("arch_kwargs_inferred"),
            "data": data, "cache_key": cache_key}


def made_by() -> dict:
    """The wdbound release and source commit that make a report: ``{"wdbound": version, "commit": sha or None,
    "dirty": bool}``. The commit is read with git from the package's source folder when it is a git checkout
    (an editable install); ``dirty`` says that the sources (``src/``) differ from that commit. Outside a
    checkout (a wheel install) the commit is None."""
    from ._version import __version__

    source = Path(__file__).resolve().parent
    commit, dirty = None, False
    try:
        run = {"cwd": source, "capture_output": True, "text": True, "timeout": 10, "check": True}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", str(source)], **run).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"wdbound": str(__version__), "commit": commit, "dirty": dirty}


def stamp(made: dict) -> str:
    """One line naming what :func:`made_by` found: ``wdbound 0.9.0, commit 1a2b3c4d5e6f`` (``+ local changes``).

    >>> stamp({"wdbound": "1.0", "commit": "0123456789abcdef", "dirty": True})
    'made by wdbound 1.0, commit 0123456789ab + local changes'
    >>> stamp({"wdbound": "1.0", "commit": None, "dirty": False})
    'made by wdbound 1.0 (no git checkout)'
    """
    if not made.get("commit"):
        return f"made by wdbound {made.get('wdbound')} (no git checkout)"
    return (f"made by wdbound {made.get('wdbound')}, commit {made['commit'][:12]}"
            + (" + local changes" if made.get("dirty") else ""))
