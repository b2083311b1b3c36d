r"""The authors' tau_K protocol, beside this library's.

This library's ``tau_K`` (:func:`captum_ntk.metrics.faithfulness`) is the Kendall tau between the
network's and the kGLM's probability of each test example's *correct* class, over every test
example. The authors' notebook that made Table 1 (``experiments/create_table_metrics.ipynb`` of
github.com/pnnl/projection_ntk, function ``make_no_forward_fit``) computes it differently for the
binary rows:

1. the scores are each model's score of *class 1* (the network's sigmoid output, the kGLM's
   logit through a monotone softmax over the test set), not of the correct class;
2. test examples whose network probability is saturated (exactly 0.0 or 1.0 in float32, a logit
   beyond about +-17) are dropped before the tau.

On a network that is 99.8% accurate the two differ by a lot: nearly every correct-class
probability is within 1e-3 of 1, so the library's tau ranks tiny differences, while class-1 scores
are split by class, and every pair of examples of different classes that both models classify
correctly is concordant. Both are reported; ``tau_paper`` is the one to compare with the paper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...surrogate.scores import kendall_tau_b

__all__ = ["class_one_scores", "paper_tau"]


def class_one_scores(correct_class_probability: Tensor, labels: Tensor) -> Tensor:
    r"""The probability of class 1 of a binary task from the correct-class probability (float64)."""
    p = correct_class_probability.double()
    return torch.where(labels.to(p.device) == 1, p, 1 - p)


def paper_tau(network_logits: Tensor, surrogate_scores: Tensor) -> float:
    r"""Kendall tau as the authors computed Table 1's binary rows.

    Args:
        network_logits (Tensor): (n,) the network's logit of class 1 (the row's networks have one
                output; its sigmoid is the probability of class 1).
        surrogate_scores (Tensor): (n,) the kGLM's score of class 1 (any monotone function of its
                class-1 logit or probability).

    Returns:
        float: tau-b over the examples whose network probability is not saturated in float32;
        NaN for fewer than two such examples.
    """
    logits = network_logits.detach().reshape(-1)
    p32 = torch.sigmoid(logits.float())
    keep = (p32 > 0) & (p32 < 1)
    if int(keep.sum()) < 2:
        return math.nan
    p = torch.sigmoid(logits.double())[keep]
    return kendall_tau_b(p.cpu(), surrogate_scores.detach().reshape(-1).double()[keep.cpu()].cpu())
