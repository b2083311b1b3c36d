r"""Fused Rademacher projection on CUDA with Triton: ``out += G @ S.T`` where the signs of S
are generated in registers from the same hash as :func:`captum_ntk.engine.projection.dense.projection_block`,
so the K x P matrix never exists in memory (in the spirit of TRAK's fast_jl, but a pure function
of (seed, parameter index, K) that does not depend on the GPU model).

Used by :class:`captum_ntk.engine.projection.dense.RandomProjection` for float32/float16/bfloat16 gradients on
CUDA when Triton imports; everything else takes the blockwise torch path. float32 products use
TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set, else "tf32x3" (split-precision TF32:
the +-1 signs are exact in TF32, so only the gradients' low bits are rounded, about 2^-21
relative). P is split across programs; the partial sums are added in a fixed order, so results
are deterministic and do not depend on the number of rows in a call. Pointer offsets are computed in
64-bit integers (rows x parameters and splits x rows x K may exceed 2**31).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .hashing import C1, C2

#: Default bound on the partial sums' scratch memory (splits x M x K float32 values).
MAX_PARTIAL_BYTES = 256 << 20


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether Triton can be used (imports, and a CUDA device exists)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False
    return True


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def project_kernel(
        g_ptr, rk_ptr, ck_ptr, ck2_ptr, part_ptr,
        M, P, K, stride_gm, p_per_split,
        C1: tl.constexpr, C2: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        # program ids are int32: widen before multiplying, so offsets such as
        # row * stride_gm and split * M * K are int64 (they may exceed 2**31)
        pid_m = tl.program_id(0).to(tl.int64)
        pid_k = tl.program_id(1)
        pid_s = tl.program_id(2).to(tl.int64)
        p_begin = pid_s * p_per_split
        p_end = tl.minimum(p_begin + p_per_split, P)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_k = offs_k < K
        rk = tl.load(rk_ptr + offs_k, mask=mask_k, other=0).to(tl.uint32)
        c1 = tl.full((1, 1), C1, tl.uint32)
        c2 = tl.full((1, 1), C2, tl.uint32)
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for p0 in range(p_begin, p_end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < p_end
            g = tl.load(
                g_ptr + offs_m[:, None] * stride_gm + offs_p[None, :],
                mask=mask_m[:, None] & mask_p[None, :],
                other=0.0,
            )
            ck = tl.load(ck_ptr + offs_p, mask=mask_p, other=0).to(tl.uint32)
            ck2 = tl.load(ck2_ptr + offs_p, mask=mask_p, other=0).to(tl.uint32)
            h = (ck[:, None] ^ rk[None, :]) * c1  # uint32: wraps modulo 2^32
            h = (h ^ ck2[:, None]) * c2
            sign = tl.where((h >> 31) == 1, -1.0, 1.0).to(g.dtype)
            acc += tl.dot(g, sign, input_precision=PRECISION)
        # one partial sum per P split; summed in a fixed order afterwards (deterministic)
        part_ptrs = part_ptr + pid_s * M * K + offs_m[:, None] * K + offs_k[None, :]
        tl.store(part_ptrs, acc, mask=mask_m[:, None] & mask_k[None, :])

    return project_kernel


def project_accumulate(
    gradients: Tensor,
    row_key: Tensor,
    col_key: Tensor,
    col_key2: Tensor,
    out: Tensor,
    scratch_bytes: int = MAX_PARTIAL_BYTES,
) -> None:
    r"""``out += gradients @ S.T`` with S's signs generated from the keys.

    Args:
        gradients (Tensor): (M, p) on CUDA, float32/float16/bfloat16; rows may be strided
                (e.g. a column slice of a wider tensor) but columns must be contiguous.
        row_key (Tensor): (K,) int32 row keys.
        col_key, col_key2 (Tensor): (p,) int32 column keys of these columns.
        out (Tensor): (M, K) float32 accumulator, contiguous.
        scratch_bytes (int): bound on the partial sums (splits x M x K float32); at least one
                split is always used.
    """
    import triton

    g = gradients if gradients.stride(-1) == 1 else gradients.contiguous()
    m, p = g.shape
    k = row_key.shape[0]
    if g.dtype == torch.float32:
        # signs are exact in TF32, so tf32x3 keeps ~fp32 accuracy at tensor-core speed
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"
    else:
        precision = "ieee"
    block_m = 64 if m >= 64 else max(16, triton.next_power_of_2(m))
    block_k, block_p = 128, 32
    grid_m, grid_k = triton.cdiv(m, block_m), triton.cdiv(k, block_k)
    # split P so that there are enough programs to fill the GPU (about 4 waves of 132 SMs);
    # the split depends on K and P only, so a row's sum order does not depend on M
    splits = max(1, min(triton.cdiv(528, grid_k), triton.cdiv(p, 8 * block_p)))
    # bound the partial sums' scratch memory (splits x M x K floats)
    splits = max(1, min(splits, scratch_bytes // (4 * m * k)))
    p_per_split = triton.cdiv(triton.cdiv(p, splits), block_p) * block_p
    splits = triton.cdiv(p, p_per_split)
    partial = torch.empty(splits, m, k, device=g.device, dtype=torch.float32)
    _kernel()[(grid_m, grid_k, splits)](
        g, row_key, col_key, col_key2, partial,
        m, p, k, g.stride(0), p_per_split,
        C1=C1 & 0xFFFFFFFF, C2=C2 & 0xFFFFFFFF,
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_P=block_p, PRECISION=precision,
    )  # fmt: skip
    out += partial.sum(dim=0)
