r"""Test operators whose eigenvalues are known: :math:`H = Q^\top \mathrm{diag}(\lambda)\, Q` at any size.

The estimators only see an operator's ``matmat``; to measure an interval's coverage at d = 10^6, where no dense
Hessian fits, wdbound runs them on an operator whose spectrum it chose. :math:`Q` is a fast random orthogonal
transform (:class:`RandomOrthogonal`: random signs, a real Fourier transform and a permutation, twice), so a
Rademacher probe sees a dense matrix (its spectral weights :math:`(v_i^\top z)^2` spread like a Gaussian probe's,
not concentrated on coordinate axes).

The spectra (:func:`repeated_spectrum`, :func:`grown_spectrum`, :func:`published_spectrum`) are the zoo's exact
spectra tiled with a relative jitter (every eigenvalue, or the bulk with the C outliers kept once), and shapes
read off published Hessian densities of trained image classifiers: a bulk concentrated at zero with a share of
small negative eigenvalues, a power-law tail, and about C outliers at the top (Ghorbani, Krishnan & Xiao,
ICML 2019; Papyan, JMLR 2020; Yao et al., PyHessian 2020).

>>> import numpy as np, torch
>>> eigenvalues = np.array([-1.0, 0.0, 0.5, 2.0, 3.0])
>>> op = KnownSpectrumOperator(eigenvalues, seed=0)
>>> dense = op.matmat(torch.eye(5, dtype=torch.float64))
>>> bool(torch.allclose(dense, dense.T, atol=1e-12))
True
>>> np.allclose(np.linalg.eigvalsh(dense.numpy()), eigenvalues)
True
"""

from __future__ import annotations

import math

import numpy as np
import torch


