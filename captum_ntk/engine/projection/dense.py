r"""Seeded random projections R^P -> R^K generated blockwise, never as a whole K x P matrix.

Entry (k, p) of the projection matrix is a pure function of ``(seed, k, p)``: a
counter-based integer hash (32-bit "lowbias32" finaliser rounds on int32 tensors), so

* the matrix never has to be stored: any column block ``[p0, p1)`` is generated on demand,
  on any device, in any order;
* the same seed gives the same matrix on the CPU and on CUDA (Rademacher entries are
  bit-identical; Gaussian entries agree up to the rounding of ``log``/``cos``);
* results do not depend on batch sizes beyond floating-point rounding: the column blocks a
  gradient is cut into depend on ``K`` and the scratch budget only, so for a given budget the order
  of summation over P is fixed (BLAS may still round a product differently for different numbers
  of rows).

Rademacher entries are +-1 with probability 1/2; Gaussian entries are N(0, 1) (Box-Muller on
two 32-bit hashes). Projected features are ``S g / sqrt(K)``, so that
``E <S g, S h> / K = <g, h>``. ``p`` indexes the flattened concatenation of the selected
parameters (``select_parameters`` order): the matrix is a function of
(seed, parameter layout, K).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from . import triton_dense
from .hashing import C1, C2, column_keys, i32, mix32, row_keys
from .precision import accumulate_product, tf32_matmul

PROJECTIONS = ("rademacher", "gaussian")
#: Most entries generated per column block (K * width).
_BLOCK_ENTRIES = 1 << 22
#: Scratch bytes per generated entry (hash words, uniforms and the block itself; an upper bound).
_ENTRY_BYTES = {"rademacher": 16, "gaussian": 64}


def column_width(
    projection_dim: int, scratch_bytes: int | None = None, kind: str = "rademacher"
) -> int:
    r"""Width of the column blocks used for a given K (a function of K and the scratch budget).

    Args:
        projection_dim (int): K.
        scratch_bytes (int, optional): bytes the generation of one block may take. Default:
                no limit beyond ``2**22`` entries per block.
        kind (str): "rademacher" or "gaussian" (Gaussian blocks need more scratch per entry).

    Returns:
        int: columns per block, at least 1.
    """
    entries = _BLOCK_ENTRIES
    if scratch_bytes is not None:
        entries = min(entries, int(scratch_bytes) // _ENTRY_BYTES.get(kind, 64))
    return max(1, entries // int(projection_dim))


#: Largest default K (the paper's projection dimension).
MAX_DEFAULT_PROJECTION_DIM = 10240


def default_projection_dim(num_params: int) -> int:
    r"""The default K for P parameters: ``min(10240, 2 ** floor(log2(P / 4)))``, at least 1.

    The largest power of two not above P / 4 (so a projected feature is at most a quarter of
    a gradient and K is GEMM-friendly), capped at the paper's 10240, which it equals for every
    P >= 65536. A pure function of P: DigitsMLP (P = 8970) gets 2048, ResNet-18 gets 10240.

    Args:
        num_params (int): P.

    Returns:
        int: K (smaller than P whenever P >= 2).
    """
    num_params = int(num_params)
    if num_params < 8:
        return 1
    return min(MAX_DEFAULT_PROJECTION_DIM, 1 << ((num_params // 4).bit_length() - 1))


def projection_block(
    projection_dim: int,
    start: int,
    stop: int,
    kind: str = "rademacher",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    row_key: Tensor | None = None,
) -> Tensor:
    r"""Columns ``start:stop`` of the unscaled projection matrix.

    Args:
        projection_dim (int): K.
        start (int): first column (parameter index).
        stop (int): one past the last column.
        kind (str): "rademacher" (+-1) or "gaussian" (N(0, 1)).
        seed (int): the seed.
        dtype (torch.dtype): dtype of the result.
        device (torch.device, optional): where to generate it.
        row_key (Tensor, optional): ``row_keys(projection_dim, seed, device)``, if already
                computed.

    Returns:
        Tensor: shape (K, stop - start).
    """
    if kind not in PROJECTIONS:
        raise ValueError(f"Unknown projection {kind!r}; choose one of {PROJECTIONS}.")
    if row_key is None:
        row_key = row_keys(projection_dim, seed, device)
    col_key, col_key2 = column_keys(start, stop, seed, device)
    # Per entry: two multiply-xor rounds (no shifts: they are slow on CPU); the top bit of
    # an odd-constant product depends on every lower bit of its operand.
    h = row_key[:, None] ^ col_key[None, :]
    h.mul_(C1).bitwise_xor_(col_key2[None, :]).mul_(C2)
    if kind == "rademacher":
        # the top bit of the uint32 word is the sign bit of the int32
        out = h.lt(0).to(dtype)
        return out.mul_(-2).add_(1)
    h2 = mix32(h ^ i32(0x68E31DA4))
    u1 = (_as_unsigned(h) + 0.5) * 2.0**-32
    u2 = (_as_unsigned(h2) + 0.5) * 2.0**-32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)


def _as_unsigned(x: Tensor) -> Tensor:
    """The uint32 value of int32 words, as float64."""
    return x.to(torch.float64) % 2.0**32


def projection_matrix(
    num_params: int,
    projection_dim: int,
    kind: str = "rademacher",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""The whole unscaled projection matrix the engine uses (for tests and small P).

    Args:
        num_params (int): P.
        projection_dim (int): K.
        kind (str): "rademacher" or "gaussian".
        seed (int): the seed.
        dtype (torch.dtype): dtype of the result.
        device (torch.device, optional): where to build it.

    Returns:
        Tensor: shape (K, P); projected features are ``matrix @ g / sqrt(K)``.
    """
    return projection_block(projection_dim, 0, num_params, kind, seed, dtype, device)


