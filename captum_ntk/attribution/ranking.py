r"""Ranking training examples: streaming top-k of kernel values or kGLM attributions.

Kernel blocks (test rows x training columns) arrive in any order; :class:`StreamingTopK`
keeps, per test example, the ``k`` best candidates seen so far, so memory is bounded by
the blocks plus ``n_test x k`` (times the number of classes for attributions). Ties go to
the lower training index whatever the block sizes.

Eq. 3 attributions of one block, for every class of the kGLM, come from
:func:`class_attributions`: A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N. A binary kGLM has one
logit s (the log-odds of class 1): class 1 gets the attributions of s, class 0 their
negation, as in :meth:`~captum_ntk.attribution.base.NTKAttribution.attribute`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.blocks import StreamingTopK

__all__ = ["StreamingTopK"]


def num_classes(coef: Tensor) -> int:
    """Classes of a kGLM with ``coef`` (n_logits, N): 2 for one logit."""
    return 2 if coef.shape[0] == 1 else coef.shape[0]


def class_attributions(
    kernel: Tensor, coef: Tensor, intercept: Tensor, col_start: int, num_train: int
) -> Tensor:
    r"""Eq. 3 attributions of a kernel block to every class.

    Args:
        kernel (Tensor): (b, m) kernel values against training columns col_start .. +m.
        coef (Tensor): (n_logits, N) kGLM weights W. intercept (Tensor): (n_logits,) b.
        col_start (int): first training column of the block.
        num_train (int): N.

    Returns:
        Tensor: (b, L, m), L = number of classes (2 for a binary kGLM: [-A, A]).
    """
    coef = coef[:, col_start : col_start + kernel.shape[1]].to(kernel.device, kernel.dtype)
    bias = (intercept.to(kernel.device, kernel.dtype) / num_train)[None, :, None]
    scores = kernel[:, None, :] * coef[None] + bias
    if coef.shape[0] == 1:
        scores = torch.cat([-scores, scores], dim=1)
    return scores


def predicted_classes(logits: Tensor) -> Tensor:
    """Classes from per-class logits (n, L); for a binary kGLM (L = 2 of [-s, s]) class 1
    where s > 0."""
    return logits.argmax(dim=1)


def dense_attributions(
    kernel: Tensor, coef: Tensor, intercept: Tensor, labels: Tensor | None
) -> Tensor:
    r"""A(x, x_i)^{c(x)} for every training example, c(x) the label or predicted class.

    Args:
        kernel (Tensor): (n, N) kernel between test and training examples.
        coef (Tensor): (n_logits, N). intercept (Tensor): (n_logits,).
        labels (Tensor, optional): (n,) classes; default the kGLM's predicted classes.

    Returns:
        Tensor: (n, N).
    """
    coef = coef.to(kernel.device, kernel.dtype)
    intercept = intercept.to(kernel.device, kernel.dtype)
    binary = coef.shape[0] == 1
    if binary:
        coef, intercept = torch.cat([-coef, coef]), torch.cat([-intercept, intercept])
    if labels is None:
        labels = predicted_classes(kernel @ coef.T + intercept)
    labels = labels.to(kernel.device)
    return kernel * coef[labels] + (intercept[labels] / kernel.shape[1])[:, None]


def surrogate_self_attributions(
    diagonal: Tensor, coef: Tensor, intercept: Tensor, labels: Tensor
) -> Tensor:
    r"""A(x_i, x_i)^{y_i} = W_{y_i, i} κ(x_i, x_i) + b_{y_i} / N for every training example.

    Args:
        diagonal (Tensor): (N,) κ(x_i, x_i). coef (Tensor): (n_logits, N).
        intercept (Tensor): (n_logits,). labels (Tensor): (N,) classes y_i.

    Returns:
        Tensor: (N,).
    """
    coef = coef.to(diagonal.device, diagonal.dtype)
    intercept = intercept.to(diagonal.device, diagonal.dtype)
    if coef.shape[0] == 1:
        coef, intercept = torch.cat([-coef, coef]), torch.cat([-intercept, intercept])
    n = diagonal.shape[0]
    labels = labels.to(diagonal.device)
    return coef[labels, torch.arange(n, device=diagonal.device)] * diagonal + intercept[labels] / n


def leave_self_out_margin(
    train_kernel: Tensor, coef: Tensor, intercept: Tensor, labels: Tensor
) -> Tensor:
    r"""How strongly the rest of the training set makes the kGLM reject each example's label.

    With R_i^c = Σ_{j≠i} A(x_i, x_j)^c = kGLM(x_i)^c - A(x_i, x_i)^c (Eq. 3 summed over the
    other training examples), returns max_{c≠y_i} R_i^c - R_i^{y_i}: positive when the
    other examples favour another class than the label (softmax-invariant).

    Args:
        train_kernel (Tensor): (N, N). coef (Tensor): (n_logits, N). intercept (Tensor):
                (n_logits,). labels (Tensor): (N,) classes y_i.

    Returns:
        Tensor: (N,).
    """
    kernel = train_kernel
    coef = coef.to(kernel.device, kernel.dtype)
    intercept = intercept.to(kernel.device, kernel.dtype)
    if coef.shape[0] == 1:
        coef, intercept = torch.cat([-coef, coef]), torch.cat([-intercept, intercept])
    n = kernel.shape[0]
    logits = kernel @ coef.T + intercept
    own_attribution = coef.T * kernel.diagonal()[:, None] + intercept / n
    rest = torch.nan_to_num(logits - own_attribution, nan=-torch.inf)
    labels = labels.to(kernel.device)[:, None]
    own = rest.gather(1, labels)[:, 0]
    other = rest.scatter(1, labels, -torch.inf).amax(dim=1)
    return other - own
