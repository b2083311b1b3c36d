r"""Per-example scores ranked by the faithfulness metrics, computed from logits in float64.

Probabilities of confident networks round to 1.0 (float32 for logit margins above ~17, float64
above ~37), which creates ties that a rank correlation cannot order. Log-probabilities computed
from float64 logits with ``log_softmax`` / ``logsigmoid`` stay distinct up to margins of ~700.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..surrogate import scores as core
from ._checks import ArrayLike, _labels, _same_length, _to_tensor

__all__ = ["correct_class_log_probability", "correct_class_margin", "tied_pairs"]


def _logits_and_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    values = _to_tensor(logits)
    if not values.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {values.dtype}")
    values = values.to(torch.float64)
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.dim() not in (1, 2):
        raise ValueError(f"logits must be (n,), (n, 1) or (n, C), got {tuple(values.shape)}")
    truth = _labels(labels, "labels")
    _same_length((values, "logits"), (truth, "labels"))
    width = 2 if values.dim() == 1 else values.shape[1]
    if bool(((truth < 0) | (truth >= width)).any()):
        raise ValueError(
            f"labels must lie in [0, {width}) for logits of shape {tuple(values.shape)}"
        )
    return values, truth


def correct_class_log_probability(logits: ArrayLike, labels: ArrayLike) -> Tensor:
    r"""Log-probability of each example's correct class, from logits in float64.

    Args:
        logits (Tensor or ndarray): ``(n, C)`` logits (softmax model) or ``(n,)`` / ``(n, 1)``
                    single logits (sigmoid model: the log-odds of class 1).
        labels (Tensor or ndarray): ``(n,)`` integer labels (0/1 for one logit).

    Returns:
        log_p (Tensor): ``(n,)`` float64 ``log_softmax(logits)[i, labels[i]]``, or
                    ``logsigmoid(s)`` / ``logsigmoid(-s)`` for labels 1 / 0, on the CPU.
    """
    values, truth = _logits_and_labels(logits, labels)
    return core.correct_class_log_proba(values, truth)


def correct_class_margin(logits: ArrayLike, labels: ArrayLike, others: str = "max") -> Tensor:
    r"""Margin of each example's correct class: its logit minus the largest other logit.

    With ``others="logsumexp"`` the other logits are reduced by log-sum-exp instead of max:
    :math:`\mathrm{logit}_y - \log\sum_{c \neq y} e^{\mathrm{logit}_c}`, TRAK's and dattri's
    output function for counterfactual evaluation (the log-odds of the correct class).

    Args:
        logits (Tensor or ndarray): ``(n, C)`` logits (C >= 2) or ``(n,)`` / ``(n, 1)`` single
                    logits ``s`` (the margin is ``s`` for label 1 and ``-s`` for label 0).
        labels (Tensor or ndarray): ``(n,)`` integer labels.
        others (str): ``"max"`` or ``"logsumexp"``. Default: ``"max"``.

    Returns:
        margin (Tensor): ``(n,)`` float64, positive where the class is predicted, on the CPU.
    """
    if others not in ("max", "logsumexp"):
        raise ValueError(f"others must be 'max' or 'logsumexp', got {others!r}")
    values, truth = _logits_and_labels(logits, labels)
    return core.correct_class_margin(values, truth, others)


def tied_pairs(values: ArrayLike) -> int:
    r"""Number of pairs ``i < j`` with ``values[i] == values[j]`` (the ties Kendall tau skips).

    Args:
        values (Tensor or ndarray): ``(n,)`` scores.

    Returns:
        int: :math:`\sum_g n_g (n_g - 1) / 2` over groups of equal values.
    """
    counts = torch.unique(_to_tensor(values).reshape(-1), return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


def tied_pairs_in_either(a: Tensor, b: Tensor) -> int:
    """Number of pairs tied in ``a`` or in ``b`` (neither concordant nor discordant)."""
    _, inverse_a = torch.unique(a, return_inverse=True)
    _, inverse_b = torch.unique(b, return_inverse=True)
    both = torch.unique(torch.stack([inverse_a, inverse_b], dim=1), dim=0, return_counts=True)[1]
    return tied_pairs(a) + tied_pairs(b) - int((both * (both - 1) // 2).sum())
