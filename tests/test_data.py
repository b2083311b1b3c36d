"""Batches, Datasets and DataLoaders in Captum's conventions (``captum_ntk.engine.data.batches``)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

from captum_ntk.engine.data.batches import as_loader, collect, pad_concat, split_batch
from captum_ntk.engine.data.inputs import ModelInputs

X = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 0, 1])


def test_split_batch_tensor_is_inputs_only() -> None:
    inputs, labels = split_batch(X)
    assert labels is None
    assert inputs.args[0] is X and not inputs.kwargs


@pytest.mark.parametrize("container", [tuple, list])
def test_split_batch_last_element_is_the_label(container: type) -> None:
    inputs, labels = split_batch(container([X, Z, Y]))
    assert len(inputs.args) == 2 and inputs.args[0] is X and inputs.args[1] is Z
    assert torch.equal(labels, Y)
    inputs, labels = split_batch(container([X]))  # one element: inputs only
    assert labels is None and inputs.args[0] is X


@pytest.mark.parametrize("key", ["labels", "label"])
def test_split_batch_mapping(key: str) -> None:
    inputs, labels = split_batch({"x": X, "z": Z, key: Y})
    assert set(inputs.kwargs) == {"x", "z"} and not inputs.args
    assert torch.equal(labels, Y)
    inputs, labels = split_batch({"x": X})
    assert labels is None and set(inputs.kwargs) == {"x"}


def test_split_batch_labels_are_flattened() -> None:
    _, labels = split_batch((X, Y[:, None].double()))
    assert labels.shape == (5,)


def test_split_batch_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        split_batch(())
    with pytest.raises(TypeError, match="Tensor"):
        split_batch(3.0)
    with pytest.raises(ValueError, match="number of examples"):
        split_batch((X, Z[:4], Y))


def test_collect_dataset_and_loader_agree() -> None:
    ds = TensorDataset(X, Z, Y)
    for data in (ds, DataLoader(ds, batch_size=2), (X, Z, Y)):
        inputs, labels = collect(data, batch_size=3)
        assert torch.equal(inputs.args[0], X) and torch.equal(inputs.args[1], Z)
        assert torch.equal(labels, Y)


def test_collect_iterable_of_batches() -> None:
    inputs, labels = collect(iter([(X[:2], Y[:2]), (X[2:], Y[2:])]), batch_size=2)
    assert torch.equal(inputs.args[0], X) and torch.equal(labels, Y)


def test_collect_without_labels() -> None:
    inputs, labels = collect(TensorDataset(X), batch_size=2)
    assert labels is None and torch.equal(inputs.args[0], X)


def test_collect_mixed_labels_raise() -> None:
    with pytest.raises(ValueError, match="labels"):
        collect(iter([(X[:2], Y[:2]), (X[2:],)]), batch_size=2)


def test_collect_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        collect(iter([]), batch_size=2)


def test_collect_incompatible_batches_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        collect(iter([(X[:2], Y[:2]), (Z[2:], Y[2:])]), batch_size=2)


def test_as_loader() -> None:
    ds = TensorDataset(X, Y)
    loader = as_loader(ds, batch_size=2)
    assert isinstance(loader, DataLoader) and isinstance(loader.sampler, SequentialSampler)
    assert loader.batch_size == 2
    ordered = DataLoader(ds, batch_size=3)
    assert as_loader(ordered, batch_size=2) is ordered
    with pytest.raises(ValueError, match="shuffle"):
        as_loader(DataLoader(ds, shuffle=True), batch_size=2)


def test_pad_concat_pads_token_tensors() -> None:
    def text(ids: torch.Tensor) -> ModelInputs:
        return ModelInputs((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    a = text(torch.ones(2, 3, dtype=torch.long))
    b = text(torch.full((1, 5), 2, dtype=torch.long))
    out = pad_concat([a, b]).kwargs["input_ids"]
    assert out.shape == (3, 5)
    assert torch.equal(out[:2, 3:], torch.zeros(2, 2, dtype=torch.long))
    assert torch.equal(out[2], torch.full((5,), 2, dtype=torch.long))


def test_list_of_examples_is_a_dataset() -> None:
    x = torch.arange(12.0).reshape(6, 2)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    inputs, labels = collect([(x[i], y[i]) for i in range(6)], batch_size=4)
    assert torch.equal(inputs.args[0], x) and torch.equal(labels, y)
    inputs, labels = collect([{"x": x[i], "labels": y[i]} for i in range(6)], batch_size=4)
    assert torch.equal(inputs.kwargs["x"], x) and torch.equal(labels, y)
    # a list of Tensors stays one batch: (inputs..., labels)
    inputs, labels = collect([x, y], batch_size=4)
    assert torch.equal(labels, y) and torch.equal(inputs.args[0], x)
    with pytest.raises(ValueError, match="labels for 6 examples"):
        collect([x, x + 1], batch_size=4)


def test_non_text_integer_batches_are_not_padded() -> None:
    a = ModelInputs((), {"ids": torch.ones(2, 3, dtype=torch.long)})
    b = ModelInputs((), {"ids": torch.ones(1, 5, dtype=torch.long)})
    with pytest.raises(RuntimeError):
        pad_concat([a, b])
