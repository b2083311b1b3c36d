"""precision= of the projection matmuls: fp32 default, bf16 error bounded, tf32 CUDA-only."""

from __future__ import annotations

import pytest
import torch
from models import make_wide_mlp, mlp_inputs

import captum_ntk as cn
from captum_ntk.engine.projection.precision import accumulate_product


def test_bf16_products_accumulate_in_fp32() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(8, 4096), torch.randn(4096, 16)
    exact = a.double() @ b.double()
    out = torch.zeros(8, 16)
    accumulate_product(out, a, b, "bf16")
    assert out.dtype == torch.float32
    rel = float((out.double() - exact).norm() / exact.norm())
    assert 1e-4 < rel < 2e-2  # rounded to bfloat16 (8-bit mantissa), not to fp32
    out32 = torch.zeros(8, 16)
    accumulate_product(out32, a, b, "fp32")
    assert float((out32.double() - exact).norm() / exact.norm()) < 1e-6


@pytest.mark.parametrize("projection", ["rademacher", "gaussian", "kronecker"])
def test_bf16_kernel_is_close_to_fp32(projection: str) -> None:
    model = make_wide_mlp(dtype=torch.float32)
    x = mlp_inputs(6, d_in=20, dtype=torch.float32)
    opts = dict(kernel="proj_trntk", projection=projection, projection_dim=512)
    base = cn.kernel_matrix(model, x, **opts)
    low = cn.kernel_matrix(model, x, precision="bf16", **opts)
    err = float((low - base).abs().max())
    assert 0 < err < 2e-2
    assert torch.equal(base, cn.kernel_matrix(model, x, precision="fp32", **opts))


def test_bad_precision_is_refused() -> None:
    model, x = make_wide_mlp(dtype=torch.float32), mlp_inputs(2, d_in=20, dtype=torch.float32)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        cn.kernel_matrix(model, x, kernel="proj_pntk", projection_dim=64, precision="tf32")
    with pytest.raises(ValueError, match="Unknown precision"):
        cn.kernel_matrix(model, x, kernel="proj_pntk", projection_dim=64, precision="fp16")
    with pytest.raises(ValueError, match="not a projected kernel"):
        cn.kernel_matrix(model, x, kernel="trntk", precision="bf16")
