r"""Scalar summaries of kernel matrices: distances, spectra and alignment with the labels.

All functions take (n, n) Gram matrices on the same probe set and compute in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "centered_alignment",
    "effective_rank",
    "kernel_cosine",
    "kernel_distance",
    "label_energy",
    "spectral_mass",
]


def _gram(kernel: Tensor, name: str = "kernel") -> Tensor:
    if not isinstance(kernel, Tensor) or kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) Tensor.")
    return kernel.detach().to(torch.float64).cpu()


def kernel_cosine(kernel1: Tensor, kernel2: Tensor) -> float:
    r"""``<K1, K2>_F / (|K1|_F |K2|_F)``, in [-1, 1] (1 for proportional kernels)."""
    a, b = _gram(kernel1, "kernel1"), _gram(kernel2, "kernel2")
    if a.shape != b.shape:
        raise ValueError(f"The kernels differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}.")
    denom = float(a.norm() * b.norm())
    if denom == 0:
        raise ValueError("A kernel is identically zero: its direction is undefined.")
    return float((a * b).sum()) / denom


def kernel_distance(kernel1: Tensor, kernel2: Tensor) -> float:
    r"""Kernel distance ``1 - <K1, K2>_F / (|K1|_F |K2|_F)`` (0 for proportional kernels)."""
    return 1.0 - kernel_cosine(kernel1, kernel2)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(
            f"k (number of top eigenvalues / eigenvectors) must be an int >= 1, got {k}."
        )
    return int(k)


def _eigenvalues(kernel: Tensor) -> Tensor:
    """Descending eigenvalues, negative round-off clamped to 0."""
    gram = _gram(kernel)
    return torch.linalg.eigvalsh((gram + gram.T) / 2).flip(0).clamp_min(0.0)


def spectral_mass(kernel: Tensor, k: int) -> float:
    r"""Share of the trace in the top-k eigenvalues: ``sum_{i<k} lambda_i / sum_i lambda_i``."""
    k = _check_k(k)
    lam = _eigenvalues(kernel)
    return float(lam[:k].sum() / lam.sum().clamp_min(1e-300))


def effective_rank(kernel: Tensor) -> float:
    r"""Effective rank ``exp(H(p))``, p = lambda / sum(lambda), H the Shannon entropy (Roy & Vetterli)."""
    lam = _eigenvalues(kernel)
    p = lam / lam.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(math.exp(-(p * p.log()).sum()))


def _centre(matrix: Tensor) -> Tensor:
    return matrix - matrix.mean(0, keepdim=True) - matrix.mean(1, keepdim=True) + matrix.mean()


def _targets(targets: Tensor, n: int) -> Tensor:
    y = targets.detach().to(torch.float64).cpu()
    y = y[:, None] if y.dim() == 1 else y
    if y.dim() != 2 or y.shape[0] != n:
        raise ValueError(
            f"targets must be (n,) or (n, C) with n = {n}, got {tuple(targets.shape)}."
        )
    return y


def centered_alignment(kernel: Tensor, targets: Tensor) -> float:
    r"""Centred kernel-target alignment ``<HKH, H YY^T H>_F / (|HKH|_F |H YY^T H|_F)``.

    Args:
        kernel (Tensor): (n, n) Gram.
        targets (Tensor): (n,) or (n, C) targets (e.g. :func:`one_hot_targets`).

    Returns:
        float: alignment in [-1, 1].
    """
    gram = _gram(kernel)
    y = _targets(targets, gram.shape[0])
    target_gram = _centre(y @ y.T)
    if float(target_gram.abs().max()) == 0:
        raise ValueError("The targets are constant over the probe set: the alignment is undefined.")
    return kernel_cosine(_centre(gram), target_gram)


def label_energy(kernel: Tensor, targets: Tensor, k: int) -> float:
    r"""Share of the (centred) targets' energy in the span of the top-k eigenvectors of K."""
    k = _check_k(k)
    gram = _gram(kernel)
    y = _targets(targets, gram.shape[0])
    y = y - y.mean(0, keepdim=True)
    _, vectors = torch.linalg.eigh((gram + gram.T) / 2)
    top = vectors.flip(1)[:, :k]
    total = float((y * y).sum())
    return float(((top.T @ y) ** 2).sum()) / total if total > 0 else 0.0
