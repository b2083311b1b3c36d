r"""Structured exact kernels: per-layer Grams of layer inputs and output gradients.

See :mod:`captum_ntk.engine.gram.engine` (the feature map), :mod:`.layers` (per-layer rules),
:mod:`.capture` (batched forward and backward passes) and :mod:`.contract` (the Gram products).
"""

from .engine import GramBlocks, GramFeatures

#: Kernels the Gram engine computes.
GRAM_KERNELS = ("entk", "trntk0", "trntk", "pntk0", "pntk")

__all__ = ["GRAM_KERNELS", "GramBlocks", "GramFeatures"]
