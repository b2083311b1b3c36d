r"""Closed-form infinite-width NNGP and NTK of a ReLU MLP, and the finite MLP they describe.

The network (``depth`` hidden ReLU layers, then a linear readout), in NTK parameterisation::

    z^1 = W_std / sqrt(d) W^1 x + b_std b^1,   z^{l+1} = W_std / sqrt(n) W^{l+1} relu(z^l) + b_std b^{l+1}

with all W, b ~ N(0, 1). As the width n grows, z^{L+1} is a Gaussian process with covariance
Sigma (the NNGP kernel) and the empirical NTK converges to Theta, given by the recursion
(u, v jointly Gaussian with covariance [[q1, s], [s, q2]], c = s / sqrt(q1 q2), theta = arccos c)::

    E[relu(u) relu(v)] = sqrt(q1 q2) (sin theta + (pi - theta) cos theta) / (2 pi)
    E[relu'(u) relu'(v)] = (pi - theta) / (2 pi)
    Sigma^1 = W_std^2 <x, x'> / d + b_std^2,      Theta^1 = Sigma^1
    Sigma^{l+1} = W_std^2 E[relu relu] + b_std^2, Theta^{l+1} = Sigma^{l+1} + W_std^2 E[relu' relu'] Theta^l

In standard parameterisation (``z = W relu(z) + b``, W ~ N(0, W_std^2 / n), b ~ N(0, b_std^2))
the NNGP is the same and the NTK depends on the width: Theta^1 = <x, x'> + 1 (the 1 only with a
bias), Theta^{l+1} = n E[relu relu] + W_std^2 E[relu' relu'] Theta^l + 1.

Numerical safety: the cosine is clamped to [-1, 1] and arccos / sqrt(1 - c^2) are evaluated
with bounded gradients near c = +-1 (angles 0 and pi), so kernels and their input gradients
are finite at coincident and antipodal points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ReLUMLP", "ReLUNTK", "relu_mlp_ntk"]

_PARAMETERIZATIONS = ("ntk", "standard")


def _bounded_grad(value: Tensor, slope: Tensor, c: Tensor) -> Tensor:
    """``value`` (computed without a graph) with gradient ``slope * dc``."""
    return value + slope * (c - c.detach())


def _arccos_and_sine(c: Tensor) -> tuple[Tensor, Tensor]:
    r"""``arccos(c)`` and ``sqrt(1 - c^2)`` with exact values and finite gradients at c = +-1."""
    cd = c.detach().clamp(-1.0, 1.0)
    one_minus = (1.0 - cd * cd).clamp_min(0.0)
    floor = torch.finfo(c.dtype).eps
    inv_sine = one_minus.clamp_min(floor).rsqrt()
    theta = _bounded_grad(torch.arccos(cd), -inv_sine, c)
    sine = _bounded_grad(one_minus.sqrt(), -cd * inv_sine, c)
    return theta, sine


def _relu_expectations(
    cov: Tensor, var1: Tensor, var2: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """E[relu relu] (cross, and both diagonals) and E[relu' relu'] (cross)."""
    tiny = torch.finfo(cov.dtype).tiny
    norm = (var1[:, None] * var2[None, :]).clamp_min(tiny).sqrt()
    theta, sine = _arccos_and_sine(cov / norm)
    cross = norm * (sine + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
    derivative = (math.pi - theta) / (2 * math.pi)
    # on the diagonal theta = 0: E[relu(u)^2] = q / 2
    return cross, var1 / 2, var2 / 2, derivative


def _check_args(depth: int, W_std: float, b_std: float, parameterization: str, width) -> None:
    if int(depth) != depth or depth < 0:
        raise ValueError(
            f"depth (number of hidden ReLU layers) must be an integer >= 0, got {depth}."
        )
    if W_std < 0 or b_std < 0:
        raise ValueError(f"W_std and b_std must be >= 0, got {W_std}, {b_std}.")
    if parameterization not in _PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {_PARAMETERIZATIONS}, got {parameterization!r}."
        )
    if parameterization == "standard" and depth > 0 and width is None:
        raise ValueError("The standard-parameterisation NTK depends on the width: pass width=.")


def relu_mlp_ntk(
    x1: Tensor,
    x2: Tensor | None = None,
    depth: int = 2,
    W_std: float = math.sqrt(2.0),
    b_std: float = 0.0,
    parameterization: str = "ntk",
    width: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Infinite-width NNGP and NTK of a ReLU MLP (per output logit), differentiable in x.

    Args:
        x1 (Tensor): (n1, ...) inputs (flattened to d features).
        x2 (Tensor, optional): (n2, ...) inputs. Default: None, ``x1``.
        depth (int): number of hidden ReLU layers (``depth + 1`` linear layers). Default: 2.
        W_std (float): weight standard deviation. Default: sqrt(2).
        b_std (float): bias standard deviation (0: no bias contribution). Default: 0.
        parameterization (str): ``"ntk"`` or ``"standard"``. Default: ``"ntk"``.
        width (int, optional): hidden width, needed by the standard-parameterisation NTK only.

    Returns:
        tuple: ``(nngp, ntk)``, each (n1, n2), in the dtype of ``x1``. The empirical
        ``trntk0`` of a random :class:`ReLUMLP` with C outputs, divided by C, converges to
        ``ntk`` as the width grows.
    """
    _check_args(depth, W_std, b_std, parameterization, width)
    a = x1.reshape(x1.shape[0], -1)
    b = a if x2 is None else x2.reshape(x2.shape[0], -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x1 and x2 have {a.shape[1]} and {b.shape[1]} features.")
    d = a.shape[1]
    wv, bv = W_std**2, b_std**2
    cov = wv * (a @ b.T) / d + bv
    var1, var2 = wv * (a * a).sum(1) / d + bv, wv * (b * b).sum(1) / d + bv
    standard = parameterization == "standard"
    ntk = (a @ b.T + (1.0 if b_std > 0 else 0.0)) if standard else cov
    for _ in range(depth):
        cross, diag1, diag2, derivative = _relu_expectations(cov, var1, var2)
        cov, var1, var2 = wv * cross + bv, wv * diag1 + bv, wv * diag2 + bv
        if standard:
            ntk = width * cross + wv * derivative * ntk + (1.0 if b_std > 0 else 0.0)
        else:
            ntk = cov + wv * derivative * ntk
    return cov, ntk


class ReLUNTK:
    r"""The analytic kernel as a callable ``k(x1, x2)`` for :class:`KernelRegressor`.

    Args:
        depth, W_std, b_std, parameterization, width: as :func:`relu_mlp_ntk`.
        which (str): ``"ntk"`` (gradient-descent kernel) or ``"nngp"`` (GP prior).
                Default: ``"ntk"``.
    """

    differentiable = True

    def __init__(
        self,
        depth: int = 2,
        W_std: float = math.sqrt(2.0),
        b_std: float = 0.0,
        parameterization: str = "ntk",
        width: int | None = None,
        which: str = "ntk",
    ) -> None:
        _check_args(depth, W_std, b_std, parameterization, width)
        if which not in ("ntk", "nngp"):
            raise ValueError(f"which must be 'ntk' or 'nngp', got {which!r}.")
        self.depth, self.W_std, self.b_std = depth, W_std, b_std
        self.parameterization, self.width, self.which = parameterization, width, which

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        nngp, ntk = relu_mlp_ntk(
            x1, x2, self.depth, self.W_std, self.b_std, self.parameterization, self.width
        )
        return ntk if self.which == "ntk" else nngp

    def __repr__(self) -> str:
        return (
            f"ReLUNTK(depth={self.depth}, W_std={self.W_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}, which={self.which!r})"
        )


class _ScaledLinear(nn.Module):
    """Linear layer in NTK (``W_std / sqrt(n) W x + b_std b``) or standard parameterisation."""

    def __init__(self, n_in: int, n_out: int, W_std: float, b_std: float, ntk: bool) -> None:
        super().__init__()
        scale_w, scale_b = (1.0, 1.0) if ntk else (W_std / math.sqrt(n_in), b_std)
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * scale_w)
        bias = torch.randn(n_out) * scale_b
        if ntk or b_std > 0:
            self.bias = nn.Parameter(bias)
        else:  # standard parameterisation without bias: nothing to train
            self.register_buffer("bias", torch.zeros(n_out))
        self.w_mult = W_std / math.sqrt(n_in) if ntk else 1.0
        self.b_mult = b_std if ntk else 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.w_mult * (x @ self.weight.T) + self.b_mult * self.bias


class ReLUMLP(nn.Module):
    r"""The finite ReLU MLP whose infinite-width kernels :func:`relu_mlp_ntk` computes.

    Args:
        in_features (int): input size d.
        width (int): hidden width n.
        depth (int): hidden ReLU layers. Default: 2.
        num_outputs (int): logits C. Default: 1.
        W_std, b_std, parameterization: as :func:`relu_mlp_ntk`.
        seed (int): initialisation seed (the global RNG is left untouched). Default: 0.
        dtype (torch.dtype): parameter dtype. Default: float32.

    Shapes:
        input: (B, ...) flattened to (B, d). output: (B, num_outputs).
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int = 2,
        num_outputs: int = 1,
        *,
        W_std: float = math.sqrt(2.0),
        b_std: float = 0.0,
        parameterization: str = "ntk",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        _check_args(depth, W_std, b_std, parameterization, width)
        sizes = [in_features] + [width] * depth + [num_outputs]
        ntk = parameterization == "ntk"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.ModuleList(
                _ScaledLinear(i, o, W_std, b_std, ntk) for i, o in zip(sizes[:-1], sizes[1:])
            )
        self.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)