def column_pieces(
    gradients: Tensor | Sequence[Tensor], num_params: int
) -> tuple[list[Tensor], list[int]]:
    """Gradient pieces (M, p_i) and their column offsets; a ValueError unless they total P."""
    parts = [gradients] if isinstance(gradients, Tensor) else list(gradients)
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + part.shape[-1])
    if offsets[-1] != num_params:
        raise ValueError(f"Expected gradients with {num_params} columns, got {offsets[-1]}.")
    return parts, offsets


class RandomProjection:
    r"""Applies the seeded K x P projection to rows of gradients, blockwise.

    Args:
        num_params (int): P.
        projection_dim (int): K; must be smaller than P.
        kind (str): "rademacher" or "gaussian".
        seed (int): the seed.
        device (torch.device): compute device.
        dtype (torch.dtype): compute dtype.
        cache_bytes (int): if the whole K x P matrix takes at most this many bytes it is
                generated once and kept; otherwise column blocks are regenerated per call.
        scratch_bytes (int, optional): bound on the scratch memory of one call beyond its
                input and output: one generated column block on the CPU (at least one column,
                K entries), hash keys and partial sums of the fused CUDA kernel. Default: no
                bound beyond ``2**22`` generated entries per block (CUDA: 256 MiB of partial
                sums).

    Nothing else is kept for the object's lifetime: hash keys are generated per call and
    column block.
    """

    #: arithmetic of the matmuls ("fp32", "tf32" on CUDA, "bf16"; see
    #: :mod:`captum_ntk.engine.projection.precision`), set by ``make_projection``
    precision = "fp32"

    def __init__(
        self,
        num_params: int,
        projection_dim: int,
        kind: str = "rademacher",
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_bytes: int = 1 << 29,
        scratch_bytes: int | None = None,
    ) -> None:
        if kind not in PROJECTIONS:
            raise ValueError(f"Unknown projection {kind!r}; choose one of {PROJECTIONS}.")
        if isinstance(projection_dim, bool) or not isinstance(projection_dim, numbers.Integral):
            raise ValueError(f"projection_dim must be an int, got {projection_dim!r}.")
        if int(projection_dim) < 1:
            raise ValueError(f"projection_dim must be positive, got {projection_dim}.")
        if int(projection_dim) >= int(num_params):
            raise ValueError(
                f"projection_dim={projection_dim} is not smaller than the number of parameters "
                f"P={num_params}: a projection saves nothing there. Use the exact kernel "
                f"('trntk' / 'pntk') or a smaller projection_dim (e.g. {max(1, num_params // 2)})."
            )
        self.num_params = int(num_params)
        self.projection_dim = int(projection_dim)
        self.kind = kind
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.scratch_bytes = None if scratch_bytes is None else int(scratch_bytes)
        width = column_width(self.projection_dim, self.scratch_bytes, kind)
        self.bounds = [
            (s, min(s + width, self.num_params)) for s in range(0, self.num_params, width)
        ]
        itemsize = torch.tensor([], dtype=dtype).element_size()
        self._cache: list[Tensor] | None = None
        if self.projection_dim * self.num_params * itemsize <= cache_bytes:
            self._cache = [self._block(s, e) for s, e in self.bounds]

    def _block(self, start: int, stop: int, row_key: Tensor | None = None) -> Tensor:
        return projection_block(
            self.projection_dim, start, stop, self.kind, self.seed, self.dtype, self.device, row_key
        )

    def __call__(self, gradients: Tensor | Sequence[Tensor]) -> Tensor:
        r"""Projects rows.

        Args:
            gradients (Tensor or sequence of Tensors): shape (M, P), or pieces (M, p_i)
                    that concatenate to it (per-parameter gradients; never concatenated
                    beyond one column block).

        Returns:
            Tensor: shape (M, K), ``gradients @ S.T / sqrt(K)``.
        """
        parts, offsets = column_pieces(gradients, self.num_params)
        first = parts[0]
        if self._use_triton(first):
            return self._triton_project(parts, offsets)
        # accumulate over column blocks in at least float32 (bf16/fp16 sums drift badly)
        acc_dtype = torch.promote_types(first.dtype, torch.float32)
        out = torch.zeros(first.shape[0], self.projection_dim, device=first.device, dtype=acc_dtype)
        # K int32 row keys for this call (at most a quarter of one column's scratch)
        row_key = (
            None
            if self._cache is not None
            else row_keys(self.projection_dim, self.seed, self.device)
        )
        for i, (start, stop) in enumerate(self.bounds):
            pieces = [
                part[:, max(start, lo) - lo : min(stop, hi) - lo]
                for part, lo, hi in zip(parts, offsets[:-1], offsets[1:])
                if lo < stop and hi > start
            ]
            columns = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            block = self._cache[i] if self._cache is not None else self._block(start, stop, row_key)
            accumulate_product(out, columns, block.T, self.precision)
        return (out / math.sqrt(self.projection_dim)).to(first.dtype)

    def _use_triton(self, first: Tensor) -> bool:
        if self._cache is not None or self.kind != "rademacher" or first.device.type != "cuda":
            return False
        if first.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return False

        return triton_dense.available()

    def _triton_project(self, parts: list[Tensor], offsets: list[int]) -> Tensor:
        first = parts[0]
        device = first.device
        row_key = row_keys(self.projection_dim, self.seed, device)
        out = torch.zeros(first.shape[0], self.projection_dim, device=device, dtype=torch.float32)
        # column keys (8 bytes per column, about 32 while they are hashed) take at most half of
        # the scratch at a time; the partial sums get the other half
        scratch = triton_dense.MAX_PARTIAL_BYTES
        if self.scratch_bytes is not None:
            scratch = min(scratch, self.scratch_bytes)
        width = max(1, scratch // 64)
        for part, lo, hi in zip(parts, offsets[:-1], offsets[1:]):
            for start in range(lo, hi, width):
                stop = min(start + width, hi)
                col_key, col_key2 = column_keys(start, stop, self.seed, device)
                piece = part[:, start - lo : stop - lo]  # a view: rows keep their stride
                if self.precision == "bf16":
                    piece = piece.to(torch.bfloat16)
                with tf32_matmul(self.precision == "tf32"):
                    triton_dense.project_accumulate(
                        piece, row_key, col_key, col_key2, out, scratch_bytes=scratch // 2
                    )
        return (out / math.sqrt(self.projection_dim)).to(first.dtype)
