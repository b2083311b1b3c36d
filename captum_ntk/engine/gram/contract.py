r"""Inner products of per-layer Gram features.

For a layer that maps inputs ``a_t`` at T positions (tokens, pixels) to outputs with
output gradients ``delta^c_t`` (one per logit c), the gradient of logit c with respect to the
layer's weight (and bias) is ``sum_t delta^c_t (a_t, 1)^T``, so

    <g^c_i, g^c'_j> = sum_{t, s} (<a_it, a_js> + 1) <delta^c_it, delta^c'_js>.

A :class:`GramPiece` holds ``a`` (dense inputs, or token ids for an embedding, where
``<a_it, a_js>`` is 1 when the tokens match) and ``delta`` for a block of B examples; the
functions here contract two pieces without forming any per-example gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Elements of the (rows, cols, groups, T1, T2) temporaries formed at once.
MAX_TEMP_ELEMENTS = 1 << 24


@dataclass
class GramPiece:
    r"""One layer's Gram features for B examples.

    Attributes:
        a (Tensor): dense layer inputs (B, g, T, x) for g weight groups, or token ids (B, T).
        delta (Tensor): output gradients (B, g, T, K * o), the K logit combinations
                concatenated along the last dimension (K o-sized blocks).
        num_logits (int): K.
        bias (bool): whether a bias (a constant 1 appended to ``a``) is part of the layer.
        valid (Tensor, optional): (B, T) bool for token inputs: positions whose embedding
                row receives a gradient (not ``padding_idx``).
    """

    a: Tensor
    delta: Tensor
    num_logits: int
    bias: bool = False
    valid: Tensor | None = None

    @property
    def tokens(self) -> bool:
        """Whether ``a`` holds token ids (an embedding lookup)."""
        return self.valid is not None

    def __len__(self) -> int:
        return int(self.delta.shape[0])

    def tensors(self) -> list[Tensor]:
        """The tensors held (for memory accounting)."""
        return [t for t in (self.a, self.delta, self.valid) if t is not None]

    def slice(self, start: int, stop: int) -> GramPiece:
        """Examples ``start:stop``."""
        valid = None if self.valid is None else self.valid[start:stop]
        return GramPiece(
            self.a[start:stop], self.delta[start:stop], self.num_logits, self.bias, valid
        )

    def per_logit_delta(self) -> Tensor:
        """``delta`` as (B, K, g, T, o)."""
        b, g, t, ko = self.delta.shape
        k = self.num_logits
        return self.delta.reshape(b, g, t, k, ko // k).permute(0, 3, 1, 2, 4)


def input_gram(p1: GramPiece, p2: GramPiece) -> Tensor:
    r"""``<a_it, a_js>`` (+1 with a bias), shape (B1, B2, g, T1, T2)."""
    if p1.tokens:
        match = p1.a[:, None, :, None] == p2.a[None, :, None, :]
        match = match & p1.valid[:, None, :, None] & p2.valid[None, :, None, :]
        return match.to(p1.delta.dtype).unsqueeze(2)
    gram = torch.einsum("igtx,jgsx->ijgts", p1.a, p2.a)
    return gram + 1 if p1.bias else gram


def _row_chunk(per_row: int) -> int:
    """Rows per chunk so that a temporary of ``per_row`` elements per row stays bounded."""
    return max(1, MAX_TEMP_ELEMENTS // max(1, per_row))


def trace_inner(p1: GramPiece, p2: GramPiece) -> Tensor:
    r"""``sum_c <g^c_i, g^c_j>`` over the layer's parameters, shape (B1, B2)."""
    g, t1, t2 = p1.delta.shape[1], p1.delta.shape[2], p2.delta.shape[2]
    if g == 1 and t1 == 1 and t2 == 1 and not p1.tokens:  # one position: two plain matmuls
        a_gram = p1.a[:, 0, 0] @ p2.a[:, 0, 0].T
        a_gram = a_gram + 1 if p1.bias else a_gram
        return a_gram * (p1.delta[:, 0, 0] @ p2.delta[:, 0, 0].T)
    out = []
    step = _row_chunk(len(p2) * g * t1 * t2)
    for start in range(0, len(p1), step):
        rows = p1.slice(start, start + step)
        output_gram = torch.einsum("igtx,jgsx->ijgts", rows.delta, p2.delta)
        out.append(torch.einsum("ijgts,ijgts->ij", input_gram(rows, p2), output_gram))
    return torch.cat(out)


def per_class_inner(p1: GramPiece, p2: GramPiece) -> Tensor:
    r"""``<g^c_i, g^c'_j>`` over the layer's parameters, shape (B1, B2, K, K)."""
    out = []
    d2 = p2.per_logit_delta()
    _, k, g, t2, o = d2.shape
    t1 = p1.delta.shape[2]
    step = _row_chunk(len(p2) * g * t1 * max(t2, k * o))
    for start in range(0, len(p1), step):
        rows = p1.slice(start, start + step)
        mixed = torch.einsum("ijgts,jdgso->ijdgto", input_gram(rows, p2), d2)
        out.append(torch.einsum("icgto,ijdgto->ijcd", rows.per_logit_delta(), mixed))
    return torch.cat(out)


def trace_sq_norms(p: GramPiece) -> Tensor:
    r"""``sum_c ||g^c_i||^2`` over the layer's parameters, shape (B,)."""
    if p.delta.shape[1] == 1 and p.delta.shape[2] == 1 and not p.tokens:  # one position
        a_sq = torch.linalg.vecdot(p.a[:, 0, 0], p.a[:, 0, 0])
        a_sq = a_sq + 1 if p.bias else a_sq
        return a_sq * torch.linalg.vecdot(p.delta[:, 0, 0], p.delta[:, 0, 0])
    out = []
    step = _row_chunk(p.delta.shape[1] * p.delta.shape[2] ** 2)
    for start in range(0, len(p), step):
        rows = p.slice(start, start + step)
        if rows.tokens:
            a_gram = (rows.a[:, :, None] == rows.a[:, None, :]) & (
                rows.valid[:, :, None] & rows.valid[:, None, :]
            )
            a_gram = a_gram.to(rows.delta.dtype).unsqueeze(1)
        else:
            a_gram = torch.einsum("igtx,igsx->igts", rows.a, rows.a)
            a_gram = a_gram + 1 if rows.bias else a_gram
        d_gram = torch.einsum("igtx,igsx->igts", rows.delta, rows.delta)
        out.append(torch.einsum("igts,igts->i", a_gram, d_gram))
    return torch.cat(out)
