"""Loaders of the reproduce subcommand, exercised on tiny files written in each real format."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from captum_ntk.apps.reproduce.loaders import (
    binary_subset,
    load_cifar10,
    load_cola,
    load_idx_dataset,
    read_idx,
)
from captum_ntk.apps.reproduce.synthetic import write_cifar10, write_cola, write_idx


def _write_mnist(folder, gz, rng):
    x_train = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y_train = np.array([0, 1, 2, 1, 0, 1, 9], dtype=np.uint8)
    x_test = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    y_test = np.array([1, 0, 5], dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte", x_train, gz=gz)
    write_idx(folder / "train-labels-idx1-ubyte", y_train, gz=gz)
    write_idx(folder / "t10k-images-idx3-ubyte", x_test, gz=gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", y_test, gz=gz)
    return x_train, y_train, x_test, y_test


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sub", ["", "raw"])
def test_idx_plain_gz_and_raw_subfolder(tmp_path, gz, sub):
    x_train, y_train, x_test, y_test = _write_mnist(tmp_path / sub, gz, np.random.default_rng(0))
    data = load_idx_dataset(tmp_path)
    assert data.x_train.shape == (7, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    assert torch.equal(data.y_train, torch.as_tensor(y_train, dtype=torch.long))
    assert torch.equal(data.y_test, torch.as_tensor(y_test, dtype=torch.long))
    expected = torch.as_tensor(x_train[4], dtype=torch.float32) / 255.0
    assert torch.equal(data.x_train[4, 0], expected)


def test_idx_header_is_big_endian(tmp_path):
    # a hand-written header: magic 0x00000803, dims 2 x 3 x 1 (big-endian)
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    raw += (1).to_bytes(4, "big") + bytes(range(6))
    (tmp_path / "f").write_bytes(raw)
    assert read_idx(tmp_path / "f").tolist() == [[[0], [1], [2]], [[3], [4], [5]]]
    with gzip.open(tmp_path / "f.gz", "wb") as handle:
        handle.write(raw[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "f.gz")


def test_idx_errors_name_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_idx_dataset(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as info:
        load_idx_dataset(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)
    assert str(tmp_path / "raw") in str(info.value)


def test_cifar_pickles(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", n_train=12, n_test=4)
    for root in (tmp_path, folder):
        data = load_cifar10(root)
        assert data.x_train.shape == (12, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    with open(folder / "data_batch_2", "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    first = torch.as_tensor(batch[b"data"][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    assert torch.equal(data.x_train[3], first)  # batch 1 holds 3 of the 12 images
    assert data.y_train[3] == batch[b"labels"][0]
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path)


def test_cola_tsv_quoting_off(tmp_path):
    folder = tmp_path / "CoLA"
    folder.mkdir()
    (folder / "train.tsv").write_text('gj04\t1\t\tHe said "hi.\nclc95\t0\t*\tThe the cat.\n')
    (folder / "dev.tsv").write_text("gj04\t1\t\tOK then.\n")
    data = load_cola(tmp_path)
    assert data.train_texts == ['He said "hi.', "The the cat."]
    assert data.y_train.tolist() == [1, 0] and data.test_texts == ["OK then."]
    (folder / "dev.tsv").write_text("gj04\tyes\t\tbad label\n")
    with pytest.raises(ValueError, match="dev.tsv, line 1"):
        load_cola(folder)
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        load_cola(tmp_path / "CoLA" / "nested")


def test_cola_writer_round_trip(tmp_path):
    write_cola(tmp_path, n_train=10, n_test=5)
    data = load_cola(tmp_path)
    assert len(data.train_texts) == 10 and len(data.test_texts) == 5


def test_binary_subset_first_examples_per_class(tmp_path):
    _write_mnist(tmp_path, False, np.random.default_rng(1))
    data = load_idx_dataset(tmp_path)
    sub = binary_subset(data, (0, 1), train_per_class=2, test_per_class=None)
    # training labels [0, 1, 2, 1, 0, 1, 9]: zeros at 0, 4; ones at 1, 3 (first two)
    assert sub.y_train.tolist() == [0, 0, 1, 1]
    assert torch.equal(sub.x_train, data.x_train[[0, 4, 1, 3]])
    assert sub.y_test.tolist() == [0, 1] and torch.equal(sub.x_test, data.x_test[[1, 0]])
    with pytest.raises(ValueError, match="class 7"):
        binary_subset(data, (7, 1), None, None)
