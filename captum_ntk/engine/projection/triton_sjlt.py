r"""Deterministic SJLT on CUDA with Triton: a compressed-row (CSR) kernel.

For a column block of the gradients, the SJLT's nonzeros (indices from
:func:`captum_ntk.engine.projection.sjlt.sjlt_indices`) are sorted by output row (a stable sort, so within a
row they stay in parameter order) and one Triton program per (tile of gradient rows, output row)
gathers its columns and sums them in that order. Every output entry is written by exactly one
program, with no atomic additions: the result is deterministic and does not depend on the number
of gradient rows in a call. ``index_add_`` on CUDA (the fallback without Triton) would use atomic
additions instead, whose order changes the last bits from run to run.

Loads of one column across a tile of rows are strided (one gradient row per lane); this path
trades some bandwidth for determinism.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .triton_dense import available

__all__ = ["available", "csr_layout", "sjlt_accumulate"]


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def csr_kernel(
        g_ptr, col_ptr, rowptr_ptr, out_ptr,
        M, K, stride_gm,
        BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0).to(tl.int64)
        row = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        begin = tl.load(rowptr_ptr + row)
        end = tl.load(rowptr_ptr + row + 1)
        acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for e in range(begin, end):
            code = tl.load(col_ptr + e)  # +-(column + 1): the sign is the code's sign
            col = tl.abs(code).to(tl.int64) - 1
            value = tl.load(g_ptr + offs_m * stride_gm + col, mask=mask_m, other=0.0)
            value = value.to(tl.float32)
            acc += tl.where(code < 0, -value, value)
        out_ptrs = out_ptr + offs_m * K + row
        prev = tl.load(out_ptrs, mask=mask_m, other=0.0)
        tl.store(out_ptrs, prev + acc, mask=mask_m)

    return csr_kernel


def csr_layout(indices: Tensor, projection_dim: int) -> tuple[Tensor, Tensor]:
    r"""The nonzeros of a column block in compressed-row form.

    Args:
        indices (Tensor): (s, w) int64 from :func:`~captum_ntk.engine.projection.sjlt.sjlt_indices`.
        projection_dim (int): K.

    Returns:
        (codes, row_ptr): codes (s w,) int32, ``+-(column + 1)`` sorted by row then column;
        row_ptr (K + 1,) int32, the start of each row's codes.
    """
    k = int(projection_dim)
    s, w = indices.shape
    rows = indices.remainder(k).reshape(-1)
    cols = torch.arange(1, w + 1, device=indices.device).repeat(s)
    codes = torch.where(indices.reshape(-1) >= k, -cols, cols)
    order = torch.sort(rows, stable=True).indices
    counts = torch.bincount(rows, minlength=k)
    row_ptr = torch.zeros(k + 1, dtype=torch.int64, device=indices.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return codes[order].to(torch.int32), row_ptr.to(torch.int32)


def sjlt_accumulate(gradients: Tensor, indices: Tensor, projection_dim: int, out: Tensor) -> None:
    r"""``out += gradients @ S_block.T * sqrt(s)`` (unscaled +-1 entries) for one column block.

    Args:
        gradients (Tensor): (M, w) on CUDA; columns must be contiguous (rows may be strided).
        indices (Tensor): (s, w) int64 indices of the block's nonzeros.
        projection_dim (int): K.
        out (Tensor): (M, K) float32 accumulator, contiguous.
    """
    import triton

    g = gradients if gradients.stride(-1) == 1 else gradients.contiguous()
    m = g.shape[0]
    codes, row_ptr = csr_layout(indices, projection_dim)
    block_m = 64 if m >= 64 else max(16, triton.next_power_of_2(m))
    grid = (triton.cdiv(m, block_m), int(projection_dim))
    _kernel()[grid](g, codes, row_ptr, out, m, int(projection_dim), g.stride(0), BLOCK_M=block_m)
