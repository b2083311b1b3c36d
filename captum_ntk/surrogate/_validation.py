r"""Input checks of the kGLM: kernels, class labels and the targets a kGLM is fitted to.

A kGLM is fitted to one of three kinds of target (:class:`Targets`):

- ``"labels"``: ``(N,)`` integer classes (the paper's kGLM, or the network's predicted classes),
  with the cross-entropy loss;
- ``"soft"``: class probabilities, ``(N, C)`` rows on the simplex or ``(N,)`` probabilities of
  class 1 for a one-logit binary kGLM, with the cross-entropy loss (distillation);
- ``"real"``: real-valued targets ``(N,)`` or ``(N, m)`` (e.g. the network's logits) with the
  squared loss (kernel ridge regression on kernel features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

#: Rows of soft targets must sum to 1 within this tolerance.
SIMPLEX_TOL = 1e-4


def as_kernel(kernel: Any, name: str) -> Tensor:
    """Converts ``kernel`` to a floating 2-D tensor without copying when possible."""
    if isinstance(kernel, Tensor):
        tensor = kernel.detach()
    elif isinstance(kernel, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(kernel))
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(kernel).__name__}"
        )
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    elif tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.to(torch.float32)
    if tensor.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D kernel matrix, got a tensor with shape {tuple(tensor.shape)}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def _as_tensor(values: Any, name: str) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().cpu()
    if values is None:
        raise TypeError(f"{name} must be a tensor or an array, got None")
    return torch.as_tensor(np.asarray(values))


def as_labels(y: Any, name: str = "y") -> Tensor:
    """Converts class labels to a 1-D int64 CPU tensor."""
    labels = _as_tensor(y, name)
    if labels.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D tensor of class labels, got shape {tuple(labels.shape)}"
        )
    if labels.is_complex():
        raise ValueError(f"{name} must hold integer class labels")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError(f"{name} must hold integer class labels; got non-integer values")
    return labels.to(torch.int64)


def is_integer_valued(values: Tensor) -> bool:
    """True for integer/bool tensors and float tensors whose values are all integers."""
    if not values.is_floating_point():
        return True
    return bool((values == values.round()).all())


@dataclass
class Targets:
    r"""What a kGLM is fitted to, in the layout of its logits.

    Attributes:
        kind (str): ``"labels"``, ``"soft"`` or ``"real"``.
        values (Tensor): ``labels``: ``(N,)`` int64 index into ``present``; ``soft``: ``(N,)``
            probabilities of class 1 (one logit) or ``(N, C)`` probabilities; ``real``: ``(N,)``
            or ``(N, m)`` float64 targets.
        n_out (int): number of fitted logits (rows of ``coef_`` before any expansion).
        classes (Tensor): ``(C,)`` int64 labels of the model's classes.
        present (Tensor): ``(n_present,)`` classes that the fitted rows cover (all of ``classes``
            except absent labels).
        group (Tensor): ``(N,)`` int64 class of each example, for class weights and folds.
    """

    kind: str
    values: Tensor
    n_out: int
    classes: Tensor
    present: Tensor
    group: Tensor

    @property
    def one_logit(self) -> bool:
        """The model has a single logit (the log-odds of ``present[1]``)."""
        return self.n_out == 1

    def subset(self, index: Tensor) -> Targets:
        """The targets of the examples ``index`` (same classes and layout)."""
        return Targets(
            self.kind, self.values[index], self.n_out, self.classes, self.present, self.group[index]
        )


def parse_labels(y: Any, n_train: int, num_classes: int | None) -> Targets:
    """Integer class labels (the classes are ``arange(num_classes)`` or the distinct labels)."""
    labels = as_labels(y)
    _check_length(labels, n_train)
    if num_classes is None:
        classes = torch.unique(labels)
    else:
        num_classes = _check_num_classes(num_classes)
        if n_train and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"with num_classes={num_classes}, labels must lie in [0, {num_classes}); "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        classes = torch.arange(num_classes, dtype=torch.int64)
    present = torch.unique(labels)
    if present.numel() < 2:
        raise ValueError(
            "y must contain at least 2 distinct classes to fit a classifier, got "
            f"{present.tolist()}"
        )
    index = torch.searchsorted(present, labels)
    n_out = 1 if present.numel() == 2 else present.numel()
    return Targets("labels", index, n_out, classes, present, index)


def parse_soft(y: Tensor, n_train: int, num_classes: int | None) -> Targets:
    """Probabilities: ``(N,)`` of class 1 (binary) or ``(N, C)`` rows on the simplex."""
    probs = y.to(torch.float64)
    _check_length(probs, n_train)
    if not bool(torch.isfinite(probs).all()) or bool(((probs < 0) | (probs > 1)).any()):
        raise ValueError("soft targets must be probabilities in [0, 1] (no NaN)")
    n_classes = 2 if probs.dim() == 1 else probs.shape[1]
    if probs.dim() == 2:
        if n_classes < 2:
            raise ValueError(
                "soft targets of shape (N, 1) are ambiguous: pass (N,) probabilities of class 1"
            )
        error = float((probs.sum(dim=1) - 1).abs().max()) if n_train else 0.0
        if error > SIMPLEX_TOL:
            raise ValueError(
                f"rows of (N, C) soft targets must sum to 1 (largest deviation {error:.2g}); "
                "pass softmax probabilities, or loss='squared' for real-valued targets"
            )
        if n_classes == 2:
            probs = probs[:, 1]
    if num_classes is not None and _check_num_classes(num_classes) != n_classes:
        raise ValueError(
            f"num_classes={num_classes} but the soft targets describe {n_classes} classes"
        )
    classes = torch.arange(n_classes, dtype=torch.int64)
    group = (probs > 0.5).long() if probs.dim() == 1 else probs.argmax(dim=1)
    n_out = 1 if probs.dim() == 1 else n_classes
    return Targets("soft", probs, n_out, classes, classes, group)


def parse_real(y: Any, n_train: int, num_classes: int | None) -> Targets:
    """Real-valued targets (squared loss): ``(N,)`` one logit or ``(N, m)`` logits."""
    values = _as_tensor(y, "y")
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.dim() not in (1, 2) or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(
            f"with loss='squared', y must be real targets of shape (N,) or (N, m), "
            f"got shape {tuple(values.shape)} and dtype {values.dtype}"
        )
    values = values.to(torch.float64)
    _check_length(values, n_train)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("y contains NaN or infinite values")
    n_out = 1 if values.dim() == 1 else values.shape[1]
    n_classes = max(2, n_out)
    if num_classes is not None and _check_num_classes(num_classes) != n_classes:
        raise ValueError(
            f"num_classes={num_classes} but the targets have {n_out} column(s) "
            f"({n_classes} classes)"
        )
    classes = torch.arange(n_classes, dtype=torch.int64)
    group = (values > 0).long() if values.dim() == 1 else values.argmax(dim=1)
    return Targets("real", values, n_out, classes, classes, group)


def parse_targets(y: Any, n_train: int, num_classes: int | None, loss: str) -> Targets:
    r"""Reads ``y`` as labels, soft targets (``loss="log_loss"``) or real targets (squared).

    With the cross-entropy, integer-valued ``(N,)`` targets are class labels; ``(N,)`` floats
    with a non-integer value are probabilities of class 1; ``(N, C)`` are probabilities.
    """
    if loss == "squared":
        return parse_real(y, n_train, num_classes)
    values = _as_tensor(y, "y")
    if values.dim() == 1 and is_integer_valued(values):
        return parse_labels(values, n_train, num_classes)
    if values.dim() in (1, 2) and values.is_floating_point():
        return parse_soft(values, n_train, num_classes)
    raise ValueError(
        "y must be (N,) integer class labels, (N,) probabilities of class 1 or (N, C) class "
        f"probabilities; got shape {tuple(values.shape)} and dtype {values.dtype}"
    )


def _check_length(values: Tensor, n_train: int) -> None:
    if values.shape[0] != n_train:
        raise ValueError(
            f"y has {values.shape[0]} labels but train_kernel has N = {n_train} rows; "
            "they must match"
        )


def _check_num_classes(num_classes: Any) -> int:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    return int(num_classes)
