r"""Kernel regression: the infinite-width (or linearised) network's predictor.

``f(x) = K(x, X) (K(X, X) + ridge I)^{-1} Y``, the mean of the GP posterior with noise variance
``ridge`` and the limit of gradient flow on the squared loss from f_0 = 0. All linear algebra on
the training Gram runs in float64 through one eigendecomposition ``K = V diag(lambda) V^T``
(eigenvalues in descending order), shared by prediction, the GP likelihood, the label spectrum,
gradient flow and the eigen-features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.fingerprint import model_fingerprint
from ._validation import as_matrix

__all__ = ["GradientFlow", "KernelRegressor", "LabelSpectrum"]

KernelFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class LabelSpectrum:
    r"""Energy of the targets along the eigenvectors of the training Gram.

    Attributes:
        eigenvalues (Tensor): (N,) eigenvalues of K(X, X), descending.
        energy (Tensor): (N,) ``sum_c (v_k^T Y_c)^2``.
        fraction (Tensor): (N,) energy / total energy (sums to 1).
    """

    eigenvalues: Tensor
    energy: Tensor
    fraction: Tensor


@dataclass
class GradientFlow:
    r"""Predictions of kernel gradient flow on the squared loss at time t, from f_0 = 0.

    Attributes:
        train (Tensor): (N,) or (N, C): ``(I - exp(-lr K t)) Y``.
        train_modes (Tensor or None): (N_modes, N[, C]): the contribution of each eigenmode
                (summing over modes gives ``train``).
        test (Tensor or None): (n,) or (n, C): ``K(x, X) K^{-1} (I - exp(-lr K t)) Y``.
        test_modes (Tensor or None): (N_modes, n[, C]).
        eigenvalues (Tensor): (N_modes,) eigenvalues of the flow's kernel (K, or K / N for
                ``reduction="mean"``), descending.
        residual (Tensor): (N_modes,) ``exp(-lr lambda_k t)``: the share of mode k not yet learnt.
    """

    train: Tensor
    train_modes: Tensor | None
    test: Tensor | None
    test_modes: Tensor | None
    eigenvalues: Tensor
    residual: Tensor


class KernelRegressor:
    r"""Kernel ridge regression ``f(x) = K(x, X) (K(X, X) + ridge I)^{-1} Y``.

    Usable as a Captum ``forward_func`` and attackable when ``kernel`` is differentiable in x
    (see :mod:`captum_ntk.analysis.kernels`): ``regressor(x)`` is ``regressor.predict(x)``.

    Args:
        kernel (callable or Tensor): ``k(x1, x2) -> (n1, n2)`` Tensor, or the precomputed
                (N, N) training Gram (then predict from test kernels with
                :meth:`predict_from_kernel`).
        X (Tensor, optional): (N, ...) training inputs; required with a callable kernel.
        Y (Tensor): (N,) or (N, C) float targets (:func:`one_hot_targets` turns labels into
                +-1 or one-hot targets).
        ridge (float): ridge (GP noise variance) >= 0. Default: 0.
        rcond (float, optional): at ``ridge + lambda_k <= rcond * lambda_max`` a mode is
                dropped (pseudo-inverse). Default: N x the machine epsilon of the kernel's dtype.

    A kernel of a model (:class:`~captum_ntk.analysis.EmpiricalNTK`,
    :class:`~captum_ntk.analysis.ModelKernel`: a ``model`` attribute) is taken at the model's
    parameters when the regressor is built; test kernels of a later state would be mixed with
    that Gram, so :meth:`test_kernel` raises once the model's parameters or buffers change.

    Attributes:
        train_kernel (Tensor): (N, N) float64 training Gram.
        eigenvalues (Tensor): (N,) float64, descending. eigenvectors (Tensor): (N, N) columns.
        dual_coef (Tensor): (N, C) float64 ``(K + ridge I)^+ Y``.
    """

    def __init__(
        self,
        kernel: KernelFn | Tensor,
        X: Tensor | None = None,
        Y: Tensor | None = None,
        ridge: float = 0.0,
        *,
        rcond: float | None = None,
    ) -> None:
        if Y is None:
            raise ValueError("Y (training targets, (N,) or (N, C)) is required.")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}.")
        self.kernel = None if isinstance(kernel, Tensor) else kernel
        if self.kernel is not None and X is None:
            raise ValueError("A callable kernel needs the training inputs X.")
        self.X = None if X is None else X.detach()
        self._model_state = self._fingerprint()
        with torch.no_grad():
            gram = kernel if isinstance(kernel, Tensor) else kernel(self.X, self.X)
        self._check_gram(gram, Y)
        self.kernel_dtype = gram.dtype
        self.squeeze = Y.dim() == 1
        self.Y = as_matrix(Y.detach(), "Y").to(torch.float64).cpu()
        self.ridge = float(ridge)
        self.train_kernel = gram.detach().to(torch.float64).cpu()
        self.train_kernel = (self.train_kernel + self.train_kernel.T) / 2
        eigenvalues, eigenvectors = torch.linalg.eigh(self.train_kernel)
        self.eigenvalues, self.eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        n = self.train_kernel.shape[0]
        self.rcond = rcond if rcond is not None else n * torch.finfo(gram.dtype).eps
        self.dual_coef = self.eigenvectors @ (self.inverse_eigenvalues()[:, None] * self.label_coef)

    @staticmethod
    def _check_gram(gram: Tensor, Y: Tensor) -> None:
        if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
            raise ValueError("The training kernel must be a square (N, N) Tensor.")
        if gram.shape[0] != Y.shape[0]:
            raise ValueError(
                f"The training kernel is {tuple(gram.shape)} but Y has {Y.shape[0]} rows."
            )
        if not bool(torch.isfinite(gram).all()):
            raise ValueError("The training kernel has NaN or infinite entries.")

    def _fingerprint(self) -> str | None:
        model = getattr(self.kernel, "model", None)
        return (
            model_fingerprint(model, checksum=True) if isinstance(model, torch.nn.Module) else None
        )

    @property
    def differentiable(self) -> bool:
        """Whether predictions carry gradients to the inputs x."""
        return bool(getattr(self.kernel, "differentiable", False))

    @property
    def label_coef(self) -> Tensor:
        """(N, C) ``V^T Y``: the targets in the eigenbasis."""
        return self.eigenvectors.T @ self.Y

    def inverse_eigenvalues(self) -> Tensor:
        r"""(N,) ``1 / (lambda_k + ridge)``, 0 for dropped modes (see ``rcond``)."""
        shifted = self.eigenvalues + self.ridge
        keep = shifted > self.rcond * self.eigenvalues[0].clamp_min(0)
        return torch.where(keep, 1.0 / shifted.where(keep, torch.ones_like(shifted)), 0.0)

    def _shape(self, out: Tensor) -> Tensor:
        return out.squeeze(-1) if self.squeeze else out

    def test_kernel(self, x: Tensor) -> Tensor:
        r"""K(x, X), (n, N), differentiable in x if the kernel is."""
        if self.kernel is None:
            raise ValueError(
                "This regressor was built from a precomputed Gram: pass test kernels K(x, X) "
                "to predict_from_kernel instead."
            )
        if self._fingerprint() != self._model_state:
            raise ValueError(
                "The kernel's model changed (parameters or buffers) since this regressor was "
                "built: its training Gram belongs to the old state. Build a new KernelRegressor "
                "for the current model."
            )
        return self.kernel(x, self.X.to(x.device))

    def predict_from_kernel(self, test_kernel: Tensor) -> Tensor:
        r"""Predictions from a test kernel.

        Args:
            test_kernel (Tensor): (n, N) K(x, X).

        Returns:
            Tensor: (n,) or (n, C) in the test kernel's dtype (and graph).
        """
        if test_kernel.dim() != 2 or test_kernel.shape[1] != self.Y.shape[0]:
            raise ValueError(
                f"test_kernel must be (n, {self.Y.shape[0]}), got {tuple(test_kernel.shape)}."
            )
        coef = self.dual_coef.to(device=test_kernel.device, dtype=test_kernel.dtype)
        return self._shape(test_kernel @ coef)

    def predict(self, x: Tensor) -> Tensor:
        r"""Predictions f(x).

        Args:
            x (Tensor): (n, ...) inputs.

        Returns:
            Tensor: (n,) for (N,) targets, else (n, C).
        """
        return self.predict_from_kernel(self.test_kernel(x))

    __call__ = predict

    def gp_log_marginal_likelihood(self) -> float:
        r"""``log p(Y | X)`` under the GP prior with covariance K and noise variance ``ridge``.

        Summed over the C target columns (independent GPs):
        ``-1/2 Y^T (K + ridge I)^{-1} Y - 1/2 log|K + ridge I| - N/2 log(2 pi)`` per column.

        Returns:
            float: the log marginal likelihood.

        Raises:
            ValueError: if K + ridge I is not positive definite (use a positive ridge).
        """
        shifted = self.eigenvalues + self.ridge
        if float(shifted.min()) <= self.rcond * float(self.eigenvalues[0]):
            raise ValueError(
                "K(X, X) + ridge I is singular or indefinite (smallest eigenvalue "
                f"{float(shifted.min()):.3g}): the GP likelihood is undefined; use ridge > 0."
            )
        n, c = self.Y.shape
        fit = ((self.label_coef**2) / shifted[:, None]).sum()
        logdet = torch.log(shifted).sum()
        return float(-0.5 * fit - 0.5 * c * logdet - 0.5 * n * c * math.log(2 * math.pi))

    def label_spectrum(self) -> LabelSpectrum:
        r"""Energy of Y along each eigenvector of K(X, X) (descending eigenvalues).

        Returns:
            LabelSpectrum: eigenvalues, energy ``sum_c (v_k^T Y_c)^2`` and its fractions.
        """
        energy = (self.label_coef**2).sum(1)
        total = energy.sum()
        fraction = energy / total if total > 0 else torch.zeros_like(energy)
        return LabelSpectrum(self.eigenvalues.clone(), energy, fraction)

    def gradient_flow(
        self,
        t: float,
        lr: float = 1.0,
        reduction: str = "sum",
        *,
        x: Tensor | None = None,
        test_kernel: Tensor | None = None,
        per_mode: bool = True,
    ) -> GradientFlow:
        r"""Kernel gradient flow on the squared loss from f_0 = 0 (no ridge), solved in closed form.

        ``df/dt = -lr K (f - Y)`` for ``reduction="sum"`` (loss ``1/2 sum |f - Y|^2``), and K / N
        in place of K for ``"mean"``. On the training set f_t = (I - exp(-lr K t)) Y; at test
        points f_t(x) = K(x, X) K^{-1} (I - exp(-lr K t)) Y, computed per mode as
        ``K(x, X) v_k (1 - exp(-lr lambda_k t)) / lambda_k v_k^T Y`` (finite as lambda_k -> 0;
        negative round-off eigenvalues count as 0). As t -> inf it reaches the ridge-0 predictor
        (modes below ``rcond``, dropped by that predictor, keep growing linearly in t).

        Args:
            t (float): time >= 0.
            lr (float): learning rate > 0. Default: 1.
            reduction (str): ``"sum"`` or ``"mean"``. Default: ``"sum"``.
            x (Tensor, optional): (n, ...) test inputs (callable kernels only).
            test_kernel (Tensor, optional): (n, N) K(x, X), instead of ``x``.
            per_mode (bool): also return the per-mode split (N_modes x N[, C] floats).
                    Default: True.

        Returns:
            GradientFlow: train (and test) predictions, per-mode splits, eigenvalues, residuals.
        """
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
        if not t >= 0 or not lr > 0:
            raise ValueError(f"t must be >= 0 and lr > 0, got t={t}, lr={lr}.")
        scale = lr * t / (self.Y.shape[0] if reduction == "mean" else 1)
        lam = self.eigenvalues.clamp_min(0.0)
        learnt = -torch.expm1(-scale * lam)  # 1 - exp(-lr lambda_eff t)
        coef = self.label_coef * learnt[:, None]  # (M, C)
        v = self.eigenvectors
        modes = v.T[:, :, None] * coef[:, None, :] if per_mode else None
        out_test = out_modes = None
        if x is not None or test_kernel is not None:
            kx = test_kernel if test_kernel is not None else self.test_kernel(x)
            kx = kx.detach().to(torch.float64).cpu()
            small = lam <= self.rcond * lam[0]
            gain = torch.where(small, scale, learnt / lam.where(~small, torch.ones_like(lam)))
            proj = kx @ v  # (n, M)
            out_test = self._shape(proj @ (gain[:, None] * self.label_coef))
            if per_mode:
                out_modes = self._shape(
                    proj.T[:, :, None] * (gain[:, None] * self.label_coef)[:, None, :]
                )
        return GradientFlow(
            train=self._shape(v @ coef),
            train_modes=None if modes is None else self._shape(modes),
            test=out_test,
            test_modes=out_modes,
            eigenvalues=lam / self.Y.shape[0] if reduction == "mean" else lam,
            residual=torch.exp(-scale * lam),
        )
