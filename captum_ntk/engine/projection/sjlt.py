r"""Sparse Johnson-Lindenstrauss transform (SJLT): a K x P projection with s nonzeros per column.

Column p of the matrix S has exactly ``s`` nonzero entries, ``+-1/sqrt(s)``, one in each of
``s`` disjoint row buckets (the block construction of Kane and Nelson): bucket ``j`` holds rows
``[j K // s, (j + 1) K // s)`` and column p's entry in it sits at row
``j K // s + h_j(p) mod (bucket width)``, with sign from a second hash. The rows of a column are
therefore distinct, ``||S e_p|| = 1`` exactly, and distinct columns have independent signs, so

    E <S g, S h> = <g, h>

(projected features are ``S g``, with no further ``1/sqrt(K)``). The hashes are the counter-based
hash of :mod:`captum_ntk.engine.projection.hashing`: S is a pure function of ``(seed, p, K, s)``, identical
for every batch size, column-block size, device and GPU model.

Cost: ``s P`` additions per gradient row instead of ``K P`` multiply-adds for a dense projection.
On the CPU each column block is added with ``index_add_`` into a (M, 2K) accumulator (column k for
positive entries of row k, column K + k for negative ones), so every output entry is a sum in
parameter order: bit-identical whatever the batch size or block size. On CUDA with Triton
(float32/float16/bfloat16 gradients) a
compressed-row (CSR) kernel sums each output entry in parameter order too (deterministic, see
:mod:`captum_ntk.engine.projection.triton_sjlt`); without Triton ``index_add_`` on CUDA uses atomic adds, whose
order (and so the last bits of the result) may change from run to run.

Default ``s`` = 4 (:data:`DEFAULT_NONZEROS`): each column touches 4 rows, enough for the norm of
a projected gradient to concentrate like a dense projection's when no single parameter dominates
the gradient; ``s = 1`` is the CountSketch (fastest, same mean and variance for inner products of
spread-out gradients), larger ``s`` costs proportionally more.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from . import triton_sjlt
from .dense import column_pieces
from .hashing import M32, column_keys, i32, mix32

#: Default nonzeros per column.
DEFAULT_NONZEROS = 4
#: Most columns whose indices are generated at once when they are not cached.
_MAX_WIDTH = 1 << 16
#: Scratch bytes per generated (column, nonzero) entry: hash words and the int64 index.
_ENTRY_BYTES = 40
_BUCKET_SALT = i32(0x9E3779B9)
_SHAPE_SALT = i32(0x85EBCA6B)


def check_sjlt_shape(num_params: int, projection_dim: int, nonzeros: int) -> None:
    """Raises a ValueError for an SJLT that cannot be built (s < 1, K < s, K >= P, non-ints)."""
    for label, value in (("sjlt_nonzeros", nonzeros), ("projection_dim", projection_dim)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{label} must be an int, got {value!r}.")
    if int(nonzeros) < 1:
        raise ValueError(f"sjlt_nonzeros must be a positive int, got {nonzeros}.")
    if int(projection_dim) < int(nonzeros):
        raise ValueError(
            f"projection_dim={projection_dim} is smaller than the SJLT's nonzeros per column "
            f"s={nonzeros}: each column needs s distinct rows. Use a larger projection_dim."
        )
    if int(projection_dim) >= int(num_params):
        raise ValueError(
            f"projection_dim={projection_dim} is not smaller than the number of parameters "
            f"P={num_params}: a projection saves nothing there. Use the exact kernel or a "
            f"smaller projection_dim (e.g. {max(1, num_params // 2)})."
        )


def sjlt_indices(
    start: int,
    stop: int,
    projection_dim: int,
    nonzeros: int = DEFAULT_NONZEROS,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Rows and signs of the nonzeros of columns ``start:stop``, as indices into 2K slots.

    Args:
        start (int): first column (parameter index).
        stop (int): one past the last column.
        projection_dim (int): K.
        nonzeros (int): s.
        seed (int): the seed.
        device (torch.device, optional): where to compute them.

    Returns:
        Tensor: (s, stop - start) int64; entry ``r + K * n`` means row r with sign ``(-1)^n``.
    """
    k, s = int(projection_dim), int(nonzeros)
    col_key, col_key2 = column_keys(start, stop, seed, device)
    bucket = torch.arange(s, dtype=torch.int32, device=device)[:, None]
    salt = mix32(bucket * _BUCKET_SALT ^ i32(k * 1031 + s) ^ _SHAPE_SALT)
    h = mix32(col_key[None, :] ^ salt)
    negative = mix32(h ^ col_key2[None, :]).lt(0)
    lows = torch.tensor([j * k // s for j in range(s + 1)], device=device)
    widths = (lows[1:] - lows[:-1])[:, None]
    offset = (h.to(torch.int64) & M32).remainder_(widths)
    return offset.add_(lows[:-1, None]).add_(negative.to(torch.int64) * k)


def sjlt_matrix(
    num_params: int,
    projection_dim: int,
    nonzeros: int = DEFAULT_NONZEROS,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""The whole SJLT matrix (for tests and small P).

    Args:
        num_params (int): P.
        projection_dim (int): K.
        nonzeros (int): s.
        seed (int): the seed.
        dtype (torch.dtype): dtype of the result.
        device (torch.device, optional): where to build it.

    Returns:
        Tensor: (K, P), entries 0 and ``+-1/sqrt(s)``; projected features are ``matrix @ g``.
    """
    k = int(projection_dim)
    idx = sjlt_indices(0, num_params, k, nonzeros, seed, device)
    cols = torch.arange(num_params, device=device).expand_as(idx)
    values = 1.0 - 2.0 * (idx >= k).to(dtype)
    out = torch.zeros(k, num_params, dtype=dtype, device=device)
    out[idx.remainder(k), cols] = values / math.sqrt(int(nonzeros))
    return out


class SparseProjection:
    r"""Applies the seeded SJLT to rows of gradients, column block by column block.

    Same interface as :class:`captum_ntk.engine.projection.dense.RandomProjection`.

    Args:
        num_params (int): P.
        projection_dim (int): K; ``nonzeros <= K < P``.
        nonzeros (int): s, nonzeros per column. Default: 4.
        seed (int): the seed.
        device (torch.device): compute device.
        dtype (torch.dtype): compute dtype.
        cache_bytes (int): if the (s, P) int64 indices take at most this many bytes they are
                computed once and kept (8 s P bytes, 21 MB for s = 4, P = 670k); otherwise they
                are recomputed per call and column block.
        scratch_bytes (int, optional): bound on the index scratch of one column block (about
                40 s bytes per column). Default: blocks of at most 65,536 columns.
    """

    kind = "sjlt"

    def __init__(
        self,
        num_params: int,
        projection_dim: int,
        nonzeros: int = DEFAULT_NONZEROS,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_bytes: int = 1 << 29,
        scratch_bytes: int | None = None,
    ) -> None:
        check_sjlt_shape(num_params, projection_dim, nonzeros)
        self.num_params = int(num_params)
        self.projection_dim = int(projection_dim)
        self.nonzeros = int(nonzeros)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.scratch_bytes = None if scratch_bytes is None else int(scratch_bytes)
        width = _MAX_WIDTH
        if self.scratch_bytes is not None:
            width = min(width, self.scratch_bytes // (_ENTRY_BYTES * self.nonzeros))
        self.width = max(1, width)
        self._cache: Tensor | None = None
        if 8 * self.nonzeros * self.num_params <= cache_bytes:
            self._cache = self._indices(0, self.num_params, self.device)
            self.width = self.num_params  # nothing generated per call: whole pieces at once

    def _indices(self, start: int, stop: int, device: torch.device) -> Tensor:
        if self._cache is not None and self._cache.device == device:
            return self._cache[:, start:stop]
        return sjlt_indices(start, stop, self.projection_dim, self.nonzeros, self.seed, device)

    def __call__(self, gradients: Tensor | Sequence[Tensor]) -> Tensor:
        r"""Projects rows.

        Args:
            gradients (Tensor or sequence of Tensors): shape (M, P), or pieces (M, p_i) that
                    concatenate to it (never concatenated).

        Returns:
            Tensor: shape (M, K), ``gradients @ S.T``.
        """
        parts, offsets = column_pieces(gradients, self.num_params)
        first = parts[0]
        k = self.projection_dim
        acc_dtype = torch.promote_types(first.dtype, torch.float32)
        half_or_single = (torch.float32, torch.float16, torch.bfloat16)
        if first.is_cuda and first.dtype in half_or_single and triton_sjlt.available():
            out = torch.zeros(first.shape[0], k, device=first.device, dtype=torch.float32)
            for part, lo, hi in zip(parts, offsets[:-1], offsets[1:]):
                for start in range(lo, hi, self.width):
                    stop = min(start + self.width, hi)
                    idx = self._indices(start, stop, first.device)
                    triton_sjlt.sjlt_accumulate(part[:, start - lo : stop - lo], idx, k, out)
        else:
            both = torch.zeros(first.shape[0], 2 * k, device=first.device, dtype=acc_dtype)
            for part, lo, hi in zip(parts, offsets[:-1], offsets[1:]):
                for start in range(lo, hi, self.width):
                    stop = min(start + self.width, hi)
                    idx = self._indices(start, stop, first.device)
                    piece = part[:, start - lo : stop - lo].to(acc_dtype)
                    for row_index in idx:
                        both.index_add_(1, row_index, piece)
            out = both[:, :k] - both[:, k:]
        return (out / math.sqrt(self.nonzeros)).to(first.dtype)
