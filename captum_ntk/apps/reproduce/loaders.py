r"""Readers for the data files users already have, in their distributed formats (no downloads).

* MNIST / Fashion-MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, plain or ``.gz``, directly in the
  folder or in a ``raw/`` subfolder (torchvision's ``MNIST/raw`` layout),
* CIFAR-10: the python pickles of ``cifar-10-batches-py`` (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``), in the folder or in a ``cifar-10-batches-py/`` subfolder,
* CoLA (GLUE): ``train.tsv`` / ``dev.tsv`` without header, quoting off, columns
  source, label, original label, sentence (in the folder or a ``CoLA/`` subfolder).

Binary subsets follow the authors' released code (github.com/pnnl/projection_ntk,
``scripts/smallmodeltrain``): classes 0 and 1 of each data set (MNIST2: digits 0 vs 1,
CIFAR2: airplane vs automobile, FMNIST2: T-shirt/top vs trouser), the first 5000 training
images of each class and the first 980 (MNIST) or 1000 (CIFAR-10, Fashion-MNIST) test images
of each class, pixels scaled to [0, 1]::

    x_train, y_train, x_test, y_test = load_idx_dataset("~/data/MNIST")
    data = binary_subset(x_train, y_train, x_test, y_test, (0, 1), 5000, 980)
"""

from __future__ import annotations

import csv
import gzip
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIFAR10_CLASSES",
    "FMNIST_CLASSES",
    "ImageSplits",
    "TextSplits",
    "binary_subset",
    "find_file",
    "load_cifar10",
    "load_cola",
    "load_idx_dataset",
    "read_idx",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FMNIST_CLASSES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSplits:
    r"""Train and test images with integer labels.

    Args:
        x_train (Tensor): (N, C, H, W) float32 pixels in [0, 1].
        y_train (Tensor): (N,) int64 labels.
        x_test (Tensor): (M, C, H, W) float32 pixels in [0, 1].
        y_test (Tensor): (M,) int64 labels.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


@dataclass
class TextSplits:
    r"""Train and test sentences with integer labels (CoLA: 1 = acceptable)."""

    train_texts: list[str]
    y_train: Tensor
    test_texts: list[str]
    y_test: Tensor


def find_file(root: str | Path, names: Sequence[str], subfolders: Sequence[str] = ("",)) -> Path:
    r"""The first of ``root/sub/name`` that exists, or a FileNotFoundError naming them.

    Args:
        root (str or Path): the folder the user gave (``--data-root``).
        names (sequence of str): accepted file names, in order of preference.
        subfolders (sequence of str): subfolders of ``root`` searched, ``""`` for root itself.

    Returns:
        Path: the file found.

    Raises:
        FileNotFoundError: when ``root`` is not a folder or none of the files exists.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data-root {str(root)!r} is not a directory; point it at the folder that holds "
            f"{names[0]!r}."
        )
    searched = [root / sub if sub else root for sub in subfolders]
    for folder in searched:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"expected the file {names[0]!r} (or {', '.join(repr(n) for n in names[1:])}) in "
        f"{', '.join(str(f) for f in searched)}; none found. Point --data-root at the folder "
        "holding the distributed files (nothing is downloaded)."
    )


