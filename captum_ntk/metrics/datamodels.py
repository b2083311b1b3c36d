r"""Counterfactual validity of attribution scores: the linear datamodeling score (LDS).

Park et al. (2023, TRAK) evaluate data attribution by retraining: draw ``M`` random subsets
:math:`S_m` of the training set (usually half of it), retrain on each (several seeds), and record
an output :math:`f_m(z)` of every test example ``z`` (usually the correct-class margin). A
method's scores :math:`\tau(z, i)` predict the retrained output additively,

.. math::
    g_m(z) = \sum_{i \in S_m} \tau(z, i),

and the LDS is the Spearman rank correlation between :math:`g_m(z)` and :math:`f_m(z)` over the
``M`` subsets, averaged over test examples. The ground truth comes from
:class:`~captum_ntk.metrics.retraining.RetrainingHarness`.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..surrogate.consistency import columnwise_spearman
from ._checks import ArrayLike, _to_tensor

__all__ = ["datamodel_predictions", "draw_subsets", "linear_datamodeling_score"]


def draw_subsets(
    num_train: int, num_subsets: int, subset_fraction: float = 0.5, seed: int = 0
) -> Tensor:
    r"""Seeded random training subsets of a fixed size, as boolean masks.

    Subset ``m`` keeps ``round(subset_fraction * num_train)`` examples chosen uniformly without
    replacement by a generator seeded with ``(seed, m)``: subset ``m`` does not depend on
    ``num_subsets``, so more subsets extend a ground truth instead of replacing it.

    Args:
        num_train (int): training set size N.
        num_subsets (int): number of subsets M.
        subset_fraction (float): fraction of the training set each subset keeps, in (0, 1].
                    Default: 0.5.
        seed (int): seed of the draw. Default: 0.

    Returns:
        Tensor: ``(M, N)`` bool masks.
    """
    if num_train < 1 or num_subsets < 1:
        raise ValueError(f"num_train and num_subsets must be >= 1, got {num_train}, {num_subsets}")
    if not 0.0 < subset_fraction <= 1.0:
        raise ValueError(f"subset_fraction must lie in (0, 1], got {subset_fraction}")
    size = max(1, round(subset_fraction * num_train))
    masks = torch.zeros(num_subsets, num_train, dtype=torch.bool)
    for m in range(num_subsets):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + m)
        masks[m, torch.randperm(num_train, generator=generator)[:size]] = True
    return masks


def _scores_and_masks(scores: ArrayLike, subset_masks: ArrayLike) -> tuple[Tensor, Tensor]:
    values = _to_tensor(scores)
    if values.dim() != 2 or not values.is_floating_point():
        raise ValueError(
            f"scores must be a floating (n_test, n_train) matrix (Captum's orientation), got "
            f"{tuple(values.shape)} {values.dtype}"
        )
    masks = _to_tensor(subset_masks)
    if masks.dim() != 2 or masks.shape[1] != values.shape[1]:
        raise ValueError(
            f"subset_masks must be (M, n_train) with n_train = {values.shape[1]} (the scores' "
            f"second dimension), got {tuple(masks.shape)}. TRAK and dattri return scores as "
            "(n_train, n_test): transpose them."
        )
    if masks.dtype != torch.bool:
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("subset_masks must be boolean or hold only 0 and 1")
        masks = masks != 0
    if not bool(torch.isfinite(values).all()):
        raise ValueError("scores contain NaN or infinite values")
    return values.to(torch.float64), masks


def datamodel_predictions(scores: ArrayLike, subset_masks: ArrayLike) -> Tensor:
    r"""The additive predictions :math:`g_m(z) = \sum_{i \in S_m} \tau(z, i)`.

    Args:
        scores (Tensor or ndarray): ``(n_test, n_train)`` attribution scores.
        subset_masks (Tensor or ndarray): ``(M, n_train)`` boolean subset masks.

    Returns:
        Tensor: ``(M, n_test)`` float64.
    """
    values, masks = _scores_and_masks(scores, subset_masks)
    return masks.to(torch.float64) @ values.T


def linear_datamodeling_score(
    scores: ArrayLike,
    subset_masks: ArrayLike,
    subset_outputs: ArrayLike,
    *,
    return_per_example: bool = False,
) -> float | tuple[float, Tensor]:
    r"""Linear datamodeling score (Park et al. 2023) of attribution scores.

    For each test example ``z``, the Spearman correlation (average ranks for ties) over the
    ``M`` subsets between the additive prediction :math:`g_m(z)` of
    :func:`datamodel_predictions` and the retrained output :math:`f_m(z)`; the score is the
    mean over test examples. A test example whose predictions or outputs are constant over the
    subsets has no correlation (NaN) and is left out of the mean (NaN-safe); if none is left
    the score is NaN, with a warning.

    Args:
        scores (Tensor or ndarray): ``(n_test, n_train)`` scores, Captum's orientation (higher:
                    the training example raises the output more).
        subset_masks (Tensor or ndarray): ``(M, n_train)`` boolean masks of the retraining
                    subsets (:func:`draw_subsets`).
        subset_outputs (Tensor or ndarray): ``(M, n_test)`` outputs of the models retrained
                    on each subset, or ``(M, R, n_test)`` for ``R`` retrainings per subset
                    (averaged over ``R`` first, as TRAK and dattri do).
        return_per_example (bool): also return the per-example correlations. Default: False.

    Returns:
        float: the LDS in ``[-1, 1]`` (NaN if no example has a defined correlation), and with
        ``return_per_example`` a ``(n_test,)`` float64 tensor of correlations (NaN where
        undefined).
    """
    predictions = datamodel_predictions(scores, subset_masks)
    outputs = _to_tensor(subset_outputs).to(torch.float64)
    if outputs.dim() == 3:
        outputs = outputs.mean(dim=1)
    if tuple(outputs.shape) != tuple(predictions.shape):
        raise ValueError(
            f"subset_outputs must be (M, n_test) or (M, R, n_test) with (M, n_test) = "
            f"{tuple(predictions.shape)}, got {tuple(_to_tensor(subset_outputs).shape)}"
        )
    if predictions.shape[0] < 3:
        raise ValueError(
            f"need at least 3 subsets for a rank correlation, got {predictions.shape[0]}"
        )
    if not bool(torch.isfinite(outputs).all()):
        raise ValueError("subset_outputs contain NaN or infinite values")
    per_example = torch.from_numpy(columnwise_spearman(predictions.numpy(), outputs.numpy()))
    defined = per_example[~torch.isnan(per_example)]
    if defined.numel() == 0:
        warnings.warn(
            "linear_datamodeling_score: every test example has constant predictions or outputs "
            "over the subsets; the LDS is NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        lds = math.nan
    else:
        lds = float(defined.mean())
    return (lds, per_example) if return_per_example else lds
