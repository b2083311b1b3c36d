r"""The faithfulness evaluator in the style of ``captum.metrics``: forward function first."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..surrogate import KernelGLM
from ._checks import ArrayLike, _labels
from .agreement import (
    misclassification_coincidence_rate,
    test_accuracy_differential,
)
from .correlation import kendall_tau
from .scores import (
    correct_class_log_probability,
    correct_class_margin,
    tied_pairs,
    tied_pairs_in_either,
)


# --------------------------------------------------------------------------- faithfulness
class _KernelAttribution(Protocol):
    surrogate: KernelGLM | None

    def influence(self, inputs: Any) -> Tensor: ...

    def fit_surrogate(self) -> KernelGLM: ...


def _slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    if isinstance(inputs, Mapping):
        return {k: v[start:stop] if isinstance(v, Tensor) else v for k, v in inputs.items()}
    return tuple(v[start:stop] if isinstance(v, Tensor) else v for v in inputs)


def _first_dim(inputs: Any) -> int:
    values = (
        [inputs]
        if isinstance(inputs, Tensor)
        else (list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs))
    )
    for value in values:
        if isinstance(value, Tensor):
            return value.shape[0]
    raise ValueError("inputs must contain at least one Tensor")


def _forward_logits(forward_func: Callable[..., Any], inputs: Any, batch_size: int) -> Tensor:
    """Network outputs on ``inputs`` in batches, under no_grad, concatenated on the CPU."""
    n = _first_dim(inputs)
    chunks = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = _slice_inputs(inputs, start, min(start + batch_size, n))
            if isinstance(batch, Tensor):
                output = forward_func(batch)
            elif isinstance(batch, Mapping):
                output = forward_func(**batch)
            else:
                output = forward_func(*batch)
            if hasattr(output, "logits"):
                output = output.logits
            if not isinstance(output, Tensor):
                raise TypeError(
                    "forward_func must return a Tensor (or an object with a .logits Tensor), "
                    f"got {type(output).__name__}"
                )
            chunks.append(output.detach().cpu())
    return torch.cat(chunks)


def _with_labels(inputs: Any, labels: Tensor) -> Any:
    """Captum's batch convention: labels appended last (tuples) or under "labels" (mappings)."""
    if isinstance(inputs, Tensor):
        return (inputs, labels)
    if isinstance(inputs, Mapping):
        return {**inputs, "labels": labels}
    return (*inputs, labels)


def _safe_tau(p_nn: Tensor, p_surrogate: Tensor) -> float:
    try:
        return kendall_tau(p_nn, p_surrogate)
    except ValueError as error:
        warnings.warn(
            f"Kendall tau is undefined ({error}); returning nan", RuntimeWarning, stacklevel=3
        )
        return math.nan


