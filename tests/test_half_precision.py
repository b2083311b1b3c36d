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
