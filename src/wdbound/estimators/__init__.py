"""Estimators of spectral quantities that see only an operator with ``matmat`` (see wdbound.curvature)."""

from .hutchinson import DiagonalEstimate, TraceEstimate, hutchinson, rademacher
from .lanczos import LanczosRun, SLQ, TopEigen, lanczos, slq, top_eigenvalues
from .meyer2020hutch import hutchpp

__all__ = ["DiagonalEstimate", "LanczosRun", "SLQ", "TopEigen", "TraceEstimate", "hutchinson", "hutchpp",
           "lanczos", "rademacher", "slq", "top_eigenvalues"]
