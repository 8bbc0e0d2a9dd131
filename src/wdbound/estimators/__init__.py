"""Estimators of spectral quantities that see only an operator with ``matmat`` (see wdbound.curvature)."""

from .hutchinson import DiagonalEstimate, TraceEstimate, hutchinson, rademacher
from .lanczos import LanczosRun, SLQ, TopEigen, lanczos, slq, top_eigenvalues
from .krylov_trace import KrylovSpan, krylov_deflated_trace
from .meyer2020hutch import hutchpp

__all__ = ["DiagonalEstimate", "KrylovSpan", "LanczosRun", "SLQ", "TopEigen", "TraceEstimate", "hutchinson", "hutchpp", "krylov_deflated_trace",
           "lanczos", "rademacher", "slq", "top_eigenvalues"]
