r"""The kGLM's training objectives and their solvers (torch, deterministic).

Both objectives fit :math:`f(x_i) = W \kappa(x_i, X) + b` on the train kernel with an L2 penalty on
``W`` (not on ``b``), per-example weights :math:`s_i` and the penalty ``alpha`` in the kernel's own
units:

- cross-entropy (:func:`fit_log_loss`), with hard labels or soft targets :math:`t_i` (class
  probabilities),

  .. math::
      \frac{1}{N}\sum_i s_i \Big(-\sum_c t_{ic} \log \mathrm{softmax}(f(x_i))_c\Big)
      + \frac{\alpha}{2}\|W\|_F^2

  (the binary logistic loss with a soft target :math:`t_i \in [0, 1]` for one logit), solved
  with L-BFGS;
- squared loss (:func:`fit_squared`), with real targets :math:`z_i` (e.g. logits),

  .. math::
      \frac{1}{N}\sum_i s_i\,\tfrac12\|f(x_i) - z_i\|^2 + \frac{\alpha}{2}\|W\|_F^2,

  solved exactly (ridge regression on the kernel rows; scikit-learn's ``Ridge(alpha=alpha * N)``
  with ``sample_weight=s``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from ._validation import Targets


def kernel_scale(kernel: Tensor) -> float:
    """RMS of the kernel's diagonal (its typical self-similarity), or max |K| if that is 0."""
    scale = float(kernel.diagonal().double().pow(2).mean().sqrt()) if kernel.numel() else 0.0
    if not (scale > 0 and math.isfinite(scale)):
        scale = float(kernel.abs().max()) if kernel.numel() else 1.0
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def sample_weight(group: Tensor, n_groups: int, class_weight: str | None) -> Tensor:
    """Per-example weights (N,): scikit-learn's "balanced" formula over the classes present."""
    if class_weight is None:
        return torch.ones(group.shape[0], dtype=torch.float64)
    counts = torch.bincount(group, minlength=n_groups).to(torch.float64)
    n_present = int((counts > 0).sum())
    weight = group.shape[0] / (n_present * counts.clamp_min(1))
    return weight[group]


def fit_log_loss(
    kernel: Tensor,
    targets: Targets,
    weight: Tensor,
    alpha: float,
    *,
    tol: float,
    max_iter: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, int]:
    r"""Cross-entropy kGLM by full-batch L-BFGS (strong-Wolfe line search), from zeros.

    Args:
        kernel (Tensor): ``(N, N)`` train kernel.
        targets (Targets): labels or soft targets.
        weight (Tensor): ``(N,)`` example weights :math:`s_i`.
        alpha (float): L2 strength in the kernel's units (>= 0).
        tol (float): stop when the largest gradient entry (in the rescaled problem) is below.
        max_iter (int): maximum L-BFGS iterations (a ConvergenceWarning when reached).
        device (torch.device): where to optimise.

    Returns:
        tuple: ``coef`` ``(n_out, N)``, ``intercept`` ``(n_out,)`` in the kernel's dtype on
        ``device``, and the number of iterations.
    """
    # Autograd must work under no_grad / inference_mode and on inference tensors.
    with torch.inference_mode(False), torch.enable_grad():
        kernel = kernel.to(device).clone() if kernel.is_inference() else kernel.to(device)
        values = targets.values.clone().to(device)
        return _lbfgs(kernel, targets, values, weight, alpha, tol, max_iter)


