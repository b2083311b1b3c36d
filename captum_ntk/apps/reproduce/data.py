r"""The data of a row: the paper's subset of the user's files, cut to ``--n-train`` / ``--n-test``.

Image rows give tensors; the text row gives tokenised mappings (``input_ids``,
``attention_mask``, ...) padded to the longest sentence of each split (at most 64 tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .loaders import ImageSplits, binary_subset, load_cifar10, load_cola, load_idx_dataset
from .rows import RowSpec

__all__ = ["MappingDataset", "RowData", "load_row_data"]

MAX_TOKENS = 64


@dataclass
class RowData:
    r"""Train / test inputs and labels of one row.

    Args:
        x_train: (N, ...) Tensor, or a mapping of (N, L) tensors (text).
        y_train (Tensor): (N,) int64 labels.
        x_test: (M, ...) Tensor or mapping of (M, L) tensors.
        y_test (Tensor): (M,) int64 labels.
        train_texts, test_texts (list of str, optional): sentences of a text row.
    """

    x_train: Any
    y_train: Tensor
    x_test: Any
    y_test: Tensor
    train_texts: list[str] | None = None
    test_texts: list[str] | None = None

    @property
    def is_text(self) -> bool:
        """True for tokenised (mapping) inputs."""
        return isinstance(self.x_train, Mapping)

    def train_dataset(self) -> Dataset:
        """The training set in Captum's batch convention (inputs..., labels) / dicts."""
        if self.is_text:
            return MappingDataset(self.x_train, self.y_train)
        return TensorDataset(self.x_train, self.y_train)


class MappingDataset(Dataset):
    r"""Per-example dicts of a tokenised split, with a ``labels`` key (Hugging Face style)."""

    def __init__(self, inputs: Mapping[str, Tensor], labels: Tensor) -> None:
        self.inputs = dict(inputs)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**{k: v[i] for k, v in self.inputs.items()}, "labels": self.labels[i]}


def _per_class(n: int | None, default: int | None) -> int | None:
    if n is None:
        return default
    if n < 2:
        raise ValueError(f"a two-class row needs at least 2 examples, got {n}.")
    return n // 2 if default is None else min(n // 2, default)


def _first(x: Tensor, y: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
    return (x, y) if n is None else (x[:n], y[:n])


def _images(spec: RowSpec, root: Path, n_train: int | None, n_test: int | None) -> RowData:
    full: ImageSplits = load_cifar10(root) if spec.dataset == "cifar10" else load_idx_dataset(root)
    if spec.classes is not None:
        data = binary_subset(
            full,
            spec.classes,
            _per_class(n_train, spec.train_per_class),
            _per_class(n_test, spec.test_per_class),
        )
        return RowData(data.x_train, data.y_train, data.x_test, data.y_test)
    x_train, y_train = _first(full.x_train, full.y_train, n_train)
    x_test, y_test = _first(full.x_test, full.y_test, n_test)
    return RowData(x_train, y_train, x_test, y_test)


def tokenize(tokenizer: Any, texts: list[str]) -> dict[str, Tensor]:
    r"""Tokenised sentences padded to the longest (at most :data:`MAX_TOKENS` tokens).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts (list of str): sentences.

    Returns:
        dict: (n, L) int64 tensors.
    """
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    )
    return {k: torch.as_tensor(v) for k, v in encoded.items()}


def load_row_data(
    spec: RowSpec,
    root: str | Path,
    n_train: int | None = None,
    n_test: int | None = None,
    tokenizer: Any = None,
) -> RowData:
    r"""Loads a row's data from the user's files.

    Args:
        spec (RowSpec): the row.
        root (str or Path): ``--data-root``.
        n_train (int, optional): training examples (balanced over the two classes of a binary
                row, the first ``n_train`` otherwise). Default: the paper's.
        n_test (int, optional): test examples, likewise.
        tokenizer: the tokenizer of a text row.

    Returns:
        RowData: the splits.
    """
    root = Path(root).expanduser()
    if spec.dataset != "cola":
        return _images(spec, root, n_train, n_test)
    if tokenizer is None:
        raise ValueError("the text row needs the model's tokenizer.")
    splits = load_cola(root)
    train_texts, y_train = splits.train_texts[:n_train], splits.y_train[:n_train]
    test_texts, y_test = splits.test_texts[:n_test], splits.y_test[:n_test]
    return RowData(
        tokenize(tokenizer, train_texts),
        y_train,
        tokenize(tokenizer, test_texts),
        y_test,
        train_texts,
        test_texts,
    )
