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

Gradient features are computed in passes over chunks of examples and classes sized by
:func:`captum_ntk.engine.budget.pass_sizes`, so one pass holds at most a chunk of the Jacobian
(examples x classes x P numbers) and its autograd intermediates, whatever the block size; the
chunks only change floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .budget import chunks, pass_sizes
from .data.inputs import ModelInputs
from .data.tokens import is_per_token
from .feature_blocks import Features, ParamBlocks, nbytes, same_layout
from .model import ModelFunction
from .projection.dense import RandomProjection


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
    #: gradient vectors per example (C for per-logit Jacobians, 1 for summed gradients)
    per_logit = True
    #: the memory budget M in bytes (set by ``build_feature_map``; its shares are described
    #: in :mod:`captum_ntk.engine.budget`)
    memory_limit: int = 2 << 30

    def __init__(self, function: ModelFunction) -> None:
        self.function = function

    @property
    def itemsize(self) -> int:
        """Bytes per number in the compute dtype."""
        return torch.tensor([], dtype=self.function.dtype).element_size()

    def example_bytes(self, inputs: ModelInputs) -> int:
        """Bytes of one example's features (from the model's shape, no gradient computed)."""
        raise NotImplementedError

    def __call__(self, inputs: ModelInputs) -> Features:
        """Features of a block of B examples; dimension 0 of size B."""
        raise NotImplementedError

    def block_pass_bytes(self, inputs: ModelInputs) -> int | None:
        """Bytes per example of a forward pass over a whole block, for feature maps that run
        one (the Gram engine, the Kronecker projection); None when passes chunk themselves."""
        return None

    def flatten(self, features: Features) -> Tensor:
        r"""The flat form of a block: one (B, ...) tensor whose flattened rows' inner
        products are this map's inner products (what a store holds).

        Raises:
            ValueError: for forms without one (per-token activations of padded text,
                    exact Gram-engine features).
        """
        if isinstance(features, Tensor):
            return features
        if isinstance(features, ParamBlocks):
            parts = features.parts
            if self.uses_gradients:  # (B, C, p_i) / (B, p_i) pieces of one gradient
                return torch.cat(parts, dim=-1)
            if all(p.dim() == 2 for p in parts):
                return torch.cat(parts, dim=1)
            raise ValueError(
                f"{self.what} features with a per-token axis have no fixed-size flat form "
                "(their size changes with the padded length); use a projected kernel."
            )
        raise ValueError(f"{type(features).__name__} features have no flat form.")

    def unflatten(self, flat: Tensor) -> Features:
        """The form this map's ``inner`` contracts, of a flat block (see :meth:`flatten`)."""
        return flat

    def same_form(self, f1: Features, f2: Features) -> tuple[Features, Features]:
        """Two blocks in a form ``inner`` can contract: as they are when their layouts
        match, else both through the flat form (e.g. a stored block against a fresh one)."""
        if same_layout(f1, f2):
            return f1, f2
        return self.unflatten(self.flatten(f1)), self.unflatten(self.flatten(f2))

    def inner(self, f1: Features, f2: Features) -> Tensor:
        """Pairwise inner products, shape (B1, B2)."""
        f1, f2 = self.same_form(f1, f2)
        return _flat(f1) @ _flat(f2).T

    def sq_norms(self, f: Features) -> Tensor:
        """Diagonal of the unnormalised kernel, shape (B,)."""
        flat = _flat(f)
        return torch.linalg.vecdot(flat, flat)

    def passes(
        self, inputs: ModelInputs, classes: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        r"""Example and class ranges of the gradient passes for a block.

        Args:
            inputs (ModelInputs): a block of B examples.
            classes (int): gradient rows per example (C, or 1 for summed gradients).

        Returns:
            (example ranges, class ranges): every pair is one pass.
        """
        function = self.function
        b = inputs.num_examples
        examples, chunk = pass_sizes(
            b,
            classes,
            function.num_params * self.itemsize,
            getattr(self, "gradients", function).activation_bytes(inputs),
            self.memory_limit,
        )
        return chunks(b, examples), chunks(classes, chunk)


class PieceFeatureMap(FeatureMap):
    """A feature map whose blocks are :class:`ParamBlocks`; a stored flat block is one piece."""

    def unflatten(self, flat: Tensor) -> ParamBlocks:
        return ParamBlocks([flat])

    def sq_norms(self, f: ParamBlocks | Tensor) -> Tensor:
        f = f if isinstance(f, ParamBlocks) else self.unflatten(f)
        return sum(torch.linalg.vecdot(_flat(a), _flat(a)) for a in f.parts)


class JacobianFeatures(PieceFeatureMap):
    """Full per-example Jacobians, pieces (B, C, p_i): entk, trntk0, trntk."""

    what = "Jacobian"

    def __init__(self, function: ModelFunction, per_class: bool = False) -> None:
        super().__init__(function)
        self.per_class = per_class
        #: where per-example gradients come from: ``function`` (``torch.func``) or a
        #: gradient computer (:mod:`captum_ntk.engine.gradient_computers`)
        self.gradients = function

    def example_bytes(self, inputs: ModelInputs) -> int:
        rows = self.function.num_outputs(inputs) if self.per_logit else 1
        return rows * self.function.num_params * self.itemsize

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        function = self.function
        c = function.num_outputs(inputs)
        example_ranges, class_ranges = self.passes(inputs, c)
        if len(example_ranges) == 1 and len(class_ranges) == 1:
            return ParamBlocks(self.gradients.jacobian(inputs))
        b = inputs.num_examples
        parts = [
            torch.empty(b, c, size, dtype=function.dtype, device=function.device)
            for size in function.sizes
        ]
        for e0, e1 in example_ranges:
            block = inputs.slice(e0, e1)
            for c0, c1 in class_ranges:
                for part, piece in zip(parts, self.gradients.jacobian(block, (c0, c1))):
                    part[e0:e1, c0:c1] = piece
        return ParamBlocks(parts)

    def inner(self, f1: ParamBlocks, f2: ParamBlocks) -> Tensor:
        f1, f2 = self.same_form(f1, f2)
        pairs = zip(f1.parts, f2.parts)
        if self.per_class:
            return sum(torch.einsum("icp,jdp->ijcd", a, b) for a, b in pairs)
        return sum(_flat(a) @ _flat(b).T for a, b in pairs)


class SummedGradientFeatures(JacobianFeatures):
    """Gradients of the summed logits, pieces (B, p_i): pntk0, pntk (products scaled by 1/C)."""

    what = "gradient"
    per_logit = False

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        function = self.function
        self.num_outputs = function.num_outputs(inputs)
        example_ranges, _ = self.passes(inputs, 1)
        if len(example_ranges) == 1:
            return ParamBlocks(self.gradients.summed_gradient(inputs))
        b = inputs.num_examples
        parts = [
            torch.empty(b, size, dtype=function.dtype, device=function.device)
            for size in function.sizes
        ]
        for e0, e1 in example_ranges:
            for part, piece in zip(parts, self.gradients.summed_gradient(inputs.slice(e0, e1))):
                part[e0:e1] = piece
        return ParamBlocks(parts)

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
        #: where per-example gradients come from: ``function`` (``torch.func``) or an object
        #: with the same ``jacobian`` method (``engine.gram.gradients.CapturedGradients``)
        self.gradients = function

    def example_bytes(self, inputs: ModelInputs) -> int:
        c = self.function.num_outputs(inputs)
        return c * self.projection.projection_dim * self.itemsize

    def __call__(self, inputs: ModelInputs) -> Tensor:
        c = self.function.num_outputs(inputs)
        example_ranges, class_ranges = self.passes(inputs, c)
        out: Tensor | None = None
        for e0, e1 in example_ranges:
            block = inputs.slice(e0, e1)
            for c0, c1 in class_ranges:
                rows = (e1 - e0) * (c1 - c0)
                parts = self.gradients.jacobian(block, (c0, c1))
                feats = self.projection([p.reshape(rows, -1) for p in parts])
                feats = feats.reshape(e1 - e0, c1 - c0, -1)
                if len(example_ranges) == 1 and len(class_ranges) == 1:
                    return feats
                if out is None:
                    shape = (inputs.num_examples, c, feats.shape[-1])
                    out = torch.empty(shape, dtype=feats.dtype, device=feats.device)
                out[e0:e1, c0:c1] = feats
        assert out is not None
        return out


class ProjectedSummedGradientFeatures(FeatureMap):
    """Projected summed-logit gradients (B, K): proj_pntk."""

    what = "gradient"
    per_logit = False

    def __init__(self, function: ModelFunction, projection: RandomProjection) -> None:
        super().__init__(function)
        self.projection = projection
        #: where per-example gradients come from (see :class:`ProjectedJacobianFeatures`)
        self.gradients = function

    def example_bytes(self, inputs: ModelInputs) -> int:
        return self.projection.projection_dim * self.itemsize

    def __call__(self, inputs: ModelInputs) -> Tensor:
        example_ranges, _ = self.passes(inputs, 1)
        out: Tensor | None = None
        for e0, e1 in example_ranges:
            feats = self.projection(self.gradients.summed_gradient(inputs.slice(e0, e1)))
            if len(example_ranges) == 1:
                return feats
            if out is None:
                shape = (inputs.num_examples, feats.shape[-1])
                out = torch.empty(shape, dtype=feats.dtype, device=feats.device)
            out[e0:e1] = feats
        assert out is not None
        return out


def _token_level(value: Tensor, mask: Tensor | None) -> bool:
    """Whether an activation is per token: (B, T, ...) with (B, T) the block's mask."""
    return is_per_token(value, mask, min_dim=3)


def _layer_feature(value: Tensor, mask: Tensor | None) -> Tensor:
    """(B, D) for per-example activations; (B, T, D) with padded tokens zeroed for per-token ones."""
    b = value.shape[0]
    if _token_level(value, mask):
        value = value.reshape(b, value.shape[1], -1)
        return value * mask[:, :, None].to(value.dtype)
    return value.reshape(b, -1)


def _layer_inner(a: Tensor, b: Tensor) -> Tensor:
    """Inner products of two blocks of one layer's features, (B1, B2).

    Per-token features of blocks trimmed to different lengths are compared over the common
    positions: beyond them one side is padding, which is zero.
    """
    if a.dim() == 3:
        t = min(a.shape[1], b.shape[1])
        return torch.einsum("itd,jtd->ij", a[:, :t], b[:, :t])
    return a @ b.T


class ActivationFeatures(PieceFeatureMap):
    r"""Layer activations: ck (input of one layer) and embedding (outputs of several).

    Per-token activations (B, T, ...) of padded text batches have padded positions zeroed, so
    neither padding nor the per-block padded length changes the kernel.

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

    def example_bytes(self, inputs: ModelInputs) -> int:
        # probed on the longest example of a padded text batch (its features are the largest)
        return nbytes(self(self.function.probe_example(inputs)))

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        values = self.function.activations(inputs, self.layers, self.which, self.strict)
        mask = self.function.padding_mask(inputs)
        b = inputs.num_examples
        # an output shared by the block (BERT's position embeddings, (1, T, D)) is every
        # example's activation
        values = [v.expand(b, *v.shape[1:]) if v.shape[0] == 1 < b else v for v in values]
        return ParamBlocks([_layer_feature(v, mask) for v in values])

    def inner(self, f1: ParamBlocks, f2: ParamBlocks) -> Tensor:
        f1, f2 = self.same_form(f1, f2)
        return sum(_layer_inner(a, b) for a, b in zip(f1.parts, f2.parts))
