r"""The 8x8 handwritten digits of scikit-learn as tensors (offline, ships with scikit-learn).

::

    X_train, y_train, X_test, y_test = load_digits_tensors(test_size=0.3)     # (N, 64), 10 classes
    X_train, y_train, X_test, y_test = load_digits_tensors(classes=(3, 8), image=True)
    # (N, 1, 8, 8); digit 3 -> label 0, digit 8 -> label 1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_digits_tensors"]


def load_digits_tensors(
    *,
    classes: Sequence[int] | None = None,
    train_size: int | float | None = None,
    test_size: int | float | None = 0.25,
    seed: int = 0,
    image: bool = False,
    binary_labels: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Loads ``sklearn.datasets.load_digits`` as a stratified train/test split of tensors.

    Pixels are scaled from 0..16 to [0, 1]. The split is stratified by class and seeded.

    Args:
        classes (sequence of int, optional): digits to keep, e.g. ``(3, 8)`` for a two-class
                subset. Default: None, all ten digits.
        train_size (int or float, optional): training examples (int) or fraction (float),
                as in ``sklearn.model_selection.train_test_split``. Default: None, the
                complement of ``test_size``.
        test_size (int or float, optional): test examples or fraction. Default: 0.25.
        seed (int): seed of the split. Default: 0.
        image (bool): return inputs as (N, 1, 8, 8) images instead of (N, 64) vectors.
                Default: False.
        binary_labels (bool): with ``classes`` given, relabel digit ``classes[k]`` as ``k``
                (0/1 for a two-class subset, as a single-logit model expects); False keeps
                the digit values as labels. Default: True.

    Returns:
        tuple: ``(X_train, y_train, X_test, y_test)``: float32 inputs (N, 64) or
        (N, 1, 8, 8) and int64 labels (N,).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32) / 16.0
    y = data.target.astype(np.int64)
    if classes is not None:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f"classes must hold at least 2 distinct digits, got {classes}.")
        if any(not 0 <= c <= 9 for c in classes):
            raise ValueError(f"classes must be digits 0..9, got {classes}.")
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
        if binary_labels:
            y = _relabel(y, classes)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=train_size, test_size=test_size, random_state=seed, stratify=y
    )
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    return (
        torch.from_numpy(x_train).reshape(shape),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test).reshape(shape),
        torch.from_numpy(y_test),
    )


def _relabel(y: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Maps digit ``classes[k]`` to ``k``."""
    lookup = np.full(10, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    return lookup[y]