def read_idx(path: str | Path) -> np.ndarray:
    r"""Reads an IDX file (the MNIST format), plain or gzip-compressed.

    Args:
        path (str or Path): the file.

    Returns:
        ndarray: the array with the file's dimensions and dtype.

    Raises:
        ValueError: when the file is not a valid IDX file (bad magic number or size).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes) but the file has "
            f"{len(raw)} bytes; is it truncated?"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _idx(root: Path, stem: str) -> np.ndarray:
    return read_idx(find_file(root, (stem, stem + ".gz"), ("", "raw")))


def load_idx_dataset(root: str | Path) -> ImageSplits:
    r"""MNIST or Fashion-MNIST from its four IDX files (plain or ``.gz``; ``root`` or ``root/raw``).

    Args:
        root (str or Path): the folder holding ``train-images-idx3-ubyte`` etc.

    Returns:
        ImageSplits: (60000, 1, 28, 28) / (10000, 1, 28, 28) pixels in [0, 1] for the real files.
    """
    root = Path(root).expanduser()
    arrays = [
        _idx(root, name)
        for name in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    ]
    x_train, y_train, x_test, y_test = arrays
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{split} images {x.shape} and labels {y.shape} do not match in {root}."
            )
    return ImageSplits(
        _images(x_train[:, None]), _labels(y_train), _images(x_test[:, None]), _labels(y_test)
    )


def _images(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / 255.0)


def _labels(y: np.ndarray | Sequence[int]) -> Tensor:
    return torch.as_tensor(np.asarray(y, dtype=np.int64))


def _unpickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no 'data' / 'labels').")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected (n, 3072) data and n labels, got {data.shape}.")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels)


def load_cifar10(root: str | Path) -> ImageSplits:
    r"""CIFAR-10 from the python pickles (``data_batch_1`` .. ``_5``, ``test_batch``).

    Args:
        root (str or Path): ``cifar-10-batches-py`` itself or the folder containing it.

    Returns:
        ImageSplits: (50000, 3, 32, 32) / (10000, 3, 32, 32) pixels in [0, 1] for the real files.
    """
    subs = ("", "cifar-10-batches-py")
    parts = [_unpickle(find_file(root, (f"data_batch_{i}",), subs)) for i in range(1, 6)]
    x_test, y_test = _unpickle(find_file(root, ("test_batch",), subs))
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return ImageSplits(_images(x_train), _labels(y_train), _images(x_test), _labels(y_test))


def _read_cola(path: Path) -> tuple[list[str], Tensor]:
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(
            csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1
        ):
            if not row:
                continue
            if len(row) != 4 or row[1] not in ("0", "1"):
                raise ValueError(
                    f"{path}, line {line_no}: expected 4 tab-separated columns (source, label 0/1, "
                    f"original label, sentence) as in GLUE's CoLA, got {row[:4]!r}."
                )
            labels.append(int(row[1]))
            texts.append(row[3])
    if not texts:
        raise ValueError(f"{path} holds no sentences.")
    return texts, torch.tensor(labels, dtype=torch.long)


def load_cola(root: str | Path) -> TextSplits:
    r"""CoLA's ``train.tsv`` and ``dev.tsv`` (GLUE layout; the labelled dev set is the test set).

    Args:
        root (str or Path): the folder holding the two files (or its ``CoLA/`` subfolder).

    Returns:
        TextSplits: 8551 training and 1043 dev sentences for the real files.
    """
    subs = ("", "CoLA")
    train_texts, y_train = _read_cola(find_file(root, ("train.tsv",), subs))
    test_texts, y_test = _read_cola(find_file(root, ("dev.tsv",), subs))
    return TextSplits(train_texts, y_train, test_texts, y_test)


def _take(
    x: Tensor, y: Tensor, classes: Sequence[int], per_class: int | None
) -> tuple[Tensor, Tensor]:
    chosen = []
    for new_label, cls in enumerate(classes):
        index = torch.nonzero(y == cls).flatten()
        if per_class is not None:
            index = index[:per_class]
        if len(index) == 0:
            raise ValueError(f"the data hold no example of class {cls}.")
        chosen.append((index, new_label))
    x_out = torch.cat([x[index] for index, _ in chosen])
    y_out = torch.cat([torch.full((len(index),), lab, dtype=torch.long) for index, lab in chosen])
    return x_out, y_out


def binary_subset(
    data: ImageSplits,
    classes: tuple[int, int],
    train_per_class: int | None,
    test_per_class: int | None,
) -> ImageSplits:
    r"""The paper's two-class subset: the first examples of each class, relabelled 0 / 1.

    Args:
        data (ImageSplits): the full data set.
        classes (tuple of int): the original labels that become 0 and 1.
        train_per_class (int, optional): training examples per class (None: all).
        test_per_class (int, optional): test examples per class (None: all).

    Returns:
        ImageSplits: class ``classes[0]`` first, then ``classes[1]``, labels 0 and 1.
    """
    x_train, y_train = _take(data.x_train, data.y_train, classes, train_per_class)
    x_test, y_test = _take(data.x_test, data.y_test, classes, test_per_class)
    return ImageSplits(x_train, y_train, x_test, y_test)
