r"""Counterfactual self-consistency of a kGLM: the LDS of its attributions under its own refits.

Faithfulness alone (held-out Kendall tau with the network) rewards near-interpolating kGLMs whose
Eq. 3 attributions are a cancellation of huge opposite terms and predict nothing when the
training set changes. This criterion measures what the attributions are for, cheaply and without
retraining the network: on a held-out part of the training set, the attributions of a kGLM
fitted on the rest are compared, by the linear datamodeling score (Park et al. 2023), with the
margins of kGLMs refitted on random halves of the rest (sub-blocks of the train kernel only).
``alpha="auto"`` maximises held-out tau plus this score (see
:class:`~captum_ntk.surrogate.KernelGLM`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from .scores import correct_class_margin

#: fit(train_index, alpha) -> (coef (n_out, n_fold_train), intercept (n_out,))
FoldFit = Callable[[Tensor, float], tuple[Tensor, Tensor]]

#: Most training / held-out points the criterion uses (a seeded random sample beyond).
MAX_FIT_POINTS, MAX_HELD_OUT = 2000, 500


def _attributions(block: Tensor, coef: Tensor, correct: Tensor) -> Tensor:
    """Eq. 3 attributions of each held-out point's correct-class margin's leading term."""
    coef = coef.to(block.device, torch.float64)
    if coef.shape[0] == 1:
        return (2 * correct - 1).to(torch.float64)[:, None] * block * coef[0]
    return block * coef[correct]


def columnwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r"""Spearman correlation (average ranks) of each column of ``a`` with that of ``b``.

    Args:
        a (ndarray): ``(M, n)`` values. b (ndarray): ``(M, n)`` values.

    Returns:
        ndarray: ``(n,)`` correlations, NaN where a column is constant.
    """
    rank_a = stats.rankdata(a, axis=0) - (a.shape[0] + 1) / 2
    rank_b = stats.rankdata(b, axis=0) - (b.shape[0] + 1) / 2
    denominator = np.sqrt((rank_a**2).sum(axis=0) * (rank_b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rank_a * rank_b).sum(axis=0) / denominator
    rho[denominator == 0] = np.nan
    return rho


def _mean_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean over columns of the Spearman correlations and its standard error."""
    rho = columnwise_spearman(a, b)
    rho = rho[~np.isnan(rho)]
    if rho.size < 2:
        return (float(rho.mean()) if rho.size else math.nan), math.nan
    return float(rho.mean()), float(rho.std(ddof=1) / math.sqrt(rho.size))