def faithfulness(
    forward_func: Callable[..., Any],
    attribution: _KernelAttribution,
    inputs: Tensor | tuple[Any, ...] | Mapping[str, Any],
    labels: ArrayLike,
    *,
    surrogate: KernelGLM | None = None,
    test_kernel: ArrayLike | None = None,
    batch_size: int = 256,
    return_per_example: bool = False,
) -> dict[str, Any]:
    r"""Faithfulness of a kernel surrogate (kGLM) to the network (Engel et al., Appendix G).

    Computes, on the test examples ``inputs`` with true ``labels``:

    - ``"tau"``: Kendall tau-b between the network's and the kGLM's log-probability of the correct
      class (:func:`kendall_tau`; ``nan`` with a warning if either is constant). Both are computed
      in float64 from logits (``log_softmax``, ``logsigmoid`` for one logit), so a confident
      network whose probabilities round to 1.0 does not produce ties; Kendall tau is invariant
      to the monotone map from probability to log-probability, so this is the paper's tau_K
      without rounding,
    - ``"tau_margin"``: Kendall tau-b of the correct-class margins (the correct logit minus the
      largest other logit; ``+-s`` for one logit),
    - ``"ties"``: the number of test pairs tied in either model's log-probabilities (pairs tau
      cannot order), with ``"ties_nn"`` / ``"ties_surrogate"`` the pairs tied in each,
    - ``"tad"``: test accuracy differential ``acc_surrogate - acc_nn``,
    - ``"r_miss"``: misclassification coincidence rate (Eq. 21; ``nan`` if neither model errs),
    - ``"acc_nn"``, ``"acc_surrogate"``: the two test accuracies,

    all as Python floats (ints for the ties). The network's scores come from
    ``forward_func(inputs)``: ``(n, C)`` logits with a softmax, or one logit of shape ``(n,)`` /
    ``(n, 1)`` with a sigmoid (labels must then be 0/1; the prediction is ``logit > 0``). The
    kGLM's come from ``surrogate.decision_function`` / ``predict_log_proba`` on the float64
    test kernel.

    ``forward_func`` is evaluated as given, in batches of ``batch_size`` under
    ``torch.no_grad()``: put a model in eval mode first. Tensors in ``inputs`` are sliced
    along dim 0; ``forward_func(x)`` for a Tensor, ``forward_func(*inputs)`` for a tuple,
    ``forward_func(**inputs)`` for a mapping. An output with a ``.logits`` attribute (Hugging
    Face) is replaced by it.

    Args:
        forward_func (Callable): The network's forward function, returning ``(n, C)`` logits
                    or ``(n,)`` / ``(n, 1)`` for a one-logit model.
        attribution: A fitted kernel attribution object (e.g. ``TrNTKAttribution``) exposing
                    ``influence(batch)`` -> ``(n_test, n_train)`` kernel, ``fit_surrogate()`` ->
                    :class:`~captum_ntk.surrogate.KernelGLM` and ``surrogate`` (the cached kGLM,
                    or None). ``influence`` receives the test batch in Captum's convention:
                    ``(*inputs, labels)`` (a Tensor ``x`` gives ``(x, labels)``), or
                    ``{**inputs, "labels": labels}`` for a mapping.
        inputs (Tensor or tuple or Mapping): ``n`` test examples.
        labels (Tensor or ndarray): ``(n,)`` true integer labels.
        surrogate (KernelGLM, optional): kGLM to evaluate. Default: ``attribution.surrogate`` if
                    already fitted, else ``attribution.fit_surrogate()``.
        test_kernel (Tensor or ndarray, optional): precomputed ``(n, n_train)`` test-by-train
                    kernel; skips ``attribution.influence``.
        batch_size (int, optional): Batch size of the network's forward passes. Default: 256
        return_per_example (bool, optional): Also return the ``(n,)`` CPU tensors ``"p_nn"``,
                    ``"p_surrogate"`` (correct-class probabilities), ``"log_p_nn"``,
                    ``"log_p_surrogate"``, ``"margin_nn"``, ``"margin_surrogate"`` (float64),
                    ``"pred_nn"`` and ``"pred_surrogate"`` (predicted labels). Default: False

    Returns:
        metrics (dict): ``{"tau", "tau_margin", "tad", "r_miss", "acc_nn", "acc_surrogate"}``
                    floats and ``{"ties", "ties_nn", "ties_surrogate"}`` ints, plus the
                    per-example tensors when ``return_per_example``.

    Examples::

        >>> attr = TrNTKAttribution(model, train_dataset)
        >>> faithfulness(model, attr, test_x, test_y)
        {'tau': 0.81, 'tau_margin': 0.8, 'ties': 0, 'ties_nn': 0, 'ties_surrogate': 0,
         'tad': -0.01, 'r_miss': 0.62, 'acc_nn': 0.93, 'acc_surrogate': 0.92}
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    truth = _labels(labels, "labels")
    n = truth.shape[0]
    if _first_dim(inputs) != n:
        raise ValueError(f"inputs hold {_first_dim(inputs)} examples but labels has {n}")

    if surrogate is None:
        surrogate = getattr(attribution, "surrogate", None)
    if surrogate is None:
        surrogate = attribution.fit_surrogate()
    if not hasattr(surrogate, "classes_"):
        raise ValueError("the surrogate is not fitted; call fit (or attribution.fit_surrogate())")

    # --- network: scores from float64 logits (no ties from probabilities rounded to 1.0)
    logits = _forward_logits(forward_func, inputs, batch_size)
    if logits.shape[0] != n:
        raise ValueError(f"forward_func returned {logits.shape[0]} rows for {n} inputs")
    logits = logits.double()
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        logits = logits.reshape(n)
        if bool(((truth != 0) & (truth != 1)).any()):
            raise ValueError("a one-logit network needs labels in {0, 1}")
        pred_nn = (logits > 0).long()
        n_nn_classes = 2
    elif logits.dim() == 2:
        pred_nn = logits.argmax(dim=1)
        n_nn_classes = logits.shape[1]
    else:
        raise ValueError(
            f"forward_func must return (n, C), (n, 1) or (n,) logits, got {tuple(logits.shape)}"
        )
    log_p_nn = correct_class_log_probability(logits, truth)
    margin_nn = correct_class_margin(logits, truth)

    # --- surrogate
    kernel = _test_kernel(attribution, inputs, truth, test_kernel, n)
    column = _surrogate_columns(surrogate, truth, n_nn_classes)
    surrogate_logits = surrogate.decision_function(kernel).detach().cpu().double()
    log_p_surrogate = _log_proba(surrogate, kernel).gather(1, column[:, None])[:, 0]
    margin_surrogate = correct_class_margin(surrogate_logits, column)
    pred_surrogate = surrogate.predict(kernel).detach().cpu()

    result: dict[str, Any] = {
        "tau": _safe_tau(log_p_nn, log_p_surrogate),
        "tau_margin": _safe_tau(margin_nn, margin_surrogate),
        "ties": tied_pairs_in_either(log_p_nn, log_p_surrogate),
        "ties_nn": tied_pairs(log_p_nn),
        "ties_surrogate": tied_pairs(log_p_surrogate),
        "tad": test_accuracy_differential(pred_surrogate, pred_nn, truth),
        "r_miss": misclassification_coincidence_rate(pred_nn, pred_surrogate, truth),
        "acc_nn": float((pred_nn == truth).double().mean()),
        "acc_surrogate": float((pred_surrogate == truth).double().mean()),
    }
    if return_per_example:
        result.update(
            p_nn=log_p_nn.exp(),
            p_surrogate=log_p_surrogate.exp(),
            log_p_nn=log_p_nn,
            log_p_surrogate=log_p_surrogate,
            margin_nn=margin_nn,
            margin_surrogate=margin_surrogate,
            pred_nn=pred_nn,
            pred_surrogate=pred_surrogate,
        )
    return result


def _test_kernel(
    attribution: _KernelAttribution,
    inputs: Any,
    truth: Tensor,
    test_kernel: ArrayLike | None,
    n: int,
) -> Tensor:
    """The (n, n_train) float64 test kernel, computed by ``attribution`` unless given."""
    if test_kernel is None:
        test_kernel = attribution.influence(_with_labels(inputs, truth))
    kernel = (
        test_kernel if isinstance(test_kernel, Tensor) else torch.as_tensor(np.asarray(test_kernel))
    )
    if kernel.dim() != 2 or kernel.shape[0] != n:
        raise ValueError(
            f"the test kernel must have shape ({n}, n_train), got {tuple(kernel.shape)}"
        )
    return kernel.detach().to(torch.float64)


def _surrogate_columns(surrogate: KernelGLM, truth: Tensor, n_nn_classes: int) -> Tensor:
    """Column of each label among the surrogate's classes (checked against the network)."""
    classes = surrogate.classes_.cpu()
    if classes.numel() != n_nn_classes:
        raise ValueError(
            f"the surrogate has {classes.numel()} classes but the network has {n_nn_classes} "
            "(2 for a one-logit network)"
        )
    column = torch.searchsorted(classes, truth).clamp(max=classes.numel() - 1)
    known = classes[column] == truth
    if not bool(known.all()):
        missing = sorted(set(truth[~known].tolist()))
        raise ValueError(
            f"labels {missing} are not among the surrogate's classes {classes.tolist()}"
        )
    return column


def _log_proba(surrogate: KernelGLM, kernel: Tensor) -> Tensor:
    """(n, C) float64 log-probabilities (``predict_log_proba`` when the surrogate has one)."""
    if hasattr(surrogate, "predict_log_proba"):
        return surrogate.predict_log_proba(kernel).detach().cpu().double()
    return surrogate.predict_proba(kernel).detach().cpu().double().log()
