r"""Scores of predictions: the one implementation of each, shared by the kGLM and the metrics.

The surrogate's alpha selection and counterfactual self-consistency need the correct-class
log-probability, the correct-class margin and Kendall's tau; the metrics (downstream) validate
user input and call these. Everything is float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor


def correct_class_log_proba(logits: Tensor, index: Tensor, ovr: bool = False) -> Tensor:
    r"""Float64 log-probability of class ``index[i]`` under logits ``logits[i]``.

    Args:
        logits (Tensor): ``(n,)`` or ``(n, 1)`` one logit (the log-odds of class 1) or
                    ``(n, C)`` logits.
        index (Tensor): ``(n,)`` class indices (0/1 for one logit, ``[0, C)`` otherwise).
        ovr (bool): ``(n, C)`` logits are one-vs-rest scores, whose probabilities are
                    scikit-learn's ``sigmoid(s_c) / sum_k sigmoid(s_k)`` (the sklearn
                    backend) instead of a softmax. Default: False.

    Returns:
        Tensor: ``(n,)`` float64 ``log_softmax(logits)[i, index[i]]`` (``logsigmoid(+-s)``;
        the normalised log-sigmoid with ``ovr``).
    """
    logits = logits.detach().to(torch.float64)
    index = index.to(logits.device).long()
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() == 1:
        return F.logsigmoid(torch.where(index == 1, logits, -logits))
    if ovr:
        scores = F.logsigmoid(logits)
        log_p = scores - torch.logsumexp(scores, dim=1, keepdim=True)
    else:
        log_p = torch.log_softmax(logits, dim=1)
    return log_p.gather(1, index[:, None])[:, 0]


def correct_class_margin(logits: Tensor, index: Tensor, others: str = "max") -> Tensor:
    r"""Correct-class logit minus the largest (``"max"``) or the log-sum-exp (``"logsumexp"``,
    TRAK's margin) of the other logits; ``+-s`` for one logit ``s``. Float64, ``(n,)``."""
    if others not in ("max", "logsumexp"):
        raise ValueError(f"others must be 'max' or 'logsumexp', got {others!r}")
    logits = logits.detach().to(torch.float64)
    index = index.to(logits.device).long()
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() == 1:
        return torch.where(index == 1, logits, -logits)
    correct = logits.gather(1, index[:, None])[:, 0]
    rest = logits.scatter(1, index[:, None], -torch.inf)
    if others == "logsumexp":
        return correct - torch.logsumexp(rest, dim=1)
    return correct - rest.max(dim=1).values


def margin_gradient_weights(logits: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    r"""The derivative of TRAK's margin with respect to the logits, and ``1 - p_y``.

    Args:
        logits (Tensor): ``(B, C)`` logits (``C = 1``: one logit, the log-odds of class 1).
        index (Tensor): ``(B,)`` classes.

    Returns:
        tuple: ``q`` ``(B, C)`` with :math:`\nabla m = \sum_c q_c \nabla F^c` for
        ``m = correct_class_margin(logits, index, "logsumexp")``, and ``(B,)``
        :math:`1 - p_y`, both float64.
    """
    logits = logits.detach().to(torch.float64)
    index = index.to(logits.device).long()
    if logits.shape[1] == 1:
        sign = (2 * index - 1).to(logits.dtype)[:, None]
        return sign, torch.sigmoid(-sign[:, 0] * logits[:, 0])
    others = logits.scatter(1, index[:, None], -torch.inf)
    q = -torch.softmax(others, dim=1)
    q.scatter_(1, index[:, None], 1.0)
    return q, -torch.expm1(correct_class_log_proba(logits, index))


def kendall_tau_b(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Kendall's tau-b of two vectors (scipy's), NaN when either is constant or n < 2."""
    x = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
    y = b.detach().cpu().numpy() if isinstance(b, Tensor) else np.asarray(b)
    x, y = x.reshape(-1), y.reshape(-1)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.kendalltau(x, y).statistic)
