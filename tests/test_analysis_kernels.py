"""Differentiable kernels of ``captum_ntk.analysis`` against the float64 references."""

from __future__ import annotations

import models
import numpy as np
import pytest
import reference as ref
import torch

import captum_ntk as cn
from captum_ntk import analysis as A


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("kernel", ["trntk0", "trntk", "pntk0"])
def test_empirical_ntk_matches_naive_reference(kernel: str) -> None:
    model = models.make_mlp(seed=0)
    x1, x2 = models.mlp_inputs(4, seed=1), models.mlp_inputs(5, seed=2)
    actual = A.EmpiricalNTK(model, kernel)(x1, x2)
    assert _rel(actual, ref.ref_kernel(model, x1, x2, kernel=kernel)) < 1e-10


def test_empirical_ntk_is_differentiable_in_x() -> None:
    model = models.make_mlp(seed=0)  # tanh: smooth, so gradcheck applies
    x2 = models.mlp_inputs(5, seed=2)
    for kernel in ("trntk0", "trntk", "pntk0"):
        ntk = A.EmpiricalNTK(model, kernel)
        x1 = models.mlp_inputs(3, seed=1).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, ntk=ntk: ntk(x, x2), (x1,))


def test_empirical_ntk_cache_follows_parameter_updates() -> None:
    model = models.make_mlp(seed=0)
    x1, x2 = models.mlp_inputs(3, seed=1), models.mlp_inputs(4, seed=2)
    ntk = A.EmpiricalNTK(model, "trntk0")
    before = ntk(x1, x2)
    with torch.no_grad():
        model.fc1.weight.mul_(2.0)  # in place, as an optimiser step
    after = ntk(x1, x2)
    assert not torch.allclose(before, after)
    assert _rel(after, cn.kernel_matrix(model, x1, x2, kernel="trntk0")) < 1e-10


def test_empirical_ntk_cache_follows_buffers_and_data_writes() -> None:
    """BatchNorm statistics (buffers) and writes through ``.data`` change the kernel too."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).double()
    x1, x2 = models.mlp_inputs(3, seed=1, d_in=3), models.mlp_inputs(4, seed=2, d_in=3)
    model.eval()
    ntk = A.EmpiricalNTK(model, "trntk0")
    before = ntk(x1, x2)
    model.train()
    with torch.no_grad():
        model(3.0 * torch.randn(16, 3, dtype=torch.float64) + 1.0)  # updates running stats
    model.eval()
    after = ntk(x1, x2)
    assert not torch.allclose(before, after)
    assert _rel(after, ref.ref_kernel(model, x1, x2, kernel="trntk0")) < 1e-10
    model[3].weight.data.mul_(3.0)  # no version bump
    assert _rel(ntk(x1, x2), ref.ref_kernel(model, x1, x2, kernel="trntk0")) < 1e-10


def test_empirical_ntk_refuses_random_models() -> None:
    model = models.make_dropout_mlp()
    x = models.mlp_inputs(3)
    with pytest.raises(RuntimeError, match="model.eval"):
        A.EmpiricalNTK(model)(x, x)
    with pytest.raises(ValueError, match="trntk0"):
        A.EmpiricalNTK(model, "entk")


def test_model_kernel_wraps_kernel_matrix_and_is_not_differentiable() -> None:
    model = models.make_mlp(seed=0)
    x1, x2 = models.mlp_inputs(3, seed=1), models.mlp_inputs(4, seed=2)
    k = A.ModelKernel(model, "trntk")
    assert _rel(k(x1, x2), ref.ref_kernel(model, x1, x2, kernel="trntk")) < 1e-10
    assert k.differentiable is False and A.EmpiricalNTK(model).differentiable is True


def test_rbf_and_linear_kernels_match_sklearn() -> None:
    from sklearn.metrics.pairwise import linear_kernel, rbf_kernel

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    expected = 2.0 * rbf_kernel(a, b, gamma=1 / (2 * 0.7**2))
    np.testing.assert_allclose(A.RBFKernel(0.7, variance=2.0)(ta, tb).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(A.linear_kernel(ta, tb).numpy(), linear_kernel(a, b), rtol=1e-12)
    x = ta[:2].clone().requires_grad_(True)  # coincident points: finite gradient
    (g,) = torch.autograd.grad(A.RBFKernel(0.7)(x, ta).sum(), x)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="lengthscale"):
        A.RBFKernel(0.0)
