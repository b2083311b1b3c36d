r"""Eigen-features of a kernel predictor (Tsilivis & Kempe, NeurIPS 2022).

With ``K(X, X) = sum_k lambda_k v_k v_k^T`` (descending), the kernel predictor splits into
features ``f_k(x) = (lambda_k + ridge)^{-1} (v_k^T Y) K(x, X) v_k`` that sum to it exactly.
Each feature is a predictor of its own: its *usefulness* is its clean accuracy, its
*robustness* its accuracy under an attack on that feature alone. Top eigen-features tend to be
robust but not very useful alone; the tail is useful but brittle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._validation import check_labels
from .attacks import accuracy, fgsm, pgd
from .regression import KernelRegressor

__all__ = ["EigenFeatures"]


class EigenFeatures:
    r"""The per-eigenvector split of a :class:`KernelRegressor`.

    Args:
        regressor (KernelRegressor): the kernel predictor (ridge and dropped modes included).
        num_features (int, optional): keep the top ``num_features`` eigen-features.
                Default: all N.

    Attributes:
        eigenvalues (Tensor): (M,) descending. coef (Tensor): (M, C) ``(v_k^T Y) / (lambda_k +
        ridge)`` (0 for modes the regressor dropped).
    """

    def __init__(self, regressor: KernelRegressor, num_features: int | None = None) -> None:
        n = regressor.eigenvalues.shape[0]
        m = n if num_features is None else int(num_features)
        if not 1 <= m <= n:
            raise ValueError(f"num_features must be in [1, {n}], got {num_features}.")
        self.regressor = regressor
        self.eigenvalues = regressor.eigenvalues[:m]
        self.eigenvectors = regressor.eigenvectors[:, :m]
        self.coef = (regressor.inverse_eigenvalues()[:, None] * regressor.label_coef)[:m]

    @property
    def num_features(self) -> int:
        """M, the number of features."""
        return int(self.eigenvalues.shape[0])

    def features(self, x: Tensor | None = None, *, test_kernel: Tensor | None = None) -> Tensor:
        r"""All features at x.

        Args:
            x (Tensor, optional): (n, ...) inputs (callable kernels).
            test_kernel (Tensor, optional): (n, N) K(x, X) instead of x.

        Returns:
            Tensor: (n, M) for (N,) targets, else (n, M, C); differentiable in x when the kernel
            is. Summing over M gives the regressor's prediction (all features kept).
        """
        kx = test_kernel if test_kernel is not None else self.regressor.test_kernel(x)
        proj = kx @ self.eigenvectors.to(device=kx.device, dtype=kx.dtype)  # (n, M)
        out = proj[:, :, None] * self.coef.to(device=kx.device, dtype=kx.dtype)[None]
        return out.squeeze(-1) if self.regressor.squeeze else out

    def predictor(self, indices: Sequence[int] | slice | int) -> _SubsetPredictor:
        r"""The predictor summing the chosen features: a differentiable forward function.

        Args:
            indices (int, slice or sequence of int): feature indices (0 = largest eigenvalue);
                    ``slice(0, m)`` is the top-m predictor.

        Returns:
            callable: x (n, ...) -> (n,) or (n, C).
        """
        if isinstance(indices, int):
            indices = [indices]
        chosen = torch.arange(self.num_features)[indices]
        return _SubsetPredictor(self, chosen)

    def nystrom_eigenfunctions(self, x: Tensor, num: int | None = None) -> Tensor:
        r"""Nystrom extension of the top eigenvectors: ``phi_k(x) = sqrt(N) / lambda_k K(x, X) v_k``.

        ``phi_k`` estimates the k-th eigenfunction of the kernel's integral operator under the
        data distribution (normalised so that mean_i phi_k(X_i)^2 = 1; phi_k(X_i) =
        sqrt(N) v_k[i]); the operator's eigenvalue is estimated by lambda_k / N.

        Args:
            x (Tensor): (n, ...) inputs.
            num (int, optional): number of eigenfunctions. Default: all M with lambda_k > 0.

        Returns:
            Tensor: (n, num) values (in the kernel's dtype, differentiable in x if it is).
        """
        positive = int((self.eigenvalues > self.regressor.rcond * self.eigenvalues[0]).sum())
        num = positive if num is None else int(num)
        if not 1 <= num <= positive:
            raise ValueError(
                f"num must be in [1, {positive}] (modes with lambda_k > 0), got {num}."
            )
        kx = self.regressor.test_kernel(x)
        scale = math.sqrt(self.eigenvectors.shape[0]) / self.eigenvalues[:num]
        basis = self.eigenvectors[:, :num] * scale[None, :]
        return kx @ basis.to(device=kx.device, dtype=kx.dtype)

    def usefulness(self, x: Tensor, labels: Tensor, num: int | None = None) -> Tensor:
        r"""Clean accuracy of each feature on its own (sign for binary, argmax per class).

        Args:
            x (Tensor): (n, ...) inputs. labels (Tensor): (n,) classes.
            num (int, optional): first ``num`` features. Default: all M.

        Returns:
            Tensor: (num,) float64 accuracies.
        """
        labels = check_labels(labels, x.shape[0])
        with torch.no_grad():
            feats = self.features(x)[:, : num or self.num_features]
        return torch.tensor([accuracy(feats[:, k], labels) for k in range(feats.shape[1])])

    def robustness(
        self,
        x: Tensor,
        labels: Tensor,
        epsilon: float,
        num: int | None = None,
        *,
        attack: str = "pgd",
        **attack_kwargs,
    ) -> Tensor:
        r"""Accuracy of each feature under an attack on that feature alone.

        Args:
            x (Tensor): (n, ...) inputs. labels (Tensor): (n,) classes.
            epsilon (float): attack radius.
            num (int, optional): first ``num`` features. Default: all M (one attack each).
            attack (str): ``"pgd"`` or ``"fgsm"``. Default: ``"pgd"``.
            **attack_kwargs: ``norm``, ``loss``, ``clip``, ``steps``, ...

        Returns:
            Tensor: (num,) float64 robust accuracies.
        """
        run = _attack_fn(attack)
        out = []
        for k in range(num or self.num_features):
            predictor = self.predictor(k)
            adversarial = run(predictor, x, labels, epsilon, **attack_kwargs)
            with torch.no_grad():
                out.append(accuracy(predictor(adversarial), labels))
        return torch.tensor(out, dtype=torch.float64)

    def saliency(self, x: Tensor, k: int, target: int | None = None) -> Tensor:
        r"""Input gradient of feature k: ``d f_k(x) / dx`` (of output ``target`` for C > 1).

        Returns:
            Tensor: (n, ...) gradients, the shape of x.
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.predictor(k)(x)
            if out.dim() == 2:
                if target is None:
                    raise ValueError("With C > 1 outputs pass target= (the output to explain).")
                out = out[:, target]
            if not out.requires_grad:
                raise RuntimeError("The kernel is not differentiable in x: no saliency.")
            (grad,) = torch.autograd.grad(out.sum(), x)
        return grad

    def tradeoff(
        self,
        x: Tensor,
        labels: Tensor,
        epsilon: float,
        top: Sequence[int],
        *,
        attack: str = "pgd",
        **attack_kwargs,
    ) -> dict[str, list[float]]:
        r"""Accuracy and robust accuracy of the top-m predictors, for each m in ``top``.

        Returns:
            dict: ``{"m": [...], "accuracy": [...], "robust_accuracy": [...]}``.
        """
        run = _attack_fn(attack)
        result: dict[str, list[float]] = {"m": [], "accuracy": [], "robust_accuracy": []}
        for m in top:
            predictor = self.predictor(slice(0, int(m)))
            adversarial = run(predictor, x, labels, epsilon, **attack_kwargs)
            with torch.no_grad():
                result["m"].append(int(m))
                result["accuracy"].append(accuracy(predictor(x), labels))
                result["robust_accuracy"].append(accuracy(predictor(adversarial), labels))
        return result


def _attack_fn(attack: str):
    if attack not in ("pgd", "fgsm"):
        raise ValueError(f"attack must be 'pgd' or 'fgsm', got {attack!r}.")
    return pgd if attack == "pgd" else fgsm


class _SubsetPredictor:
    """Sum of a subset of eigen-features as a forward function."""

    def __init__(self, features: EigenFeatures, indices: Tensor) -> None:
        self.features, self.indices = features, indices
        self.differentiable = features.regressor.differentiable

    def __call__(self, x: Tensor) -> Tensor:
        kx = self.features.regressor.test_kernel(x)
        basis = self.features.eigenvectors[:, self.indices]
        coef = self.features.coef[self.indices]
        weights = (basis @ coef).to(device=kx.device, dtype=kx.dtype)  # (N, C)
        out = kx @ weights
        return out.squeeze(-1) if self.features.regressor.squeeze else out
