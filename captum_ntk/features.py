r"""Feature maps: every kernel is an inner product of per-example features.

A :class:`FeatureMap` turns a prepared block of B examples into features whose pairwise
inner products are the (unnormalised) kernel:

| kernel | feature of example i | inner product |
|---|---|---|
| entk | Jacobian J_i, (C, P) | J_i J_j^T, (C, C) |
| trntk0 / trntk | Jacobian J_i, (C, P) | sum_c <J_i^c, J_j^c> |
| pntk0 / pntk | g_i = grad sum_c F^c, (P,) | <g_i, g_j> / C |
| proj_trntk | S J_i^T / sqrt(K), (C, K) | sum_c <., .> |
| proj_pntk | S g_i / sqrt(K), (K,) | <., .> |
| ck | input of the last Linear, (D,) | <., .> |
| embedding | concatenated layer outputs, (D,) | <., .> |

Normalised kernels divide by the square roots of the features' squared norms. A second
implementation (per-layer Grams) can slot in by providing the same three methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor, nn

from ._inputs import ModelInputs
from ._model import ModelFunction
from .projection import RandomProjection

#: Every kernel name, with whether it is cosine-normalised.
KERNELS: dict[str, bool] = {
    "entk": False,
    "trntk0": False,
    "trntk": True,
    "pntk0": False,
    "pntk": True,
    "proj_trntk": True,
    "proj_pntk": True,
    "ck": True,
    "embedding": True,
}


class ParamBlocks:
    r"""Per-parameter pieces of the features of B examples, e.g. Jacobian pieces (B, C, p_i).

    Keeping the pieces avoids concatenating B x C x P numbers; inner products are sums over
    pieces.
    """

    def __init__(self, parts: list[Tensor]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return int(self.parts[0].shape[0])

    def numel(self) -> int:
        """Total number of values."""
        return sum(p.numel() for p in self.parts)

    def element_size(self) -> int:
        """Bytes per value."""
        return self.parts[0].element_size()


Features = Union[Tensor, ParamBlocks]


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


class FeatureMap:
    """Base class: per-example features and their inner products."""

    #: whether features are gradients (so they need the parameter selection)
    uses_gradients = True
    #: whether the kernel returned is (N1, N2, C, C) rather than (N1, N2)
    per_class = False
    #: what the features are, for error messages
    what = "feature"

    def __init__(self, function: ModelFunction) -> None:
        self.function = function

    def __call__(self, inputs: ModelInputs) -> Features:
        """Features of a block of B examples; dimension 0 of size B."""
        raise NotImplementedError

    def inner(self, f1: Features, f2: Features) -> Tensor:
        """Pairwise inner products, shape (B1, B2)."""
        return _flat(f1) @ _flat(f2).T

    def sq_norms(self, f: Features) -> Tensor:
        """Diagonal of the unnormalised kernel, shape (B,)."""
        flat = _flat(f)
        return torch.linalg.vecdot(flat, flat)


class JacobianFeatures(FeatureMap):
    """Full per-example Jacobians, pieces (B, C, p_i): entk, trntk0, trntk."""

    what = "Jacobian"

    def __init__(self, function: ModelFunction, per_class: bool = False) -> None:
        super().__init__(function)
        self.per_class = per_class

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        return ParamBlocks(self.function.jacobian(inputs))

    def inner(self, f1: ParamBlocks, f2: ParamBlocks) -> Tensor:
        pairs = zip(f1.parts, f2.parts)
        if self.per_class:
            return sum(torch.einsum("icp,jdp->ijcd", a, b) for a, b in pairs)
        return sum(_flat(a) @ _flat(b).T for a, b in pairs)

    def sq_norms(self, f: ParamBlocks) -> Tensor:
        return sum(torch.linalg.vecdot(_flat(a), _flat(a)) for a in f.parts)


class SummedGradientFeatures(JacobianFeatures):
    """Gradients of the summed logits, pieces (B, p_i): pntk0, pntk (products scaled by 1/C)."""

    what = "gradient"

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        self.num_outputs = self.function.num_outputs(inputs)
        return ParamBlocks(self.function.summed_gradient(inputs))

    def inner(self, f1: ParamBlocks, f2: ParamBlocks) -> Tensor:
        return super().inner(f1, f2) / self.num_outputs

    def sq_norms(self, f: ParamBlocks) -> Tensor:
        return super().sq_norms(f) / self.num_outputs


class ProjectedJacobianFeatures(FeatureMap):
    """Projected per-class gradients (B, C, K): proj_trntk."""

    what = "Jacobian"

    def __init__(self, function: ModelFunction, projection: RandomProjection) -> None:
        super().__init__(function)
        self.projection = projection

    def __call__(self, inputs: ModelInputs) -> Tensor:
        parts = self.function.jacobian(inputs)
        b, c = parts[0].shape[:2]
        return self.projection([p.reshape(b * c, -1) for p in parts]).reshape(b, c, -1)


class ProjectedSummedGradientFeatures(FeatureMap):
    """Projected summed-logit gradients (B, K): proj_pntk."""

    what = "gradient"

    def __init__(self, function: ModelFunction, projection: RandomProjection) -> None:
        super().__init__(function)
        self.projection = projection

    def __call__(self, inputs: ModelInputs) -> Tensor:
        return self.projection(self.function.summed_gradient(inputs))


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` in ``model.named_modules()`` order."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(
            "The conjugate kernel uses the input of the last nn.Linear layer, but the model has "
            "none; pass layers=['<module name>'] to choose the layer whose input is the embedding."
        )
    return names[-1]


def leaf_layers_with_parameters(model: nn.Module) -> list[str]:
    """Names of leaf modules that own parameters (the embedding kernel's default layers)."""
    return [
        n
        for n, m in model.named_modules()
        if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def _mask_padding(value: Tensor, mask: Tensor | None) -> Tensor:
    """Zeroes padded token positions of (B, T, ...) activations so padding never counts."""
    if mask is None or value.dim() < 2 or value.shape[1] != mask.shape[1]:
        return value
    shape = mask.shape + (1,) * (value.dim() - 2)
    return value * mask.reshape(shape).to(value.dtype)


class ActivationFeatures(FeatureMap):
    r"""Layer activations: ck (input of one layer) and embedding (outputs of several).

    Args:
        function (ModelFunction): the model.
        layers (sequence of str): module names.
        which (str): "input" or "output".
        strict (bool): raise for layers the forward pass does not call (else skip them;
                used for the default layer list).
    """

    uses_gradients = False
    what = "activation"

    def __init__(
        self, function: ModelFunction, layers: Sequence[str], which: str, strict: bool = True
    ) -> None:
        super().__init__(function)
        self.layers = list(layers)
        self.which = which
        self.strict = strict

    def __call__(self, inputs: ModelInputs) -> Tensor:
        values = self.function.activations(inputs, self.layers, self.which, self.strict)
        b = inputs.num_examples
        mask = self.function.padding_mask(inputs)
        return torch.cat([_mask_padding(v, mask).reshape(b, -1) for v in values], dim=1)
