r"""Half-precision features widened to float32 before any product or norm.

The gradients and activations of a float16 / bfloat16 model are computed in its dtype; their
inner products, squared norms and the cosine normalisation are accumulated in float32 (a bf16
kernel near 1 has only a few distinct values). The kernel assembly and the disk stores both widen
every block they compute, so a half-precision model gives float32 kernels on every path.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor

from .feature_blocks import Features, ParamBlocks
from .gram.feature_map import GramBlocks

__all__ = ["HALF_DTYPES", "widen_features"]

#: Feature dtypes whose products are accumulated in float32 (the kernel comes back in float32).
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _wide(t: Tensor) -> Tensor:
    return t.float() if t.dtype in HALF_DTYPES else t


def widen_features(features: Features) -> Features:
    r"""Half-precision features (float16 / bfloat16) as float32, any other dtype unchanged.

    The gradients of a half-precision model are computed in its dtype; their inner products,
    squared norms and the cosine normalisation are accumulated in float32 (a bf16 kernel near 1
    has only a few distinct values). Handles every feature type: Tensor, ParamBlocks, and the
    Gram / Kronecker blocks (their layer inputs, output gradients and dense pieces).

    Args:
        features: the features of one block.

    Returns:
        the same features, float32 where they were half precision.
    """
    if isinstance(features, Tensor):
        return _wide(features)
    if isinstance(features, ParamBlocks):
        if not any(p.dtype in HALF_DTYPES for p in features.parts):
            return features
        return ParamBlocks([_wide(p) for p in features.parts])
    if isinstance(features, GramBlocks):
        wide = copy.copy(features)
        wide.grams = [
            dataclasses.replace(g, a=g.a if g.tokens else _wide(g.a), delta=_wide(g.delta))
            for g in features.grams
        ]
        wide.dense = [_wide(t) for t in features.dense]
        return wide
    return features
