r"""Input conversion and checks shared by the metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


# --------------------------------------------------------------------------- conversions
def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _to_tensor(values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().cpu()
    return torch.as_tensor(np.asarray(values))


def _vector(values: Any, name: str) -> np.ndarray:
    """A 1-D float64 numpy copy of ``values`` ((n,) or (n, 1))."""
    array = _to_numpy(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (n,), got shape {array.shape}")
    return array.astype(np.float64)


def _paired(
    a: Any, b: Any, name_a: str, name_b: str, min_length: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    x = _vector(a, name_a)
    y = _vector(b, name_b)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < min_length:
        raise ValueError(f"need at least {min_length} values, got {x.shape[0]}")
    for values, name in ((x, name_a), (y, name_b)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return x, y


def _check_not_constant(x: np.ndarray, y: np.ndarray, name_x: str, name_y: str, what: str) -> None:
    for values, name in ((x, name_x), (y, name_y)):
        if np.all(values == values[0]):
            raise ValueError(
                f"{name} is constant; the {what} correlation is undefined (it would be NaN)"
            )


def _labels(values: Any, name: str) -> Tensor:
    """Class labels as a 1-D int64 CPU tensor; (n, C) scores are reduced with argmax."""
    tensor = _to_tensor(values)
    if tensor.dim() == 2:
        tensor = tensor.argmax(dim=1)
    if tensor.dim() != 1:
        raise ValueError(
            f"{name} must be (n,) class labels or (n, C) scores, got {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point() and not bool((tensor == tensor.round()).all()):
        raise ValueError(f"{name} must hold integer class labels")
    return tensor.to(torch.int64)


def _same_length(*named: tuple[Tensor, str]) -> int:
    lengths = {name: tensor.shape[0] for tensor, name in named}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("inputs are empty")
    return n
