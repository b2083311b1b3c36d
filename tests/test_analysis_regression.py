"""KernelRegressor against sklearn, explicit numpy / scipy formulas and the GP likelihood."""

from __future__ import annotations

import math

import models
import numpy as np
import pytest
import torch
from scipy.linalg import expm

from captum_ntk import analysis as A


def _data(n: int = 12, d: int = 3, c: int | None = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, *(() if c is None else (c,)), generator=gen, dtype=torch.float64)
    x_test = torch.randn(5, d, generator=gen, dtype=torch.float64)
    return x, y, x_test


@pytest.mark.parametrize("c", [None, 3])
def test_predictions_match_sklearn_kernel_ridge(c: int | None) -> None:
    from sklearn.kernel_ridge import KernelRidge

    x, y, x_test = _data(c=c)
    kernel = A.RBFKernel(1.3)
    reg = A.KernelRegressor(kernel, x, y, ridge=0.1)
    sk = KernelRidge(alpha=0.1, kernel="precomputed").fit(kernel(x, x).numpy(), y.numpy())
    expected = sk.predict(kernel(x_test, x).numpy())
    np.testing.assert_allclose(reg.predict(x_test).numpy(), expected, rtol=1e-9, atol=1e-12)
    assert reg(x_test).shape == ((5,) if c is None else (5, c))
    # the same from a precomputed Gram
    pre = A.KernelRegressor(kernel(x, x), Y=y, ridge=0.1)
    np.testing.assert_allclose(
        pre.predict_from_kernel(kernel(x_test, x)).numpy(), expected, rtol=1e-9
    )
    with pytest.raises(ValueError, match="predict_from_kernel"):
        pre.predict(x_test)


def test_ridge_zero_on_a_singular_gram_is_the_minimum_norm_solution() -> None:
    x, y, x_test = _data(n=12, d=3)  # linear kernel: rank 3 < 12
    reg = A.KernelRegressor(A.linear_kernel, x, y, ridge=0.0)
    expected = x_test.numpy() @ np.linalg.pinv(x.numpy()) @ y.numpy()
    np.testing.assert_allclose(reg.predict(x_test).numpy(), expected, rtol=1e-8, atol=1e-10)


def test_gp_log_marginal_likelihood_matches_sklearn_and_the_explicit_formula() -> None:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, WhiteKernel

    x, y, _ = _data(c=None)
    reg = A.KernelRegressor(A.RBFKernel(0.8), x, y, ridge=0.05)
    gp = GaussianProcessRegressor(RBF(0.8, "fixed") + WhiteKernel(0.05, "fixed"), optimizer=None)
    gp.fit(x.numpy(), y.numpy())
    assert reg.gp_log_marginal_likelihood() == pytest.approx(
        gp.log_marginal_likelihood_value_, rel=1e-10
    )

    x, y, _ = _data(c=3)
    reg = A.KernelRegressor(A.RBFKernel(0.8), x, y, ridge=0.05)
    cov = A.RBFKernel(0.8)(x, x).numpy() + 0.05 * np.eye(len(x))
    sign, logdet = np.linalg.slogdet(cov)
    fit = np.trace(y.numpy().T @ np.linalg.solve(cov, y.numpy()))
    expected = -0.5 * fit - 1.5 * logdet - 0.5 * 3 * len(x) * math.log(2 * math.pi)
    assert sign > 0 and reg.gp_log_marginal_likelihood() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="ridge > 0"):
        A.KernelRegressor(A.linear_kernel, x, y).gp_log_marginal_likelihood()


