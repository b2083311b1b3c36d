r"""Per-token tensors of padded text blocks: the one predicate and the one trim.

A text block carries a 2-D ``attention_mask`` (B, T). A tensor is *per token* when its first two
dimensions are that (B, T): token ids, type ids, position ids, ``inputs_embeds``, the mask
itself, and (with ``min_dim=3``) per-token layer activations (B, T, ...). Stores, digests,
streaming, the activation kernels and the Hugging Face integration all ask this question here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def token_mask(kwargs: Mapping[str, Any]) -> Tensor | None:
    """The block's 2-D ``attention_mask`` (B, T), or None when it has none."""
    mask = kwargs.get("attention_mask")
    return mask if isinstance(mask, Tensor) and mask.dim() == 2 else None


def is_per_token(value: Any, mask: Tensor | None, min_dim: int = 2) -> bool:
    r"""Whether ``value`` is laid out per token of the block whose mask is ``mask``.

    Args:
        value: any keyword input or activation.
        mask (Tensor, optional): the block's (B, T) mask (None: nothing is per token).
        min_dim (int): fewest dimensions (3 for activations, so a (B, D) activation whose
                width happens to equal T is not mistaken for a per-token one).
    """
    return (
        isinstance(value, Tensor)
        and mask is not None
        and value.dim() >= min_dim
        and tuple(value.shape[:2]) == tuple(mask.shape)
    )


def used_length(mask: Tensor) -> int:
    """One past the last position any example of the block uses (at least 1)."""
    used = torch.nonzero(mask.ne(0).any(dim=0)).flatten()
    return int(used.max()) + 1 if used.numel() else 1


def cut_per_token(kwargs: Mapping[str, Any], mask: Tensor, length: int) -> dict[str, Any]:
    """``kwargs`` with every per-token tensor cut to its first ``length`` positions."""
    return {k: (v[:, :length] if is_per_token(v, mask) else v) for k, v in kwargs.items()}
