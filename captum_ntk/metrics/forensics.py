r"""Poisoned-data forensics (Table 3): precision and recall of kernel nearest neighbours."""

from __future__ import annotations

import math

import torch

from ._checks import ArrayLike, _to_tensor


# --------------------------------------------------------------------------- forensics
def forensic_precision_recall(
    test_train_kernel: ArrayLike,
    train_poisoned: ArrayLike,
    test_poisoned: ArrayLike,
    *,
    top: int = 5,
    threshold: int = 3,
    zero_division: float = math.nan,
) -> tuple[float, float]:
    r"""Poisoned-test-point detection by nearest training neighbours (Engel et al., Table 3).

    For each test point the ``top`` training points with the largest kernel values are taken
    (ties broken towards the lower training index); the test point is flagged as poisoned when
    at least ``threshold`` of them are poisoned. Precision and recall of the flags are computed
    against ``test_poisoned``.

    Args:
        test_train_kernel (Tensor or ndarray): ``(n_test, n_train)`` kernel (larger = more
                    similar), Captum orientation.
        train_poisoned (Tensor or ndarray): ``(n_train,)`` bool, which training points are
                    poisoned.
        test_poisoned (Tensor or ndarray): ``(n_test,)`` bool, which test points truly carry the
                    poison trigger.
        top (int, optional): Number of most similar training points. Default: 5
        threshold (int, optional): Minimum number of poisoned neighbours to flag. Default: 3
        zero_division (float, optional): Precision when nothing is flagged and recall when no
                    test point is poisoned. Default: ``nan``

    Returns:
        (precision, recall) (tuple of float): ``TP / (TP + FP)`` and ``TP / (TP + FN)``.
    """
    kernel = _to_tensor(test_train_kernel)
    if kernel.dim() != 2:
        raise ValueError(
            f"test_train_kernel must be 2-D (n_test, n_train), got {tuple(kernel.shape)}"
        )
    n_test, n_train = kernel.shape
    train_flags = _to_tensor(train_poisoned).to(torch.bool).reshape(-1)
    test_flags = _to_tensor(test_poisoned).to(torch.bool).reshape(-1)
    if train_flags.shape[0] != n_train:
        raise ValueError(
            f"train_poisoned has {train_flags.shape[0]} entries, expected n_train = {n_train}"
        )
    if test_flags.shape[0] != n_test:
        raise ValueError(
            f"test_poisoned has {test_flags.shape[0]} entries, expected n_test = {n_test}"
        )
    if not 1 <= top <= n_train:
        raise ValueError(f"top must lie in [1, n_train = {n_train}], got {top}")
    if not 1 <= threshold <= top:
        raise ValueError(f"threshold must lie in [1, top = {top}], got {threshold}")
    if kernel.is_floating_point() and bool(torch.isnan(kernel).any()):
        raise ValueError("test_train_kernel contains NaN values")
    order = torch.sort(kernel, dim=1, descending=True, stable=True).indices[:, :top]
    flagged = train_flags[order].sum(dim=1) >= threshold
    true_positive = int((flagged & test_flags).sum())
    n_flagged = int(flagged.sum())
    n_positive = int(test_flags.sum())
    precision = true_positive / n_flagged if n_flagged else float(zero_division)
    recall = true_positive / n_positive if n_positive else float(zero_division)
    return precision, recall