def _lbfgs(
    kernel: Tensor,
    targets: Targets,
    values: Tensor,
    weight: Tensor,
    alpha: float,
    tol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor, int]:
    dtype, device = kernel.dtype, kernel.device
    n_train = kernel.shape[0]
    weight = (weight / n_train).to(device=device, dtype=dtype)
    if targets.kind == "labels" and not targets.one_logit:
        target = values  # class indices
    else:
        target = values.to(dtype)  # 0/1 labels of one logit, or probabilities
    # Two exact reparametrisations that leave the model and the objective unchanged but make
    # L-BFGS converge much faster (neither materialises a modified (N, N) kernel):
    # - scale: with s the RMS of the kernel's diagonal, fit s * W on K / s with penalty
    #   alpha / s^2, so the iterations do not depend on the kernel's units;
    # - centring: logits = (K - 1 mu^T) W^T + b' with b' = b + W mu (mu = column means), which
    #   removes the kernel's dominant near-constant direction (~10x fewer iterations).
    scale = kernel_scale(kernel)
    scaled_alpha = alpha / scale**2
    column_mean = kernel.mean(dim=0) / scale
    coef = torch.zeros(targets.n_out, n_train, dtype=dtype, device=device, requires_grad=True)
    shifted = torch.zeros(targets.n_out, dtype=dtype, device=device, requires_grad=True)
    # Stop on a stalled objective only near the dtype's precision, so `tol` (the gradient
    # criterion) is what normally ends a float64 fit.
    change_tol = min(tol * 1e-3, 10 * torch.finfo(dtype).eps)
    optimizer = torch.optim.LBFGS(
        [coef, shifted],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol,
        tolerance_change=change_tol,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = torch.addmm(shifted - coef @ column_mean, kernel, coef.T, alpha=1.0 / scale)
        if targets.one_logit:
            losses = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        else:
            losses = F.cross_entropy(logits, target, reduction="none")
        loss = (losses * weight).sum() + 0.5 * scaled_alpha * (coef * coef).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    n_iter = int(optimizer.state[coef].get("n_iter", 0))
    if n_iter >= max_iter:
        warnings.warn(
            f"KernelGLM (torch backend) reached max_iter={max_iter} L-BFGS iterations before "
            f"the gradient fell below tol={tol}; increase max_iter or alpha.",
            ConvergenceWarning,
            stacklevel=6,
        )
    with torch.no_grad():
        intercept = shifted - coef @ column_mean
    return coef.detach() / scale, intercept.detach(), n_iter


class SquaredSystem:
    r"""The normal equations of the squared-loss kGLM, built once and solved for many ``alpha``.

    With :math:`D = \mathrm{diag}(s_i / N)`, weighted column means :math:`\mu` and target mean
    :math:`\bar z`, the minimiser is
    :math:`W^\top = (K_c^\top D K_c + \alpha I)^{-1} K_c^\top D (Z - \bar z)`,
    :math:`b = \bar z - W\mu` with :math:`K_c = K - 1\mu^\top`. ``alpha = 0`` gives the
    minimum-norm least-squares solution. Building the system costs O(N^3); each
    :meth:`solve` another O(N^3 / 3), so a grid of alphas (``alpha="auto"``) shares the first.

    Args:
        kernel (Tensor): ``(N, N)`` train kernel.
        targets (Targets): real targets ``(N,)`` or ``(N, m)``.
        weight (Tensor): ``(N,)`` example weights.
        device (torch.device): where to solve.
    """

    def __init__(
        self, kernel: Tensor, targets: Targets, weight: Tensor, *, device: torch.device
    ) -> None:
        self.dtype = kernel.dtype
        n_train = kernel.shape[0]
        self.scale = kernel_scale(kernel)
        k = kernel.to(device=device, dtype=torch.float64) / self.scale
        z = targets.values.to(device=device, dtype=torch.float64).reshape(n_train, -1)
        d = (weight.to(device=device, dtype=torch.float64) / n_train)[:, None]
        self.mean = (d * k).sum(dim=0) / d.sum()
        self.z_mean = (d * z).sum(dim=0) / d.sum()
        centred = k - self.mean
        self.gram = centred.T @ (d * centred)
        self.rhs = centred.T @ (d * (z - self.z_mean))

    def solve(self, alpha: float) -> tuple[Tensor, Tensor, int]:
        """``coef`` ``(m, N)``, ``intercept`` ``(m,)`` (kernel dtype) and 0 iterations."""
        scaled_alpha = alpha / self.scale**2
        if scaled_alpha > 0:
            gram = self.gram.clone()
            gram.diagonal().add_(scaled_alpha)
            # symmetric positive definite: Cholesky (half of LU's cost), LU if rounding says no
            factor, info = torch.linalg.cholesky_ex(gram)
            if int(info) == 0:
                coef_t = torch.cholesky_solve(self.rhs, factor)
            else:
                coef_t = torch.linalg.solve(gram, self.rhs)
        else:
            coef_t = torch.linalg.pinv(self.gram, hermitian=True) @ self.rhs
        coef = coef_t.T / self.scale
        intercept = self.z_mean - coef_t.T @ self.mean
        return coef.to(self.dtype), intercept.to(self.dtype), 0


def fit_squared(
    kernel: Tensor, targets: Targets, weight: Tensor, alpha: float, *, device: torch.device
) -> tuple[Tensor, Tensor, int]:
    r"""Squared-loss kGLM (ridge regression on kernel rows), solved exactly in float64.

    See :class:`SquaredSystem` for the solution.

    Args:
        kernel (Tensor): ``(N, N)`` train kernel.
        targets (Targets): real targets ``(N,)`` or ``(N, m)``.
        weight (Tensor): ``(N,)`` example weights.
        alpha (float): L2 strength in the kernel's units (>= 0).
        device (torch.device): where to solve.

    Returns:
        tuple: ``coef`` ``(m, N)``, ``intercept`` ``(m,)`` in the kernel's dtype on ``device``,
        and 0 iterations.
    """
    return SquaredSystem(kernel, targets, weight, device=device).solve(alpha)
