r"""Operations on kernel blocks, shared by in-memory assembly, disk stores and attributions.

- :func:`cosine_normalised`: a block divided by the square roots of its rows' and columns'
  squared feature norms (entries of a zero-norm example set to 0);
- :func:`symmetric_diagonal`: a diagonal block of a symmetric kernel made exactly symmetric
  (with ones on the diagonal when normalised, zeros for zero-norm examples);
- :class:`StreamingTopK`: per test example, the ``k`` best training columns of blocks arriving in
  any order, ties to the lower training index whatever the block sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def inverse_norms(sq_norms: Tensor) -> tuple[Tensor, Tensor]:
    r"""``1 / sqrt(sq_norms)`` with 0 where a squared norm is 0, and the (n,) mask of zeros."""
    zero = sq_norms <= 0
    inv = torch.where(zero, torch.zeros_like(sq_norms), sq_norms.clamp_min(1e-300).rsqrt())
    return inv, zero


def cosine_normalised(
    block: Tensor, sq_rows: Tensor, sq_cols: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""A (b1, b2[, C, C]) block cosine-normalised.

    Returns:
        (block, zero_rows, zero_cols): the normalised block and the (b1,) / (b2,) masks of
        examples with a zero feature vector.
    """
    inv_r, zero_rows = inverse_norms(sq_rows)
    inv_c, zero_cols = inverse_norms(sq_cols)
    shape = (-1, 1) + (1,) * (block.dim() - 2)
    inv_r, inv_c = inv_r.reshape(shape), inv_c.reshape((1, -1) + (1,) * (block.dim() - 2))
    return block * inv_r * inv_c, zero_rows, zero_cols


def mirrored(block: Tensor) -> Tensor:
    """The block of the swapped pair: (b1, b2) -> (b2, b1), (b1, b2, C, C) -> (b2, b1, C, C)."""
    out = block.transpose(0, 1)
    return out.transpose(2, 3) if out.dim() == 4 else out


def symmetric_diagonal(block: Tensor, zero_rows: Tensor | None = None) -> Tensor:
    r"""A diagonal block made exactly symmetric (rounding of ``f @ f.T`` need not be).

    Args:
        block (Tensor): (b, b) or (b, b, C, C).
        zero_rows (Tensor, optional): for a normalised (b, b) block, the (b,) mask of
                zero-norm examples: the diagonal is set to 1 (0 for them).
    """
    block = (block + mirrored(block)) / 2
    if zero_rows is not None:
        block.diagonal().copy_((~zero_rows).to(block.dtype))
    return block


class StreamingTopK:
    r"""Per test example, the ``k`` largest (or smallest) scores over training columns.

    Args:
        k (int): candidates kept.
        largest (bool): keep the largest (descending) or smallest (ascending) scores.
    """

    def __init__(self, k: int, largest: bool) -> None:
        self.k = k
        self.largest = largest
        self._rows: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, row_start: int, col_start: int, scores: Tensor) -> None:
        r"""Merges a block of scores (b, ..., m) for training columns col_start .. +m."""
        scores = scores.cpu()
        m = scores.shape[-1]
        idx = torch.arange(col_start, col_start + m).expand(scores.shape)
        if row_start in self._rows:
            kept, kept_idx = self._rows[row_start]
            scores = torch.cat([kept, scores], dim=-1)
            idx = torch.cat([kept_idx, idx], dim=-1)
        # ties go to the lower training index: order candidates by index, then sort stably
        by_index = idx.argsort(dim=-1, stable=True)
        scores, idx = scores.gather(-1, by_index), idx.gather(-1, by_index)
        top, pos = torch.sort(scores, dim=-1, descending=self.largest, stable=True)
        kk = min(self.k, scores.shape[-1])
        self._rows[row_start] = (top[..., :kk], idx.gather(-1, pos[..., :kk]))

    def result(self) -> tuple[Tensor, Tensor]:
        """``(scores, indices)``, each (n, ..., k), rows in order (empty when nothing came)."""
        starts = sorted(self._rows)
        if not starts:
            return torch.empty(0, self.k), torch.empty(0, self.k, dtype=torch.int64)
        scores = torch.cat([self._rows[s][0] for s in starts])
        indices = torch.cat([self._rows[s][1] for s in starts])
        return scores, indices
