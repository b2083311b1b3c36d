r"""Dense Rademacher projection whose signs are generated once and kept bit-packed (CPU).

:class:`~captum_ntk.engine.projection.dense.RandomProjection` keeps the K x P matrix only when all of
it fits its cache budget in the compute dtype (4 K P bytes in float32); otherwise every call (one
per gradient pass) regenerates every column block from the hash, which on a CPU costs more than
the matmul for a few hundred gradient rows. A Rademacher entry is one bit, so the matrix fits the
same budget 32 times more often bit-packed (K P / 8 bytes: 86 MB for K = 1024, P = 670k):
:class:`PackedRademacherProjection` generates each column block once, at construction, packs
its signs, and per call expands a block with a 256-entry lookup table (an ``index_select``,
several times faster than hashing). The blocks, and so the features, are bit-identical to
:class:`RandomProjection`'s.

On CUDA (the fused Triton kernel generates signs in registers) and when even the packed matrix
does not fit, it behaves exactly as :class:`RandomProjection`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dense import RandomProjection

#: Row b of the table: the 8 signs (+-1) whose "negative" bits are the bits of b (LSB first).
_SIGNS = torch.tensor([[1.0 - 2.0 * ((b >> i) & 1) for i in range(8)] for b in range(256)])
_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack_signs(block: Tensor) -> Tensor:
    """(K, w) +-1 -> (K, ceil(w / 8)) uint8, bit i of byte j set where column 8 j + i is -1."""
    k, w = block.shape
    negative = block.lt(0).to(torch.uint8)
    pad = (-w) % 8
    if pad:
        negative = torch.cat([negative, negative.new_zeros(k, pad)], dim=1)
    bits = negative.reshape(k, -1, 8) << _SHIFTS.to(block.device)
    return bits.sum(-1, dtype=torch.uint8)


def unpack_signs(packed: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    """(K, ceil(w / 8)) uint8 -> (K, w) +-1 in ``dtype``."""
    k = packed.shape[0]
    table = _SIGNS.to(device=packed.device, dtype=dtype)
    signs = table.index_select(0, packed.reshape(-1).to(torch.int32))
    return signs.reshape(k, -1)[:, :width]


class PackedRademacherProjection(RandomProjection):
    r"""A Rademacher :class:`RandomProjection` with a bit-packed cache when the float one does not fit.

    Args: as :class:`RandomProjection` (``kind`` is "rademacher"). ``cache_bytes`` bounds the
    float cache (4 K P bytes in float32), else the packed one (``K ceil(w / 8)`` bytes per
    column block of width w); the packed cache is built on the CPU only.
    """

    def __init__(
        self,
        num_params: int,
        projection_dim: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_bytes: int = 1 << 29,
        scratch_bytes: int | None = None,
    ) -> None:
        self._packed: dict[tuple[int, int], Tensor] | None = None  # read by _block
        super().__init__(
            num_params, projection_dim, "rademacher", seed, device, dtype,
            cache_bytes=cache_bytes, scratch_bytes=scratch_bytes,
        )  # fmt: skip
        packed_bytes = sum(self.projection_dim * -(-(e - s) // 8) for s, e in self.bounds)
        if self._cache is None and self.device.type == "cpu" and packed_bytes <= cache_bytes:
            self._packed = {}
            for start, stop in self.bounds:
                self._packed[(start, stop)] = pack_signs(super()._block(start, stop))

    def _block(self, start: int, stop: int, *args: Tensor | None) -> Tensor:
        if self._packed is None or (start, stop) not in self._packed:
            return super()._block(start, stop, *args)
        return unpack_signs(self._packed[(start, stop)], stop - start, self.dtype)
