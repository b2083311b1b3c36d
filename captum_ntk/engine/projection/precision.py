r"""Precision of the projection matmuls: ``"fp32"`` (default), ``"tf32"`` or ``"bf16"``.

The projections multiply gradients by a random matrix. ``precision`` chooses the arithmetic of
those products; the sum over parameter blocks is always accumulated in (at least) float32:

| precision | inputs of each product | product accumulated in | where |
|---|---|---|---|
| ``fp32`` | the compute dtype (float32 or float64) | the compute dtype | every device |
| ``tf32`` | float32, multiplied on tensor cores with 10-bit mantissas | float32 | CUDA only |
| ``bf16`` | gradients and matrix rounded to bfloat16 (8-bit mantissa) | float32 (see below) | CPU and CUDA |

With ``bf16`` each block product is accumulated in float32 inside the matmul; on CUDA it is
returned in float32 (``torch.mm(..., out_dtype=torch.float32)``), on the CPU (no such kernel)
it is rounded once to bfloat16 before being added to the float32 sum over blocks, which adds a
relative error of about 2^-9 per block product.

TF32 is a CUDA (Ampere and later) tensor-core format; a CPU has no TF32 matmul, so
``precision="tf32"`` on a CPU raises instead of silently computing in fp32. Rademacher entries
(+-1) and SJLT entries are exact in every format, so only the gradients are rounded; Gaussian
entries are rounded too. The sparse (SJLT) projection has no matmul: it ignores ``precision``
beyond refusing unknown values (its sums are float32, or float64 for float64 inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str, device: torch.device | str | None) -> str:
    r"""Validates ``precision`` for a compute device.

    Args:
        precision (str): "fp32", "tf32" or "bf16".
        device (torch.device, optional): the compute device.

    Returns:
        str: ``precision``.

    Raises:
        ValueError: unknown precision, or "tf32" on a non-CUDA device.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    kind = torch.device(device).type if device is not None else "cpu"
    if precision == "tf32" and kind != "cuda":
        raise ValueError(
            f"precision='tf32' needs a CUDA device (TF32 is an NVIDIA tensor-core format; the "
            f"compute device is {kind!r}). Use precision='bf16' for reduced-precision matmuls on "
            "the CPU, or 'fp32'."
        )
    return precision


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    r"""Float32 matmuls and convolutions in full float32 inside the block (restored after).

    Training scripts often call ``torch.set_float32_matmul_precision("high")`` or set
    ``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``, which
    make float32 products TF32 (10-bit mantissas) on Ampere and later GPUs, or bf16-based on
    CPUs with such units. ``precision="fp32"`` means float32: features and kernels are computed
    inside this context. (``precision="tf32"`` projections re-enable TF32 for their own
    products only.)
    """
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]


@contextlib.contextmanager
def tf32_matmul(enabled: bool) -> Iterator[None]:
    """Allows TF32 CUDA matmuls inside the block if ``enabled`` (restored after)."""
    if not enabled:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def accumulate_product(out: Tensor, left: Tensor, right: Tensor, precision: str = "fp32") -> None:
    r"""``out += left @ right`` in the arithmetic ``precision`` names.

    Args:
        out (Tensor): (M, N) accumulator, float32 or float64 (updated in place).
        left (Tensor): (M, J).
        right (Tensor): (J, N).
        precision (str): "fp32", "tf32" or "bf16".
    """
    if precision == "bf16":
        a, b = left.to(torch.bfloat16), right.to(torch.bfloat16)
        if out.is_cuda:
            out.add_(torch.mm(a, b, out_dtype=torch.float32).to(out.dtype))
        else:
            out.add_((a @ b).to(out.dtype))
        return
    with tf32_matmul(precision == "tf32" and out.is_cuda and out.dtype == torch.float32):
        out.addmm_(left.to(out.dtype), right.to(out.dtype))
