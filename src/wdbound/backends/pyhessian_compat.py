"""The one compatibility shim PyHessian 0.1 needs on modern torch, isolated here.

PyHessian 0.1's ``hessian.density()`` diagonalises its Lanczos tridiagonal
with ``torch.eig(T, eigenvectors=True)``, removed in torch 2.0 (modern torch
keeps a stub that raises). T is
symmetric, so ``torch.linalg.eigh`` gives the same eigenpairs; ``torch.eig``
returned eigenvalues as an ``[n, 2]`` (real, imaginary) tensor, which is what
PyHessian indexes (``a_[:, 0]``). :func:`torch_eig_shim` installs that
replacement for the duration of a ``with`` block only and restores whatever
was there before; nothing else in torch or PyHessian is touched.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def symmetric_eig(matrix: torch.Tensor, eigenvectors: bool = False):
    """``torch.eig`` of the torch 1.x API for a symmetric matrix: ([n, 2] values, vectors)."""
    values, vectors = torch.linalg.eigh(matrix)
    pairs = torch.stack([values, torch.zeros_like(values)], dim=1)
    return pairs, (vectors if eigenvectors else torch.empty(0, dtype=matrix.dtype, device=matrix.device))


@contextlib.contextmanager
def torch_eig_shim() -> Iterator[None]:
    """Within the block, ``torch.eig`` (removed from torch) answers as PyHessian 0.1 expects, via ``eigh``."""
    missing = object()
    previous = getattr(torch, "eig", missing)
    torch.eig = symmetric_eig
    try:
        yield
    finally:
        if previous is missing:
            del torch.eig
        else:
            torch.eig = previous
