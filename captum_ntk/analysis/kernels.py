r"""Kernels to regress with: callables ``k(x1, x2) -> (n1, n2)``.

Which kernels give input gradients (needed for attacks, saliency and Captum ``forward_func``)::

    kernel                          differentiable in x   cost
    linear_kernel, RBFKernel        yes                   one matrix product
    ReLUNTK (analytic, see analytic) yes                  O(depth n1 n2)
    EmpiricalNTK(model)             yes                   per-example Jacobians (small models)
    ModelKernel(model, "trntk")     no (kernel_matrix)    any registry kernel, any model size

Each callable has a boolean ``differentiable`` attribute; :class:`KernelRegressor` and the
attacks read it to refuse gradients that would silently be zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from ..engine.fingerprint import model_fingerprint
from ..engine.modes import refuse_batch_dependent
from ..engine.parameters import select_parameters
from ..kernels import kernel_matrix

__all__ = ["EmpiricalNTK", "ModelKernel", "RBFKernel", "linear_kernel"]


def _flat_pair(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    if x1.dim() < 1 or x2.dim() < 1 or x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x1 and x2 must be batches of the same example shape, got {tuple(x1.shape)} and "
            f"{tuple(x2.shape)}."
        )
    return x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)


def linear_kernel(x1: Tensor, x2: Tensor) -> Tensor:
    r"""Linear kernel ``<x1_i, x2_j>`` over flattened inputs (differentiable).

    Args:
        x1 (Tensor): (n1, ...) inputs.
        x2 (Tensor): (n2, ...) inputs of the same example shape.

    Returns:
        Tensor: (n1, n2) Gram matrix.
    """
    a, b = _flat_pair(x1, x2)
    return a @ b.T


linear_kernel.differentiable = True  # type: ignore[attr-defined]


class RBFKernel:
    r"""Gaussian kernel ``variance * exp(-|x1_i - x2_j|^2 / (2 lengthscale^2))`` (differentiable).

    The squared distance is computed from differences, not from the expansion
    ``|a|^2 + |b|^2 - 2 <a, b>``, so it is exact (and has a finite gradient) at coincident points.

    Args:
        lengthscale (float): length scale l > 0.
        variance (float): output scale. Default: 1.
    """

    differentiable = True

    def __init__(self, lengthscale: float, variance: float = 1.0) -> None:
        if not lengthscale > 0 or not variance > 0:
            raise ValueError(
                f"lengthscale and variance must be > 0, got {lengthscale}, {variance}."
            )
        self.lengthscale = float(lengthscale)
        self.variance = float(variance)

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        a, b = _flat_pair(x1, x2)
        sq = ((a.unsqueeze(1) - b.unsqueeze(0)) ** 2).sum(-1)
        return self.variance * torch.exp(-sq / (2.0 * self.lengthscale**2))

    def __repr__(self) -> str:
        return f"RBFKernel(lengthscale={self.lengthscale}, variance={self.variance})"


class ModelKernel:
    r"""``kernel_matrix(model, x1, x2, kernel=...)`` as a callable (not differentiable in x).

    Every registry kernel of any model size, computed blockwise; the result carries no graph to
    the inputs, so regressors built on it predict but cannot be attacked (use
    :class:`EmpiricalNTK` or an analytic kernel for that).

    Args:
        model (nn.Module): the classifier.
        kernel (str): registry name (``"trntk0"``, ``"trntk"``, ``"pntk"``, ...).
                Default: ``"trntk0"``.
        **kernel_kwargs: further keyword arguments of :func:`captum_ntk.kernel_matrix`.
    """

    differentiable = False

    def __init__(self, model: nn.Module, kernel: str = "trntk0", **kernel_kwargs: Any) -> None:
        if kernel == "entk":
            raise ValueError("entk is (N1, N2, C, C); use a scalar kernel such as trntk0 or trntk.")
        self.model, self.kernel, self.kernel_kwargs = model, kernel, kernel_kwargs

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        return kernel_matrix(self.model, x1, x2, kernel=self.kernel, **self.kernel_kwargs)


class EmpiricalNTK:
    r"""Empirical NTK of a small model, differentiable in both inputs.

    Per-example Jacobians ``J(x) = dF(x)/dtheta`` (C x P) come from ``vmap(jacrev)`` through
    ``functional_call``; they are ordinary tensors in autograd's graph, so ``d k(x, x')/dx``
    is available (gradients of gradients: memory n x C x P per call, meant for small models).

    - ``"trntk0"``: ``sum_c <g^c(x1_i), g^c(x2_j)>``, equal to
      ``kernel_matrix(..., kernel="trntk0")``.
    - ``"trntk"``: trntk0 cosine-normalised.
    - ``"pntk0"``: ``(1/C) <sum_c g^c(x1_i), sum_c g^c(x2_j)>``.

    The features of the last ``x2`` seen (e.g. the training set of a regressor) are cached while
    that tensor (in-place version) and the model's parameters and buffers (checksummed
    :func:`~captum_ntk.engine.fingerprint.model_fingerprint`) are unchanged and ``x2`` does not
    require grad.

    Args:
        model (nn.Module): the model; must be in eval mode if it has BatchNorm or dropout.
                The kernel is that of its current parameters (read at each call).
        kernel (str): ``"trntk0"``, ``"trntk"`` or ``"pntk0"``. Default: ``"trntk0"``.
        layers (str or sequence of str, optional): modules whose parameters count.
                Default: every parameter with ``requires_grad``.
    """

    differentiable = True
    _KINDS = ("trntk0", "trntk", "pntk0")

    def __init__(
        self, model: nn.Module, kernel: str = "trntk0", layers: Sequence[str] | str | None = None
    ) -> None:
        if kernel not in self._KINDS:
            raise ValueError(f"kernel must be one of {self._KINDS}, got {kernel!r}.")
        self.model, self.kernel, self.layers = model, kernel, layers
        self._cache: tuple[Tensor, tuple, Tensor] | None = None

    def _check_model(self) -> None:
        refuse_batch_dependent(self.model, "The empirical NTK")

    def features(self, x: Tensor) -> Tensor:
        r"""Per-example Jacobians.

        Args:
            x (Tensor): (n, ...) inputs.

        Returns:
            Tensor: (n, C, P) Jacobians of the logits with respect to the selected parameters
            (differentiable in ``x``).
        """
        self._check_model()
        selected = select_parameters(self.model, self.layers)
        params = {name: p.detach() for name, p in selected.items()}
        frozen = {
            name: t.detach()
            for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]
            if name not in params
        }

        def logits(p: dict[str, Tensor], example: Tensor) -> Tensor:
            out = functional_call(self.model, {**frozen, **p}, (example.unsqueeze(0),))
            return out.reshape(-1)

        jac = vmap(jacrev(logits), in_dims=(None, 0))(params, x)
        return torch.cat([j.reshape(x.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)

    def _cached_features(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            return self.features(x)
        # the key changes when x is modified in place or the model's state changes: parameters
        # or buffers (optimiser steps, BatchNorm statistics, writes through .data, casts)
        key = (x._version, tuple(x.shape), model_fingerprint(self.model, checksum=True))
        if self._cache is not None and self._cache[0] is x and self._cache[1] == key:
            return self._cache[2]
        feats = self.features(x).detach()
        self._cache = (x, key, feats)
        return feats

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        f1, f2 = self.features(x1), self._cached_features(x2)
        if self.kernel == "pntk0":
            return (f1.sum(1) @ f2.sum(1).T) / f1.shape[1]
        gram = torch.einsum("icp,jcp->ij", f1, f2)
        if self.kernel == "trntk0":
            return gram
        n1 = (f1 * f1).sum((1, 2)).clamp_min(torch.finfo(f1.dtype).tiny).sqrt()
        n2 = (f2 * f2).sum((1, 2)).clamp_min(torch.finfo(f2.dtype).tiny).sqrt()
        return gram / (n1[:, None] * n2[None, :])
