"""Shared input checks and label helpers of :mod:`captum_ntk.analysis`."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_matrix", "check_labels", "one_hot_targets", "predicted_labels"]


def as_matrix(values: Tensor, name: str) -> Tensor:
    r"""Views (N,) targets as (N, 1); (N, C) stay as they are.

    Args:
        values (Tensor): (N,) or (N, C) targets.
        name (str): argument name for the error message.

    Returns:
        Tensor: (N, C) view.
    """
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(values).__name__}.")
    if values.dim() == 1:
        return values.unsqueeze(1)
    if values.dim() != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, C), got {tuple(values.shape)}.")
    return values


def one_hot_targets(labels: Tensor, num_classes: int | None = None) -> Tensor:
    r"""Regression targets for class labels.

    Two classes give a (N,) vector of +-1 (label 1 -> +1, label 0 -> -1), the single-output
    convention of a binary kernel predictor whose sign is the prediction; more classes give
    (N, C) one-hot rows.

    Args:
        labels (Tensor): (N,) integer labels in [0, num_classes).
        num_classes (int, optional): number of classes. Default: ``labels.max() + 1``
                (at least 2).

    Returns:
        Tensor: float64 targets, (N,) for two classes, else (N, C).
    """
    labels = check_labels(labels, None)
    classes = int(num_classes) if num_classes is not None else max(int(labels.max()) + 1, 2)
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(
            f"labels must lie in [0, {classes}), got [{labels.min()}, {labels.max()}]."
        )
    if classes == 2:
        return labels.to(torch.float64) * 2.0 - 1.0
    return torch.nn.functional.one_hot(labels, classes).to(torch.float64)


def check_labels(labels: Tensor, n: int | None) -> Tensor:
    r"""Checks (N,) integer labels and returns them as int64."""
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        raise ValueError("labels must be a 1-D integer Tensor of class indices.")
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise ValueError("labels must be integer class indices, got non-integer floats.")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries for {n} inputs.")
    return labels.long()


def predicted_labels(outputs: Tensor) -> Tensor:
    r"""Class predictions of raw outputs.

    Args:
        outputs (Tensor): (n,) or (n, 1) scores of a binary predictor (class 1 when > 0), or
                (n, C) scores, C > 1 (argmax).

    Returns:
        Tensor: (n,) int64 predicted labels.
    """
    if outputs.dim() == 1 or (outputs.dim() == 2 and outputs.shape[1] == 1):
        return (outputs.reshape(-1) > 0).long()
    if outputs.dim() != 2:
        raise ValueError(f"outputs must be (n,), (n, 1) or (n, C), got {tuple(outputs.shape)}.")
    return outputs.argmax(dim=1)
