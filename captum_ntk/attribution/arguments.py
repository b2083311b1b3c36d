r"""Argument checks of the attribution classes: constructor options and method arguments.

Users coming from ``captum.influence.TracInCP`` (and its ``Fast`` / ``RandProj`` variants)
pass arguments that have no meaning for a kernel of the current parameters; they are
refused by name, with the reason and what to do instead.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

#: Options of projected kernels (``ProjTrNTKAttribution``, ``ProjPNTKAttribution``).
PROJECTION_OPTIONS = ("projection_dim", "projection", "seed")
#: Keyword options every attribution class accepts.
COMMON_OPTIONS = ("batch_size", "layers", "device", "dtype", "memory_limit", "eval_mode", "store")

_CHECKPOINT = (
    "an NTK kernel is taken at the model's current parameters, not summed over training "
    "checkpoints: load the checkpoint you want into the model (e.g. "
    "model.load_state_dict(torch.load(path))) and build one attribution object per "
    "checkpoint (add their scores yourself for a TracIn-style sum)"
)
_LOSS = (
    "the kernels use gradients of the logits, not of a loss; labels enter through the kGLM "
    "surrogate (fit_surrogate, attribute, influence(rank_by='attribution'))"
)
_VECTORIZED = "per-example gradients are always computed with torch.func.vmap"

#: TracInCP arguments with no meaning here, and why.
TRACIN_ARGUMENTS: dict[str, str] = {
    "checkpoints": _CHECKPOINT,
    "checkpoints_load_func": _CHECKPOINT,
    "loss_fn": _LOSS,
    "test_loss_fn": _LOSS,
    "sample_wise_grads_per_batch": _VECTORIZED,
    "vectorize": _VECTORIZED,
    "final_fc_layer": (
        "pass layers=['<name of the last Linear>'] to take the kernel over that layer's "
        "parameters, or use ConjugateKernelAttribution for the embedding it reads"
    ),
    "nearest_neighbors": (
        "top-k is an exact streaming search over training blocks (influence(inputs, k=...)); "
        "no approximate index is used"
    ),
}


def feature_map_options() -> tuple[str, ...]:
    """Keyword options of :func:`~captum_ntk.kernels.matrix.build_feature_map` that an
    attribution class passes through (e.g. ``engine``, the projection settings)."""
    from ..kernels.matrix import build_feature_map

    taken = {"model", "kernel", "layers", "device", "dtype", "memory_limit"}
    params = inspect.signature(build_feature_map).parameters
    return tuple(name for name in params if name not in taken)


def check_constructor_arguments(
    cls_name: str, projected: bool, positional: tuple, options: dict[str, Any]
) -> dict[str, Any]:
    r"""Refuses TracInCP arguments, unknown options and projection options of exact kernels.

    Args:
        cls_name (str): the attribution class, for messages.
        projected (bool): whether the class's kernel is projected.
        positional (tuple): positional arguments after ``train_dataset`` (none are valid).
        options (dict): the remaining keyword options.

    Returns:
        dict: the options passed on to the feature map (projection settings of a projected
        kernel, ``engine``, ...).

    Raises:
        TypeError: naming every refused argument with the reason.
    """
    passed_on = feature_map_options()
    problems = []
    if positional:
        problems.append(
            f"{len(positional)} extra positional argument(s) after train_dataset: every "
            "option is a keyword (TracInCP's third positional argument, checkpoints, has no "
            f"meaning here: {_CHECKPOINT})"
        )
    for name in options:
        if name in TRACIN_ARGUMENTS:
            problems.append(f"'{name}' (a TracInCP argument): {TRACIN_ARGUMENTS[name]}")
        elif name in PROJECTION_OPTIONS and not projected:
            problems.append(
                f"'{name}' applies to projected kernels only (ProjTrNTKAttribution, "
                f"ProjPNTKAttribution); {cls_name} computes its kernel exactly"
            )
        elif name not in passed_on:
            problems.append(f"unknown argument '{name}'")
    if problems:
        extra = [o for o in passed_on if projected or o not in PROJECTION_OPTIONS]
        valid = COMMON_OPTIONS + tuple(extra)
        raise TypeError(
            f"{cls_name} got arguments it does not take:\n  - "
            + "\n  - ".join(problems)
            + f"\nValid keyword options of {cls_name}: {', '.join(valid)}."
        )
    return dict(options)


def check_k(k: Any, num_train: int) -> int | None:
    """``k`` as an int in [1, num_train] (or None); TypeError / ValueError otherwise."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int (or None for all scores), got {k!r}.")
    if not 1 <= k <= num_train:
        raise ValueError(
            f"k must lie in [1, {num_train}] (the training set size), got {k}; pass k=None "
            "for the scores of every training example."
        )
    return int(k)


def check_choice(name: str, value: Any, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``, else a ValueError listing them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}.")
    return value


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a TypeError."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return value


def check_labels(labels: Any, n: int, num_classes: int, what: str) -> Tensor:
    r"""Class indices as a (n,) int64 CPU tensor.

    Args:
        labels: a tensor, array or sequence of integer class indices.
        n (int): the number of examples they label.
        num_classes (int): valid labels are 0 .. num_classes - 1.
        what (str): what the labels are, for messages.

    Raises:
        ValueError: wrong shape, non-integer values or labels out of range.
    """
    t = torch.as_tensor(labels).detach().cpu()
    if t.dim() != 1 or t.shape[0] != n:
        hint = " (one-hot or soft labels: pass labels.argmax(1))" if t.dim() == 2 else ""
        raise ValueError(
            f"{what} must be class indices of shape ({n},), got shape {tuple(t.shape)}{hint}."
        )
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{what} must hold integer class indices, got non-integer values.")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{what} must hold integer class indices, got dtype {t.dtype}.")
    t = t.long()
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{what} must lie in [0, {num_classes}) (the kGLM's classes), got values in "
            f"[{int(t.min())}, {int(t.max())}]."
        )
    return t
