"""Half-precision models: inner products, norms and normalisation accumulate in float32.

Issue 17 (2): a bfloat16 12-layer tanh MLP gave a trntk with 3 distinct values of 256 and
Spearman -0.13 against the float64 kernel of the same weights, returned in bfloat16.
"""

from __future__ import annotations

import copy

import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import TensorDataset

import captum_ntk as cn


def deep_tanh_mlp() -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(12):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(16, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)
    return model.eval()


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "kernel, options",
    [
        ("trntk", {}),
        ("trntk", {"engine": "jacobian"}),
        ("proj_trntk", {"projection_dim": 128}),
        ("pntk", {}),
    ],
)
def test_half_precision_kernels_keep_their_ranks(half, kernel, options):
    model = deep_tanh_mlp()
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    reference = cn.kernel_matrix(
        copy.deepcopy(model).double(), x.double(), kernel=kernel, **options
    )
    low = cn.kernel_matrix(copy.deepcopy(model).to(half), x.to(half), kernel=kernel, **options)
    assert low.dtype == torch.float32
    assert low.unique().numel() >= 100  # of 136 distinct entries of a symmetric 16 x 16 kernel
    rho = stats.spearmanr(low.flatten().numpy(), reference.flatten().numpy()).statistic
    assert rho >= 0.95, rho


def test_half_precision_attribution_influence_is_float32():
    model = deep_tanh_mlp().to(torch.bfloat16)
    x = torch.randn(12, 16).to(torch.bfloat16)
    attr = cn.TrNTKAttribution(model, TensorDataset(x, torch.arange(12) % 10), batch_size=5)
    scores = attr.influence(x[:3])
    assert scores.dtype == torch.float32
    assert scores.unique().numel() > 20


class _PrecisionSpy(nn.Module):
    """Records the float32 matmul settings in force while the model runs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.seen: list[tuple[str, bool, bool]] = []

    def forward(self, x):
        self.seen.append(
            (
                torch.get_float32_matmul_precision(),
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
            )
        )
        return self.fc(x)


@pytest.mark.parametrize("kernel", ["trntk", "proj_trntk", "ck"])
def test_fp32_means_fp32_under_a_training_scripts_tf32_settings(kernel):
    """Issue 17 (6): precision='fp32' must hold under set_float32_matmul_precision('high') and
    allow_tf32=True, which many training scripts set; the caller's settings are restored."""
    model = _PrecisionSpy().eval()
    x = torch.randn(6, 4)
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        options = {"projection_dim": 8} if kernel.startswith("proj") else {}
        cn.kernel_matrix(model, x, kernel=kernel, engine="jacobian", **options)
        assert model.seen and set(model.seen) == {("highest", False, False)}
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]


def test_attribution_methods_run_in_fp32_under_tf32_settings():
    model = _PrecisionSpy().eval()
    x = torch.randn(6, 4)
    data = TensorDataset(x, torch.arange(6) % 3)
    saved = torch.get_float32_matmul_precision()
    try:
        attr = cn.ProjTrNTKAttribution(model, data, projection_dim=8)
        torch.set_float32_matmul_precision("high")
        model.seen.clear()
        attr.influence(x[:2])
        attr.fit_surrogate(alpha=0.1)
        assert model.seen and set(model.seen) == {("highest", False, False)}
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)


def test_half_precision_stores_hold_float32_features(tmp_path):
    """The disk-store path widens like the in-memory assembly (before, a bf16 store held bf16
    features and their products were accumulated in bf16)."""
    model = deep_tanh_mlp().to(torch.bfloat16)
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    options = {"kernel": "proj_trntk", "projection_dim": 128}
    in_memory = cn.kernel_matrix(model, x, **options)
    stored = cn.kernel_matrix(model, x, store=tmp_path / "k", **options)
    assert stored.dtype == torch.float32
    torch.testing.assert_close(stored, in_memory, rtol=1e-5, atol=1e-6)
    attr = cn.ProjTrNTKAttribution(
        model, TensorDataset(x, torch.arange(16) % 10), projection_dim=128, store=tmp_path / "a"
    )
    torch.testing.assert_close(attr.influence(x[:4]), in_memory[:4], rtol=1e-5, atol=1e-6)
