"""The bit-packed cache of the dense Rademacher projection."""

from __future__ import annotations

import math

import torch

from captum_ntk.engine.projection.dense import RandomProjection, projection_block, projection_matrix
from captum_ntk.engine.projection.packed import (
    PackedRademacherProjection,
    pack_signs,
    unpack_signs,
)


def test_pack_and_unpack_round_trip_for_any_width() -> None:
    for width in (1, 7, 8, 9, 333):
        block = projection_block(40, 100, 100 + width, seed=3)
        packed = pack_signs(block)
        assert packed.dtype == torch.uint8 and packed.shape == (40, -(-width // 8))
        assert torch.equal(unpack_signs(packed, width, torch.float32), block)


def test_packed_cache_gives_the_same_features_as_regeneration() -> None:
    torch.manual_seed(0)
    p, k = 7003, 600
    g = torch.randn(5, p)
    scratch = 16 * k * 333  # column blocks of 333 columns, the last one partial
    packed = PackedRademacherProjection(p, k, seed=4, cache_bytes=k * p // 4, scratch_bytes=scratch)
    plain = RandomProjection(p, k, seed=4, cache_bytes=0, scratch_bytes=scratch)
    assert packed._cache is None and packed._packed is not None  # only the packed one fits
    assert torch.equal(packed([g[:, :10], g[:, 10:]]), plain(g))
    reference = g.double() @ projection_matrix(p, k, seed=4).T / math.sqrt(k)
    assert float((packed(g).double() - reference).abs().max()) < 1e-5


def test_no_packed_cache_when_it_does_not_fit_or_the_float_one_does() -> None:
    assert PackedRademacherProjection(7003, 600, cache_bytes=100)._packed is None
    roomy = PackedRademacherProjection(7003, 600, cache_bytes=1 << 26)
    assert roomy._cache is not None and roomy._packed is None