def test_label_spectrum_is_the_projection_on_numpy_eigenvectors() -> None:
    x, y, _ = _data(c=2)
    gram = A.RBFKernel(1.0)(x, x).numpy()
    lam, vec = np.linalg.eigh(gram)
    spectrum = A.KernelRegressor(A.RBFKernel(1.0), x, y).label_spectrum()
    np.testing.assert_allclose(spectrum.eigenvalues.numpy(), lam[::-1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        spectrum.energy.numpy(), ((vec.T @ y.numpy()) ** 2).sum(1)[::-1], rtol=1e-8, atol=1e-12
    )
    assert float(spectrum.fraction.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_flow_matches_the_matrix_exponential(reduction: str) -> None:
    x, y, x_test = _data(n=10, c=2)
    kernel = A.RBFKernel(0.9)
    gram, k_test = kernel(x, x).numpy(), kernel(x_test, x).numpy()
    reg = A.KernelRegressor(kernel, x, y)
    t, lr = 3.0, 0.7
    rate = lr * (gram / len(x) if reduction == "mean" else gram)
    train = (np.eye(len(x)) - expm(-rate * t)) @ y.numpy()
    test = k_test @ np.linalg.solve(gram, train)
    flow = reg.gradient_flow(t, lr, reduction, x=x_test)
    np.testing.assert_allclose(flow.train.numpy(), train, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(flow.test.numpy(), test, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(flow.train_modes.sum(0).numpy(), train, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(flow.test_modes.sum(0).numpy(), test, rtol=1e-6, atol=1e-8)
    assert flow.train_modes.shape == (10, 10, 2) and flow.test_modes.shape == (10, 5, 2)


def test_gradient_flow_agrees_with_euler_integration_of_the_ode() -> None:
    x, y, x_test = _data(n=8, c=None)
    kernel = A.RBFKernel(1.0)
    gram, k_test = kernel(x, x), kernel(x_test, x)
    f, f_test, dt = torch.zeros_like(y), torch.zeros(5, dtype=torch.float64), 1e-4
    for _ in range(20_000):  # t = 2, lr = 1, loss 1/2 |f - Y|^2
        residual = f - y
        f, f_test = f - dt * gram @ residual, f_test - dt * k_test @ residual
    flow = A.KernelRegressor(kernel, x, y).gradient_flow(2.0, x=x_test, per_mode=False)
    torch.testing.assert_close(flow.train, f, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(flow.test, f_test, rtol=1e-3, atol=1e-4)
    assert flow.train_modes is None


def test_gradient_flow_limits() -> None:
    x, y, x_test = _data(n=10, c=2)
    reg = A.KernelRegressor(A.RBFKernel(0.9), x, y)
    assert float(reg.gradient_flow(0.0, x=x_test).test.abs().max()) == 0.0
    late = reg.gradient_flow(1e7, x=x_test)
    torch.testing.assert_close(late.test, reg.predict(x_test), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(late.train, y, rtol=1e-6, atol=1e-8)
    # a singular Gram: modes with lambda = 0 have gain lr t at test points (finite)
    singular = A.KernelRegressor(A.linear_kernel, x, y).gradient_flow(2.0, x=x_test)
    assert torch.isfinite(singular.test).all()
    with pytest.raises(ValueError, match="reduction"):
        reg.gradient_flow(1.0, reduction="avg")


def test_invalid_arguments_get_clear_errors() -> None:
    x, y, _ = _data()
    with pytest.raises(ValueError, match="training inputs X"):
        A.KernelRegressor(A.linear_kernel, None, y)
    with pytest.raises(ValueError, match="ridge"):
        A.KernelRegressor(A.linear_kernel, x, y, ridge=-1)
    with pytest.raises(ValueError, match="rows"):
        A.KernelRegressor(A.linear_kernel, x, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        A.KernelRegressor(torch.full((12, 12), float("nan")), Y=y)


def test_one_hot_targets() -> None:
    torch.testing.assert_close(
        A.one_hot_targets(torch.tensor([0, 1, 1])),
        torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64),
    )
    assert A.one_hot_targets(torch.tensor([0, 2, 1])).shape == (3, 3)
    with pytest.raises(ValueError, match="labels must lie"):
        A.one_hot_targets(torch.tensor([0, 3]), num_classes=3)


def test_regressor_on_a_model_kernel_predicts_but_cannot_be_attacked() -> None:
    model = models.make_mlp(seed=0)
    x, x_test = models.mlp_inputs(6, seed=1), models.mlp_inputs(3, seed=2)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    reg = A.KernelRegressor(
        A.ModelKernel(model, "trntk0"), x, A.one_hot_targets(labels), ridge=1e-3
    )
    exact = A.KernelRegressor(
        A.EmpiricalNTK(model, "trntk0"), x, A.one_hot_targets(labels), ridge=1e-3
    )
    torch.testing.assert_close(
        reg.predict(x_test), exact.predict(x_test).detach(), rtol=1e-9, atol=1e-12
    )
    assert not reg.differentiable and exact.differentiable
    with pytest.raises(RuntimeError, match="not differentiable"):
        A.fgsm(reg, x_test, torch.tensor([0, 1, 0]), 0.1)


def test_model_kernel_regressor_refuses_a_changed_model() -> None:
    """A Gram of one state and test kernels of another would silently mix two models."""
    model = models.make_mlp(seed=0)
    x, x_test = models.mlp_inputs(6, seed=1), models.mlp_inputs(3, seed=2)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    for kernel in (A.EmpiricalNTK(model, "trntk0"), A.ModelKernel(model, "trntk0")):
        reg = A.KernelRegressor(kernel, x, A.one_hot_targets(labels), ridge=1e-3)
        torch.testing.assert_close(reg.predict(x_test), reg.predict(x_test))  # unchanged: fine
        with torch.no_grad():
            model.fc1.weight.mul_(1.5)
        with pytest.raises(ValueError, match="model changed"):
            reg.predict(x_test)
