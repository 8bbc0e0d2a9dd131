r"""Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021).

With :math:`m` matvecs: sketch :math:`S` (:math:`m/3` Rademacher columns),
:math:`Q = \mathrm{orth}(HS)`, then

.. math:: \mathrm{tr}(H) \approx \mathrm{tr}(Q^\top H Q)
          + \frac{3}{m}\sum_{j} g_j^\top (I-QQ^\top) H (I-QQ^\top) g_j ,

exact on the captured top subspace and Hutchinson on the rest; the variance
falls as :math:`O(1/m^2)` instead of :math:`O(1/m)` when the spectrum decays.
The standard error is that of the Hutchinson part.

>>> import torch
>>> from wdbound.curvature import DenseOperator
>>> U = torch.linalg.qr(torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
>>> H = U @ torch.diag(torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64)) @ U.T  # rank 3
>>> est = hutchpp(DenseOperator(H), matvecs=12, generator=torch.Generator().manual_seed(0))
>>> round(est.estimate, 8)  # the sketch captures the whole range: exact
14.0
"""

from __future__ import annotations

import torch

from .hutchinson import TraceEstimate, rademacher


def hutchpp(operator, matvecs: int, generator: torch.Generator) -> TraceEstimate:
    """Hutch++ trace estimate using about ``matvecs`` operator products."""
    sketch = max(1, matvecs // 3)
    residual = max(2, matvecs - 2 * sketch)
    s = rademacher(sketch, operator.dim, generator, operator.dtype, operator.device)
    q, _ = torch.linalg.qr(operator.matmat(s).T)  # [d, r]
    hq = operator.matmat(q.T)  # [r, d]
    head = float((q.T * hq).sum())
    g = rademacher(residual, operator.dim, generator, operator.dtype, operator.device)
    g = g - (g @ q) @ q.T
    hg = operator.matmat(g)
    hg = hg - (hg @ q) @ q.T
    samples = (g * hg).sum(1).double().cpu().numpy()
    tail = TraceEstimate.from_samples(samples)
    return TraceEstimate(head + tail.estimate, tail.stderr, samples + head, "hutch++")