class RandomOrthogonal:
    r"""A seeded orthogonal map of ``dim`` coordinates in O(d log d): ``apply`` is Q, ``transpose`` Qᵀ.

    :math:`Q = F D_2 P F D_1`: random signs :math:`D_1`, the orthonormal real Fourier transform :math:`F` (the
    real and imaginary parts of ``rfft(·, norm="ortho")``, the paired ones scaled by √2, which is an isometry of
    :math:`\mathbb{R}^d` by Parseval), a random permutation :math:`P`, random signs :math:`D_2`, and :math:`F`
    again. Every output coordinate mixes every input.
    """

    def __init__(self, dim: int, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if dim < 1:
            raise ValueError(f"RandomOrthogonal needs dim >= 1, got {dim}")
        # a stream of its own: probes drawn with a small seed must not be the sign vector (D1 z = 1 is a delta)
        generator = torch.Generator().manual_seed(0x5EED0000 + seed)
        self.dim = dim
        self.signs = [(torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(device) for _ in range(2)]
        self.perm = torch.randperm(dim, generator=generator).to(device)
        self.inverse = torch.argsort(self.perm)

    def _fourier(self, x: torch.Tensor) -> torch.Tensor:
        """F x: [Re X_0, √2 Re X_1, √2 Im X_1, ..., (Re X_{d/2} for even d)]."""
        spectrum = torch.fft.rfft(x, norm="ortho")
        out = torch.empty_like(x)
        out[:, 0] = spectrum[:, 0].real
        paired = (self.dim - 1) // 2
        out[:, 1:2 * paired + 1:2] = math.sqrt(2) * spectrum[:, 1:paired + 1].real
        out[:, 2:2 * paired + 2:2] = math.sqrt(2) * spectrum[:, 1:paired + 1].imag
        if self.dim % 2 == 0 and self.dim > 1:
            out[:, -1] = spectrum[:, -1].real
        return out

    def _fourier_transpose(self, y: torch.Tensor) -> torch.Tensor:
        """Fᵀ y = F⁻¹ y."""
        paired = (self.dim - 1) // 2
        spectrum = torch.zeros(y.shape[0], self.dim // 2 + 1, dtype=torch.complex128 if y.dtype == torch.float64
                               else torch.complex64, device=y.device)
        spectrum[:, 0] = y[:, 0]
        spectrum[:, 1:paired + 1] = torch.complex(y[:, 1:2 * paired + 1:2], y[:, 2:2 * paired + 2:2]) / math.sqrt(2)
        if self.dim % 2 == 0 and self.dim > 1:
            spectrum[:, -1] = y[:, -1]
        return torch.fft.irfft(spectrum, n=self.dim, norm="ortho")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``Q x`` for rows ``x`` [k, d]."""
        x = self._fourier(x * self.signs[0].to(x.dtype))
        return self._fourier(x[:, self.perm] * self.signs[1].to(x.dtype))

    def transpose(self, x: torch.Tensor) -> torch.Tensor:
        """``Qᵀ x`` for rows ``x`` [k, d]."""
        x = self._fourier_transpose(x) * self.signs[1].to(x.dtype)
        return self._fourier_transpose(x[:, self.inverse]) * self.signs[0].to(x.dtype)


class KnownSpectrumOperator:
    """``Qᵀ diag(eigenvalues) Q`` behind the operator interface, counting its matvecs like a Hessian does."""

    def __init__(self, eigenvalues: np.ndarray, seed: int = 0, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> None:
        eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        if eigenvalues.ndim != 1 or len(eigenvalues) == 0 or not np.isfinite(eigenvalues).all():
            raise ValueError(f"eigenvalues must be a non-empty finite vector, got shape {eigenvalues.shape}")
        self.eigenvalues = eigenvalues
        self.dim = len(eigenvalues)
        self.dtype = dtype
        self.device = torch.device(device)
        self.scale = torch.from_numpy(eigenvalues).to(self.device, dtype)
        self.q = RandomOrthogonal(self.dim, seed, device=self.device)
        self.matvecs = 0

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V^T`` for rows ``vectors`` [k, d], as rows [k, d]."""
        self.matvecs += vectors.shape[0]
        return self.q.transpose(self.scale * self.q.apply(vectors.to(self.dtype)))


def repeated_spectrum(eigenvalues: np.ndarray, dim: int, jitter: float = 1e-3, seed: int = 0) -> np.ndarray:
    """``eigenvalues`` tiled to ``dim`` values, each multiplied by ``1 + jitter · N(0, 1)`` (exact zeros stay 0).

    >>> repeated_spectrum(np.array([0.0, 1.0]), 5, jitter=0.0).tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0]
    """
    rng = np.random.default_rng(seed)
    tiled = np.resize(np.asarray(eigenvalues, dtype=np.float64), dim)
    return tiled * (1.0 + jitter * rng.standard_normal(dim))


def grown_spectrum(eigenvalues: np.ndarray, dim: int, outliers: int, jitter: float = 1e-3, seed: int = 0) -> np.ndarray:
    """A small network's spectrum grown to ``dim`` values as trained networks' Hessians grow: the bulk (all but
    the ``outliers`` largest eigenvalues) tiled by :func:`repeated_spectrum` to ``dim − outliers`` values, the
    ``outliers`` largest kept once. Hessians of networks trained on C classes show about C outliers above a bulk
    whatever their size (Sagun et al. 2017; Papyan, JMLR 2020), where :func:`repeated_spectrum` repeats every
    outlier with the bulk (1,000 copies of each at d = 10^6 from the digits CNN).

    >>> grown_spectrum(np.array([0.0, 1.0, 5.0]), 6, outliers=1, jitter=0.0).tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 5.0]
    """
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if not 0 <= outliers < len(values) or dim < len(values):
        raise ValueError(f"need 0 <= outliers < {len(values)} eigenvalues and dim >= {len(values)}, "
                         f"got outliers={outliers}, dim={dim}")
    bulk, top = values[:len(values) - outliers], values[len(values) - outliers:]
    return np.concatenate([repeated_spectrum(bulk, dim - outliers, jitter, seed), top])


PUBLISHED_SHAPES = {
    # negative share, bulk scale / lambda_max, tail exponent, outliers, lambda_max
    "resnet": (0.25, 1e-4, 1.2, 10, 200.0),
    "vit": (0.40, 3e-4, 1.0, 10, 50.0),
}


def published_spectrum(kind: str, dim: int, seed: int = 0) -> np.ndarray:
    """A spectrum shaped like the published densities of trained ResNets (``resnet``) or ViTs (``vit``).

    A bulk of Laplace-distributed magnitudes at the scale ``bulk · λmax`` (a ``negative`` share of them negative:
    ViTs show more negative curvature), 5 % of the eigenvalues in a power-law tail up to λmax/10, and
    ``outliers`` eigenvalues between λmax/4 and λmax (about one per class). Ascending.

    >>> values = published_spectrum("resnet", 10_000)
    >>> len(values), bool(values[-1] == 200.0), bool((values < 0).mean() > 0.2)
    (10000, True, True)
    """
    if kind not in PUBLISHED_SHAPES:
        raise ValueError(f"unknown spectrum shape {kind!r}; use {', '.join(PUBLISHED_SHAPES)}")
    negative, bulk, exponent, outliers, top = PUBLISHED_SHAPES[kind]
    rng = np.random.default_rng(seed)
    tail = int(0.05 * dim)
    count = dim - tail - outliers
    magnitudes = rng.exponential(bulk * top, count)
    signs = np.where(rng.random(count) < negative, -1.0, 1.0)
    low = bulk * top * 10
    tail_values = low * (1.0 - rng.random(tail)) ** (-1.0 / exponent)
    tail_values = np.minimum(tail_values, top / 10)
    top_values = np.concatenate([rng.uniform(top / 4, top, outliers - 1), [top]]) if outliers else np.array([])
    return np.sort(np.concatenate([signs * magnitudes, tail_values, top_values]))
