"""``wdbound spectrum --backend pyhessian``: PyHessian's own estimators on wdbound's model, data and loss.

Same network (eval mode, chosen dtype and device), same evaluation examples in
the same chunks, same loss (mean cross-entropy). PyHessian's calls, as a user
makes them: ``eigenvalues(top_n=k)`` (power iteration with deflation,
relative tolerance 1e-3), ``trace(maxIter=probes)`` (Hutchinson; stops early
at relative change 1e-3) and ``density(iter=steps, n_v=probes)`` (Lanczos with
re-orthogonalisation in Python). Results come back as wdbound's types, so the
JSON schema is the same; ``provenance["backend"]`` says which tool produced them.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from ..errors import WdboundError


def available() -> bool:
    """Whether PyHessian can be imported here."""
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        return False
    return True


class CountingCriterion(torch.nn.Module):
    """Mean cross-entropy that counts forward passes over the evaluation set (PyHessian has no HVP counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, logits, targets):
        """The wrapped loss, counting its calls (PyHessian's HVP count)."""
        self.calls += 1
        return torch.nn.functional.cross_entropy(logits, targets)


def run_pyhessian(operator, settings, on_hvps=None):
    """PyHessian top-k, trace and density on ``operator``'s model and data; returns wdbound result types."""
    if not available():
        raise WdboundError("the pyhessian backend needs PyHessian: pip install 'wdbound[pyhessian]'", "backend")
    from pyhessian import hessian

    from ..estimators.hutchinson import DiagonalEstimate, TraceEstimate
    from ..estimators.lanczos import SLQ, TopEigen
    from .pyhessian_compat import torch_eig_shim

    model = operator.model  # already an eval-mode copy in the operator's dtype and device
    batches = list(operator.chunks())
    chunks = len(batches)
    criterion = CountingCriterion()
    cuda = operator.device.type == "cuda"
    if cuda and operator.device.index not in (None, 0):
        raise WdboundError("PyHessian 0.1 only runs on the default CUDA device ('cuda' or 'cuda:0')", "device")
    torch.manual_seed(settings.seed)  # PyHessian draws its probes from torch's global generator
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        engine = hessian(model, criterion, dataloader=batches, cuda=cuda)

    def report() -> None:
        if on_hvps is not None:
            on_hvps(criterion.calls // max(chunks, 1))

    with warnings.catch_warnings():
        # PyHessian calls backward(create_graph=True) on parameters; torch warns about the reference cycle.
        warnings.simplefilter("ignore", UserWarning)
        values, _ = engine.eigenvalues(top_n=settings.top_k, maxIter=100, tol=1e-3)
        report()
        samples = np.asarray(engine.trace(maxIter=settings.probes, tol=1e-3), dtype=np.float64)
        report()
        with torch_eig_shim():
            nodes, weights = engine.density(iter=settings.steps, n_v=settings.probes)
    wall = time.perf_counter() - start
    hvps = criterion.calls // max(chunks, 1)
    trace = TraceEstimate.from_samples(samples, "pyhessian hutchinson")
    order = np.argsort(values)[::-1]
    top = TopEigen(np.asarray(values, dtype=np.float64)[order], np.full(len(values), math.nan),
                   np.full(len(values), math.nan), 0, False, 1e-3)
    node_arrays = [np.asarray(n, dtype=np.float64) for n in nodes]
    weight_arrays = [np.asarray(w, dtype=np.float64) for w in weights]
    m = max(len(n) for n in node_arrays)
    empty = np.zeros((len(node_arrays), m))
    density = SLQ(node_arrays, weight_arrays, operator.dim, np.full(len(node_arrays), float(operator.dim)),
                  np.array([len(n) for n in node_arrays]), empty, empty[:, :-1])
    no_diag = DiagonalEstimate(np.full(operator.dim, np.nan), np.full(operator.dim, np.nan), 0)
    return top, density, trace, no_diag, hvps, wall
