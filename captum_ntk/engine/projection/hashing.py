r"""The counter-based hash behind every seeded projection.

Entry (k, p) of a projection matrix is a pure function of ``(seed, k, p)``: 32-bit "lowbias32"
finaliser rounds on int32 tensors (int32 multiplication wraps modulo 2^32 and ``(x >> s) & mask``
is the logical shift), so the bits are the same on every device and in every order of generation.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

M32 = 0xFFFFFFFF


def i32(value: int) -> int:
    """A uint32 constant as the int32 with the same bits."""
    value &= M32
    return value - (1 << 32) if value >= 1 << 31 else value


C1, C2 = i32(0x7FEB352D), i32(0x846CA68B)


def mix32(x: Tensor) -> Tensor:
    """lowbias32: a bijective avalanche mix of 32-bit words held in int32 tensors.

    int32 multiplication wraps modulo 2^32 and ``(x >> s) & mask`` is the logical shift,
    so the bits equal the uint32 reference on every device.
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * C1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * C2
    return x ^ ((x >> 16) & 0xFFFF)


@functools.lru_cache(maxsize=64)  # three ints per seed; called for every column block
def seed_keys(seed: int) -> tuple[int, int, int]:
    s = int(seed) & ((1 << 64) - 1)
    words = torch.tensor([i32(s), i32(s >> 32)], dtype=torch.int32)
    k0 = mix32(words[0:1] ^ i32(0x9E3779B9))
    k1 = mix32(words[1:2] ^ k0 ^ i32(0x85EBCA6B))
    k2 = mix32(k0 ^ k1 ^ i32(0xC2B2AE35))
    return int(k0), int(k1), int(k2)


def index_words(start: int, stop: int, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    """Low and high 32-bit words of the indices start..stop-1 as int32 tensors."""
    idx = torch.arange(start, stop, dtype=torch.int64, device=device)
    low = (idx & M32).to(torch.int32)  # wraps to the int32 with the same bits
    high = (idx >> 32).to(torch.int32)
    return low, high


def row_keys(projection_dim: int, seed: int, device: torch.device | str | None = None) -> Tensor:
    """Per-row hash keys (K,) int32 of the projection matrix."""
    _, k1, k2 = seed_keys(seed)
    row_low, _ = index_words(0, projection_dim, device)
    return mix32(mix32(row_low ^ k1) ^ k2)


def column_keys(
    start: int, stop: int, seed: int, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Per-column hash keys, two (stop - start,) int32 tensors."""
    k0, _, k2 = seed_keys(seed)
    col_low, col_high = index_words(start, stop, device)
    col_key = mix32(mix32(col_low ^ k0) ^ col_high)
    return col_key, mix32(col_key ^ k2)
