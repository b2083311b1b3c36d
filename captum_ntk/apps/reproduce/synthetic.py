r"""Synthetic files in the real distributed formats, for tests and benchmarks (not for results).

Images of class c are a class-specific smooth pattern plus uniform noise, so networks can
learn them; the bytes follow the IDX, CIFAR-10 pickle and GLUE CoLA formats exactly::

    write_idx_dataset(tmp / "MNIST" / "raw", n_train=300, n_test=100, gz=True)
    write_cifar10(tmp / "cifar-10-batches-py", n_train=500, n_test=100)
    write_cola(tmp / "CoLA", n_train=64, n_test=32)
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_cifar10", "write_cola", "write_idx", "write_idx_dataset"]

_IDX_CODES = {np.dtype(np.uint8): 0x08}


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    r"""Writes a uint8 array as an IDX file (``path`` + ``.gz`` when ``gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path = Path(str(path) + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
    return path


def _images(labels: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    channels, height, width = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    out = np.empty((len(labels), channels, height, width), dtype=np.uint8)
    for i, c in enumerate(labels):
        pattern = 0.5 + 0.5 * np.sin((c + 1) * 1.7 * xx + c * 0.9 * yy + c)
        noise = rng.uniform(0.5, 1, (channels, height, width))
        lit = np.clip((pattern - 0.7) / 0.3, 0, 1) * (rng.uniform(0, 1, pattern.shape) > 0.2)
        out[i] = np.clip(255 * lit * noise, 0, 255).astype(np.uint8)  # dark background
    return out


def write_idx_dataset(
    folder: Path, n_train: int, n_test: int, *, gz: bool = False, seed: int = 0
) -> Path:
    r"""MNIST-layout files (28x28, 10 classes) in ``folder``; returns ``folder``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(
            folder / f"{split}-images-idx3-ubyte", _images(labels, (1, 28, 28), rng)[:, 0], gz=gz
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz=gz)
    return folder


def write_cifar10(folder: Path, n_train: int, n_test: int, *, seed: int = 0) -> Path:
    r"""``data_batch_1..5`` and ``test_batch`` pickles (3x32x32, 10 classes) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for name, n in [
        *((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)),
        ("test_batch", n_test),
    ]:
        labels = rng.integers(0, 10, n)
        data = _images(labels, (3, 32, 32), rng).reshape(n, 3072)
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return folder


_WORDS = ("the", "cat", "dog", "sat", "on", "mat", "ran", "quickly", "a", "big", "red", "ball")


def write_cola(folder: Path, n_train: int, n_test: int, *, seed: int = 0) -> Path:
    r"""GLUE CoLA ``train.tsv`` / ``dev.tsv`` (no header, 4 columns, quotes left raw)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_test)):
        lines = []
        for _ in range(n):
            label = int(rng.integers(0, 2))
            words = list(rng.choice(_WORDS, size=int(rng.integers(3, 9))))
            sentence = " ".join(words if label else words[::-1]) + (' "quoted"' if label else ".")
            lines.append(f"gj04\t{label}\t{'' if label else '*'}\t{sentence}")
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
