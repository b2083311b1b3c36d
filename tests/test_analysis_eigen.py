"""Eigen-features: exact decomposition of the predictor, Nystrom, usefulness and robustness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from captum_ntk import analysis as A


def _problem(c: int | None = None, n: int = 30, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    labels = (
        (x[:, 0] + 0.5 * x[:, 1] > 0).long()
        if c is None
        else torch.randint(0, c, (n,), generator=gen)
    )
    x_test = torch.randn(15, 4, generator=gen, dtype=torch.float64)
    return x, labels, x_test


@pytest.mark.parametrize("c,ridge", [(None, 0.0), (None, 0.3), (3, 0.0), (3, 0.1)])
def test_features_sum_to_the_predictor(c: int | None, ridge: float) -> None:
    x, labels, x_test = _problem(c)
    reg = A.KernelRegressor(
        A.ReLUNTK(depth=2, b_std=0.2), x, A.one_hot_targets(labels), ridge=ridge
    )
    eig = A.EigenFeatures(reg)
    feats = eig.features(x_test)
    assert feats.shape == ((15, 30) if c is None else (15, 30, 3))
    torch.testing.assert_close(feats.sum(1), reg.predict(x_test), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(
        eig.predictor(slice(0, 30))(x_test), reg.predict(x_test), rtol=1e-9, atol=1e-10
    )
    # feature k by its definition, with numpy's eigendecomposition
    gram = reg.train_kernel.numpy()
    lam, vec = np.linalg.eigh(gram)
    k_test = A.ReLUNTK(depth=2, b_std=0.2)(x_test, x).numpy()
    y = reg.Y.numpy()
    top = vec[:, -1]
    expected = np.outer(k_test @ top, top @ y) / (lam[-1] + ridge)
    np.testing.assert_allclose(feats[:, 0].reshape(15, -1).numpy(), expected, rtol=1e-8, atol=1e-12)


def test_nystrom_eigenfunctions_extend_the_eigenvectors() -> None:
    x, labels, x_test = _problem()
    reg = A.KernelRegressor(A.RBFKernel(1.5), x, A.one_hot_targets(labels))
    phi = A.EigenFeatures(reg).nystrom_eigenfunctions(x, num=5)
    torch.testing.assert_close(phi, math.sqrt(30) * reg.eigenvectors[:, :5], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        phi.T @ phi / 30, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-8
    )
    assert A.EigenFeatures(reg).nystrom_eigenfunctions(x_test, num=3).shape == (15, 3)


def test_usefulness_is_the_accuracy_of_each_feature() -> None:
    x, labels, x_test = _problem()
    gen = torch.Generator().manual_seed(5)
    test_labels = torch.randint(0, 2, (15,), generator=gen)
    reg = A.KernelRegressor(A.RBFKernel(1.5), x, A.one_hot_targets(labels), ridge=0.01)
    eig = A.EigenFeatures(reg, num_features=6)
    feats = eig.features(x_test)
    expected = [float(((feats[:, k] > 0).long() == test_labels).double().mean()) for k in range(6)]
    np.testing.assert_allclose(eig.usefulness(x_test, test_labels).numpy(), expected)


def test_robustness_never_exceeds_usefulness_and_tradeoff_ends_at_the_predictor() -> None:
    x, labels, x_test = _problem()
    test_labels = (x_test[:, 0] + 0.5 * x_test[:, 1] > 0).long()
    reg = A.KernelRegressor(A.ReLUNTK(depth=1, b_std=0.1), x, A.one_hot_targets(labels), ridge=1e-3)
    eig = A.EigenFeatures(reg, num_features=8)
    useful = eig.usefulness(x_test, test_labels)
    robust = eig.robustness(x_test, test_labels, epsilon=0.3, steps=5)
    assert bool((robust <= useful + 1e-12).all())
    assert float(robust.sum()) < float(useful.sum())  # the attack does something
    full = A.EigenFeatures(reg)
    result = full.tradeoff(x_test, test_labels, 0.3, [1, 30], attack="fgsm")
    assert result["m"] == [1, 30]
    assert result["accuracy"][1] == A.accuracy(reg.predict(x_test), test_labels)


def test_saliency_is_the_gradient_of_one_feature() -> None:
    x, labels, x_test = _problem(c=3)
    reg = A.KernelRegressor(A.RBFKernel(1.5), x, A.one_hot_targets(labels), ridge=0.01)
    eig = A.EigenFeatures(reg)
    grad = eig.saliency(x_test, k=2, target=1)
    step = 1e-6
    bumped = x_test.clone()
    bumped[:, 3] += step
    fd = (eig.features(bumped)[:, 2, 1] - eig.features(x_test)[:, 2, 1]) / step
    torch.testing.assert_close(grad[:, 3], fd.detach(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="target"):
        eig.saliency(x_test, k=0)
    with pytest.raises(ValueError, match="num_features"):
        A.EigenFeatures(reg, num_features=31)
