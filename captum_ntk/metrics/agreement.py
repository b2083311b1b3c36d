r"""Agreement of predictions: test-accuracy differential, misclassification coincidence (Eq. 21)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import ArrayLike, _labels, _same_length, _to_tensor


# --------------------------------------------------------------------------- agreement
def test_accuracy_differential(
    pred_surrogate: ArrayLike, pred_nn: ArrayLike, labels: ArrayLike
) -> float:
    r"""Test accuracy differential TAD = acc(surrogate) - acc(network) (Engel et al., App. G).

    Note the argument order: surrogate first. Positive values mean the surrogate is more
    accurate than the network.

    Args:
        pred_surrogate (Tensor or ndarray): ``(n,)`` predicted labels of the surrogate, or
                    ``(n, C)`` scores (reduced with argmax).
        pred_nn (Tensor or ndarray): ``(n,)`` predicted labels of the network, or ``(n, C)``
                    scores.
        labels (Tensor or ndarray): ``(n,)`` true labels.

    Returns:
        tad (float): in ``[-1, 1]``.
    """
    surrogate = _labels(pred_surrogate, "pred_surrogate")
    network = _labels(pred_nn, "pred_nn")
    truth = _labels(labels, "labels")
    _same_length((surrogate, "pred_surrogate"), (network, "pred_nn"), (truth, "labels"))
    acc_surrogate = (surrogate == truth).double().mean()
    acc_nn = (network == truth).double().mean()
    return float(acc_surrogate - acc_nn)


# Not a pytest test despite the name.
test_accuracy_differential.__test__ = False  # type: ignore[attr-defined]


def misclassification_coincidence_rate(
    pred_nn: ArrayLike, pred_surrogate: ArrayLike, labels: ArrayLike
) -> float:
    r"""Misclassification coincidence rate :math:`R_{miss}` (Engel et al., Eq. 21).

    .. math::
        R_{miss} = \frac{|\{\text{NN wrong}\} \cap \{\text{surrogate wrong}\} \cap
        \{\text{same prediction}\}|}{|\{\text{NN wrong}\} \cup \{\text{surrogate wrong}\}|}

    1 means the two models make exactly the same mistakes.

    Args:
        pred_nn (Tensor or ndarray): ``(n,)`` predicted labels of the network (or ``(n, C)``
                    scores, reduced with argmax).
        pred_surrogate (Tensor or ndarray): ``(n,)`` predicted labels of the surrogate (or
                    ``(n, C)`` scores).
        labels (Tensor or ndarray): ``(n,)`` true labels.

    Returns:
        r_miss (float): in ``[0, 1]``, or ``nan`` when neither model makes a mistake (the union
                    is empty and the rate is undefined).
    """
    network = _labels(pred_nn, "pred_nn")
    surrogate = _labels(pred_surrogate, "pred_surrogate")
    truth = _labels(labels, "labels")
    _same_length((network, "pred_nn"), (surrogate, "pred_surrogate"), (truth, "labels"))
    nn_wrong = network != truth
    surrogate_wrong = surrogate != truth
    union = int((nn_wrong | surrogate_wrong).sum())
    if union == 0:
        return math.nan
    coincident = int((nn_wrong & surrogate_wrong & (network == surrogate)).sum())
    return coincident / union


def correct_class_probability(probs: ArrayLike, labels: ArrayLike) -> Tensor:
    r"""Probability each example's model assigns to its correct class.

    Args:
        probs (Tensor or ndarray): ``(n, C)`` class probabilities (C >= 2) or, for one-logit
                    models, ``(n,)`` / ``(n, 1)`` sigmoid probabilities of class 1.
        labels (Tensor or ndarray): ``(n,)`` integer labels; in ``{0, 1}`` for one-logit
                    probabilities, in ``[0, C)`` otherwise.

    Returns:
        p_correct (Tensor): ``(n,)`` ``probs[i, labels[i]]`` (or ``p`` / ``1 - p`` for sigmoid
                    probabilities), on the CPU, in the dtype of ``probs`` (float64 for numpy).
    """
    p = _to_tensor(probs)
    if not p.is_floating_point():
        p = p.to(torch.float64)
    truth = _labels(labels, "labels")
    if p.dim() == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.dim() not in (1, 2):
        raise ValueError(f"probs must be (n,), (n, 1) or (n, C), got shape {tuple(p.shape)}")
    _same_length((p, "probs"), (truth, "labels"))
    if p.dim() == 1:
        if bool(((truth != 0) & (truth != 1)).any()):
            raise ValueError("labels must be 0 or 1 for one-logit (sigmoid) probabilities")
        return torch.where(truth == 1, p, 1 - p)
    n_classes = p.shape[1]
    if bool(((truth < 0) | (truth >= n_classes)).any()):
        raise ValueError(f"labels must lie in [0, {n_classes}) for (n, {n_classes}) probabilities")
    return p.gather(1, truth[:, None])[:, 0]
