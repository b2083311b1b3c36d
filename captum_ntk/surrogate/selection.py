r"""Choosing the kGLM's ``alpha`` by held-out faithfulness on the training set.

For each ``alpha`` of a log grid and each of ``k`` stratified folds of the training set, a kGLM
is fitted on the other folds (the sub-block ``K[train, train]`` of the train kernel) and
evaluated on the held-out fold (``K[held_out, train]``): no new kernel evaluations. The score
is the Kendall tau between the network's and the kGLM's log-probability of each held-out
point's correct class, both computed in float64 from logits (log-softmax, or log-sigmoid for
one logit), so confident networks give no ties from probabilities rounded to 1.0. The chosen
``alpha`` has the highest mean tau over folds (the largest such alpha on exact ties).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._validation import ArrayLike, Targets, as_labels
from .scores import correct_class_log_proba, kendall_tau_b

#: Default grids of ``alpha`` per loss (relative to the kernel's scale, see
#: ``KernelGLM(alpha_scale=)``). The squared loss is solved exactly, so its grid goes lower; the
#: cross-entropy needs more L-BFGS iterations as alpha falls.
DEFAULT_ALPHA_GRID: dict[str, tuple[float, ...]] = {
    "log_loss": (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
    "squared": (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8),
}


def stratified_folds(group: Tensor, n_folds: int, seed: int) -> list[Tensor]:
    r"""Held-out index sets of ``n_folds`` folds, stratified by ``group`` and seeded.

    Examples are visited in a seeded random order; within each group they are dealt to folds
    0, 1, ..., n_folds - 1 in turn.

    Returns:
        list of Tensor: ``n_folds`` sorted int64 index tensors partitioning ``range(N)``.
    """
    n = group.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty(n, dtype=torch.int64)
    for value in torch.unique(group):
        members = order[group[order] == value]
        fold_of[members] = torch.arange(members.numel()) % n_folds
    return [torch.nonzero(fold_of == f)[:, 0] for f in range(n_folds)]


#: fit(train_index, alpha) -> (coef (n_out, n_fold_train), intercept (n_out,))
FoldFit = Callable[[Tensor, float], tuple[Tensor, Tensor]]


def cross_validate_alpha(
    kernel: Tensor,
    fit: FoldFit,
    reference: Tensor,
    correct: Tensor,
    folds: Sequence[Tensor],
    alphas: Sequence[float],
    progress: Callable[[int], None] | None = None,
    ovr: bool = False,
) -> tuple[float, dict[str, np.ndarray]]:
    r"""k-fold choice of ``alpha`` by held-out Kendall tau with the network.

    Args:
        kernel (Tensor): ``(N, N)`` train kernel.
        fit (Callable): ``fit(train_index, alpha)`` fits a kGLM on ``kernel[train][:, train]``
                    and returns its ``coef`` ``(n_out, n_tr)`` and ``intercept`` ``(n_out,)``.
        reference (Tensor): ``(N,)`` float64 network's log-probability of the correct class.
        correct (Tensor): ``(N,)`` correct class of each example as an index into the kGLM's
                    logits (0/1 for one logit); -1 leaves the example out of the scores (it
                    still trains).
        folds (sequence of Tensor): held-out index sets.
        alphas (sequence of float): the grid, tried in the given order.
        progress (Callable, optional): called with 1 after each fit.
        ovr (bool): the kGLM's probabilities are one-vs-rest (sklearn backend, see
                    :func:`correct_class_log_proba`). Default: False.

    Returns:
        tuple: the chosen alpha and ``cv_results`` with ``"alphas"`` ``(G,)``, ``"mean_tau"``
        ``(G,)``, ``"std_tau"`` ``(G,)`` (over folds, ``ddof=0``), ``"fold_tau"`` ``(G, k)``.
    """
    n = kernel.shape[0]
    taus = np.full((len(alphas), len(folds)), math.nan)
    for f, held_out in enumerate(folds):
        keep = torch.ones(n, dtype=torch.bool)
        keep[held_out] = False
        train = torch.nonzero(keep)[:, 0]
        scored = held_out[correct[held_out] >= 0]
        block = kernel[scored.to(kernel.device)][:, train.to(kernel.device)]
        for g, alpha in enumerate(alphas):
            coef, intercept = fit(train, float(alpha))
            logits = block.to(coef.device, torch.float64) @ coef.T.double() + intercept.double()
            log_p = correct_class_log_proba(logits, correct[scored], ovr)
            taus[g, f] = kendall_tau_b(reference[scored], log_p.cpu())
            if progress is not None:
                progress(1)
    mean = np.array([_nanmean(row) for row in taus])
    std = np.array([np.nanstd(row) if np.isfinite(row).any() else math.nan for row in taus])
    if not np.isfinite(mean).any():
        raise ValueError(
            "alpha='auto' could not score any alpha: the held-out log-probabilities are "
            "constant in every fold. Pass a float alpha."
        )
    best = int(np.nanargmax(mean))  # first maximum: the largest alpha of a descending grid
    results = {
        "alphas": np.asarray(alphas, dtype=np.float64),
        "mean_tau": mean,
        "std_tau": std,
        "fold_tau": taus,
    }
    return float(alphas[best]), results


def _nanmean(row: np.ndarray) -> float:
    return float(np.nanmean(row)) if np.isfinite(row).any() else math.nan


def network_reference(
    targets: Targets, network_logits: ArrayLike | None, labels: ArrayLike | None
) -> tuple[Tensor, Tensor]:
    r"""The reference scores of ``alpha="auto"`` and the kGLM logit of each example's class.

    Args:
        targets (Targets): the parsed fitting targets.
        network_logits (Tensor or ndarray, optional): ``(N, C)`` / ``(N,)`` network logits; if
                    None, soft targets (their log) or real targets (their log-softmax) are used.
        labels (Tensor or ndarray, optional): ``(N,)`` correct classes; default: hard labels,
                    else the argmax class of the targets.

    Returns:
        tuple: ``(N,)`` float64 network log-probabilities of the correct class and ``(N,)``
        int64 index of that class among the kGLM's fitted logits (-1 where it has none).
    """
    n = targets.group.shape[0]
    if labels is not None:
        truth = as_labels(labels, "labels")
        if truth.shape[0] != n:
            raise ValueError(f"labels has {truth.shape[0]} entries, expected N = {n}")
    elif targets.kind == "labels":
        truth = targets.present[targets.values]
    else:
        truth = targets.group
    if network_logits is not None:
        logits = (
            network_logits.detach().cpu()
            if isinstance(network_logits, Tensor)
            else torch.as_tensor(np.asarray(network_logits))
        )
        width = 2 if logits.dim() == 1 or logits.shape[-1] == 1 else logits.shape[1]
        if logits.shape[0] != n or logits.dim() > 2:
            raise ValueError(f"network_logits must be (N, C) with N = {n}, got {logits.shape}")
        if bool(((truth < 0) | (truth >= width)).any()):
            raise ValueError(f"labels must lie in [0, {width}) for the network's logits")
        reference = correct_class_log_proba(logits, truth)
    elif targets.kind == "real":
        reference = correct_class_log_proba(targets.values, truth)
    elif targets.kind == "soft":
        probs = targets.values
        if probs.dim() == 1:
            reference = torch.where(truth == 1, probs, 1 - probs).log()
        else:
            reference = probs.gather(1, truth[:, None])[:, 0].log()
    else:
        raise ValueError(
            "alpha='auto' chooses alpha by faithfulness to the network, which hard labels "
            "alone do not describe: pass network_logits=(N, C) network logits on the "
            "training points to fit, or a float alpha (the paper tuned 1e-2 .. 1e-4)"
        )
    # index among the fitted logits: for one logit, 0/1 = present[0] / present[1] (the logit
    # is the log-odds of present[1], which is not classes[1] when num_classes adds absent ones)
    correct = torch.searchsorted(targets.present, truth).clamp(max=targets.present.numel() - 1)
    correct[targets.present[correct] != truth] = -1
    return reference, correct