def counterfactual_consistency(
    kernel: Tensor,
    fit: FoldFit,
    correct: Tensor,
    held_out: Tensor,
    alphas: Sequence[float],
    *,
    num_subsets: int = 16,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The kGLM's LDS against its own refits, for each alpha of a grid.

    With ``T`` the training points outside ``held_out``: a kGLM fitted on ``T`` gives each
    held-out point ``z`` attributions :math:`W_{y_z, i}\,\kappa(z, x_i)`, ``i`` in ``T``; kGLMs
    refitted on ``num_subsets`` seeded random halves ``S_m`` of ``T`` give margins
    :math:`f_m(z)`; the score is the mean over ``z`` of the Spearman correlation over ``m``
    between :math:`\sum_{i \in S_m} W_{y_z, i}\,\kappa(z, x_i)` and :math:`f_m(z)`.

    Args:
        kernel (Tensor): ``(N, N)`` train kernel.
        fit (Callable): ``fit(train_index, alpha) -> (coef, intercept)`` on sub-blocks.
        correct (Tensor): ``(N,)`` index of each point's class among the kGLM's logits (-1: no
                    score).
        held_out (Tensor): indices of the held-out points.
        alphas (sequence of float): the grid.
        num_subsets (int): refits per alpha. Default: 16.
        seed (int): seed of the subsets and of the subsampling. Default: 0.
        progress (Callable, optional): called with 1 after each fit.

    Returns:
        tuple of ndarray: ``(G,)`` scores in ``[-1, 1]`` (NaN where undefined) and ``(G,)``
        their standard errors over the held-out points.
    """
    n = kernel.shape[0]
    generator = torch.Generator().manual_seed(seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[held_out] = False
    train = torch.nonzero(keep)[:, 0]
    if train.numel() > MAX_FIT_POINTS:
        train = train[torch.randperm(train.numel(), generator=generator)[:MAX_FIT_POINTS]].sort()[0]
    scored = held_out[correct[held_out] >= 0]
    if scored.numel() > MAX_HELD_OUT:
        scored = scored[torch.randperm(scored.numel(), generator=generator)[:MAX_HELD_OUT]]
    if scored.numel() == 0 or train.numel() < 4:
        return np.full(len(alphas), math.nan), np.full(len(alphas), math.nan)
    target = correct[scored]
    device = kernel.device
    block = kernel[scored.to(device)][:, train.to(device)].to(torch.float64)
    size = train.numel() // 2
    subsets = [
        torch.randperm(train.numel(), generator=generator)[:size].sort()[0]
        for _ in range(num_subsets)
    ]
    predictions = np.zeros((len(alphas), num_subsets, scored.numel()))
    for g, alpha in enumerate(alphas):
        coef, _ = fit(train, float(alpha))
        scores = _attributions(block, coef, target.to(device))
        for m, subset in enumerate(subsets):
            predictions[g, m] = scores[:, subset.to(device)].sum(dim=1).cpu().numpy()
        if progress is not None:
            progress(1)
    outputs = np.zeros_like(predictions)
    for m, subset in enumerate(subsets):  # subsets outer: a squared-loss system serves every alpha
        sub = train[subset]
        for g, alpha in enumerate(alphas):
            coef, intercept = fit(sub, float(alpha))
            logits = block[:, subset.to(device)] @ coef.T.to(block) + intercept.to(block)
            outputs[g, m] = (
                correct_class_margin(logits, target.to(device), "logsumexp").cpu().numpy()
            )
            if progress is not None:
                progress(1)
    pairs = [_mean_spearman(predictions[g], outputs[g]) for g in range(len(alphas))]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


#: Refits per alpha of :func:`counterfactual_consistency` in ``alpha="auto"``.
CONSISTENCY_SUBSETS = 16

#: ``alpha="auto"`` considers only the alphas whose self-consistency is at least this fraction
#: of the grid's best (:func:`select_alpha`).
CONSISTENCY_FLOOR = 0.5


def select_alpha(
    alphas: Sequence[float],
    cv_results: dict[str, np.ndarray],
    weight: float,
    floor: float = CONSISTENCY_FLOOR,
) -> float:
    r"""The alpha maximising held-out tau plus ``weight`` times counterfactual self-consistency,
    among the alphas whose consistency is at least :data:`CONSISTENCY_FLOOR` times the grid's
    best, with the one-standard-error rule toward larger alpha.

    Both are rank correlations in ``[-1, 1]`` on held-out training points; an alpha whose
    consistency is undefined (NaN) counts its tau only. The floor keeps the choice out of the
    near-interpolating regime, where the consistency has fallen below half of its best and the
    kGLM's attributions stop predicting retrained networks while held-out tau still rises by a
    few hundredths (``python benchmarks/alpha_selection.py``: the digits CNN's pNTK has LDS
    0.141 at the alpha 1e-2 chosen with the floor, 0.035 at the 1e-6 chosen without it; the
    MNIST 0/1 row of ``captum-ntk reproduce``: docs/reproduce.md). The chosen alpha is the
    largest whose score lies within one standard error of the best score (at the best alpha: the standard
    error of tau over the folds and that of the consistency over the held-out points,
    combined): where the curve is flat within its noise the choice goes to the more
    regularised, less cancelling kGLM instead of flipping with the last digits of the kernel.

    Args:
        alphas (sequence of float): the grid, descending.
        cv_results (dict): ``"mean_tau"``, ``"std_tau"`` ``(G,)``, ``"fold_tau"`` ``(G, k)``,
                    ``"consistency"`` and ``"consistency_se"`` ``(G,)``.
        weight (float): weight of the consistency (``KernelGLM(consistency_weight=)``).
        floor (float): the eligible alphas' least consistency, as a fraction of the grid's
                    best (0: every alpha). Default: :data:`CONSISTENCY_FLOOR`.

    Returns:
        float: the chosen alpha.
    """
    lds = cv_results["consistency"]
    total = weight * np.where(np.isnan(lds), 0.0, lds) + cv_results["mean_tau"]
    if np.isfinite(lds).any() and np.nanmax(lds) > 0:
        total = np.where(lds < floor * np.nanmax(lds), np.nan, total)
    if not np.isfinite(total).any():
        raise ValueError("alpha='auto' could not score any alpha; pass a float alpha.")
    best = int(np.nanargmax(total))
    tau_se = float(cv_results["std_tau"][best]) / math.sqrt(cv_results["fold_tau"].shape[1])
    lds_se = weight * float(cv_results["consistency_se"][best])
    error = math.sqrt(sum(v * v for v in (tau_se, lds_se) if math.isfinite(v)))
    finite = np.where(np.isfinite(total), total, -np.inf)
    return float(alphas[int(np.nonzero(finite >= total[best] - error)[0][0])])
