"""The closed-form ReLU NNGP / NTK: Monte Carlo, exact finite cases, and the wide-network limit."""

from __future__ import annotations

import math

import pytest
import torch

import captum_ntk as cn
from captum_ntk import analysis as A


def _inputs(n: int = 6, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |A_ij - E_ij| / sqrt(E_ii E_jj): the error on the correlation scale."""
    scale = expected.diagonal().sqrt()
    return float(((actual - expected).abs() / (scale[:, None] * scale[None, :])).max())


def test_nngp_matches_monte_carlo_of_the_arccos_expectation() -> None:
    """Depth 1: W^2 E[relu(u) relu(v)] + b^2 with (u, v) ~ N(0, Sigma^1), sampled."""
    x = _inputs(3)
    W_std, b_std, d = 1.3, 0.4, x.shape[1]
    sigma1 = W_std**2 * x @ x.T / d + b_std**2
    gen = torch.Generator().manual_seed(1)
    z = (
        torch.randn(2_000_000, 3, generator=gen, dtype=torch.float64)
        @ torch.linalg.cholesky(sigma1).T
    )
    relu = z.clamp_min(0)
    monte_carlo = W_std**2 * (relu.T @ relu) / z.shape[0] + b_std**2
    nngp, ntk = A.relu_mlp_ntk(x, x, depth=1, W_std=W_std, b_std=b_std)
    assert _scaled_error(nngp, monte_carlo) < 5e-3
    # NTK = Sigma^2 + W^2 E[relu'(u) relu'(v)] Sigma^1, with E[relu' relu'] = P(u > 0, v > 0)
    step = (z > 0).double()
    expected_ntk = monte_carlo + W_std**2 * (step.T @ step) / z.shape[0] * sigma1
    assert _scaled_error(ntk, expected_ntk) < 5e-3


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_depth_zero_is_exact_for_any_width(parameterization: str) -> None:
    """A linear model's NTK is constant: the empirical kernel equals the analytic one exactly."""
    x = _inputs()
    model = A.ReLUMLP(
        5,
        width=7,
        depth=0,
        num_outputs=3,
        b_std=0.5,
        W_std=1.1,
        parameterization=parameterization,
        dtype=torch.float64,
    )
    empirical = cn.kernel_matrix(model, x, kernel="trntk0") / 3
    _, ntk = A.relu_mlp_ntk(x, x, 0, 1.1, 0.5, parameterization)
    torch.testing.assert_close(empirical, ntk, rtol=1e-10, atol=0)


def _mean_relative_error(width: int, parameterization: str, seeds: int = 3) -> float:
    x = _inputs(8, 5)
    _, ntk = A.relu_mlp_ntk(x, x, 2, math.sqrt(2), 0.3, parameterization, width=width)
    errors = []
    for seed in range(seeds):
        model = A.ReLUMLP(
            5,
            width,
            depth=2,
            num_outputs=2,
            b_std=0.3,
            parameterization=parameterization,
            seed=seed,
            dtype=torch.float64,
        )
        empirical = cn.kernel_matrix(model, x, kernel="trntk0") / 2
        errors.append(float((empirical - ntk).norm() / ntk.norm()))
    return sum(errors) / seeds


def test_wide_ntk_parameterised_mlps_approach_the_analytic_ntk() -> None:
    errors = [_mean_relative_error(w, "ntk") for w in (64, 256, 1024)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.12, errors  # O(1/sqrt(width)) fluctuations


def test_standard_parameterisation_ntk_tracks_the_width() -> None:
    errors = [_mean_relative_error(w, "standard", seeds=2) for w in (64, 1024)]
    assert errors[1] < errors[0] and errors[1] < 0.15, errors
    with pytest.raises(ValueError, match="width"):
        A.relu_mlp_ntk(_inputs(), depth=2, parameterization="standard")


def test_safe_at_angles_zero_and_pi() -> None:
    x = _inputs(4)
    for other in (x, -x):  # angle 0 on the diagonal, pi for the antipodes
        x1 = x.clone().requires_grad_(True)
        nngp, ntk = A.relu_mlp_ntk(x1, other, depth=3, W_std=1.5, b_std=0.0)
        assert torch.isfinite(nngp).all() and torch.isfinite(ntk).all()
        (grad,) = torch.autograd.grad((nngp + ntk).sum(), x1)
        assert torch.isfinite(grad).all()
    # exact values: E[relu(u)^2] = q/2 at angle 0; E[relu(u) relu(-u)] = 0 at angle pi
    q = 1.5**2 * (x * x).sum(1) / x.shape[1]
    nngp, _ = A.relu_mlp_ntk(x, x, depth=1, W_std=1.5)
    torch.testing.assert_close(nngp.diagonal(), 1.5**2 * q / 2, rtol=1e-12, atol=0)
    nngp, ntk = A.relu_mlp_ntk(x, -x, depth=1, W_std=1.5)
    # arccos is ill-conditioned at -1: a rounding error 1e-16 in the cosine moves the angle by
    # ~1e-8, which bounds the attainable accuracy of the (linear in pi - theta) NTK term
    assert float(nngp.diagonal().abs().max()) < 1e-12 * float(q.max())
    assert float(ntk.diagonal().abs().max()) < 1e-7 * float(q.max())  # relu'(u) relu'(-u) = 0


def test_gradients_match_finite_differences_away_from_the_poles() -> None:
    x1, x2 = _inputs(3, seed=1).requires_grad_(True), _inputs(4, seed=2)
    kernel = A.ReLUNTK(depth=2, W_std=1.2, b_std=0.3)
    assert torch.autograd.gradcheck(lambda x: kernel(x, x2), (x1,))
    assert torch.autograd.gradcheck(lambda x: A.ReLUNTK(which="nngp")(x, x2), (x1,))


def test_plot_eigenmodes_draws_non_trivial_modes() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig = A.plot_eigenmodes(num_modes=4, num_points=80)
    left = fig.axes[0]
    assert len(left.lines) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="which"):
        A.plot_eigenmodes(which="cntk")
