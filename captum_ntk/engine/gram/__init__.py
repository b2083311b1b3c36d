r"""Structured exact kernels: per-layer Grams of layer inputs and output gradients.

See :mod:`captum_ntk.engine.gram.feature_map` (the feature map), :mod:`.layers` (per-layer rules),
:mod:`.capture` (batched forward and backward passes) and :mod:`.contract` (the Gram products).
Which kernels it computes is declared in the registry
(:attr:`captum_ntk.kernels.registry.KernelSpec.exact_gradients`).
"""

from .feature_map import GramBlocks, GramFeatures

__all__ = ["GramBlocks", "GramFeatures"]
