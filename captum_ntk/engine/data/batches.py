"""Datasets, DataLoaders and batches in Captum's conventions.

A batch is

* a tuple/list whose last element is the label tensor (Captum: ``model(*batch[:-1])``);
  a one-element tuple holds inputs only;
* a Mapping (Hugging Face): ``labels`` (or ``label``) is the label, the rest are keyword
  inputs (``model(**rest)``);
* a bare Tensor: inputs without labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from .inputs import LABEL_KEYS, ModelInputs


def split_batch(batch: Any, name: str = "batch") -> tuple[ModelInputs, Tensor | None]:
    r"""Separates a batch into model inputs and labels.

    Returns:
        (ModelInputs, Tensor or None): the inputs and the (B,) labels, if any.
    """
    if isinstance(batch, Tensor):
        return ModelInputs.from_user(batch, name), None
    if isinstance(batch, Mapping):
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        inputs = ModelInputs.from_user(
            {k: v for k, v in batch.items() if k not in LABEL_KEYS}, name
        )
        return inputs, _check_labels(_as_label_tensor(labels), inputs, name)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError(f"{name} is an empty tuple.")
        if len(batch) == 1:
            return ModelInputs.from_user(tuple(batch), name), None
        inputs = ModelInputs.from_user(tuple(batch[:-1]), name)
        return inputs, _check_labels(_as_label_tensor(batch[-1]), inputs, name)
    raise TypeError(
        f"{name} must be a Tensor, a tuple (inputs..., labels) or a Mapping with keyword inputs "
        f"and 'labels'; got {type(batch).__name__}."
    )


def _check_labels(labels: Tensor | None, inputs: ModelInputs, name: str) -> Tensor | None:
    if labels is not None and labels.shape[0] != inputs.num_examples:
        raise ValueError(
            f"{name}: {labels.shape[0]} labels for {inputs.num_examples} examples. A tuple batch "
            "is (inputs..., labels) (Captum's convention); pass a Tensor or (x,) for inputs "
            "without labels."
        )
    return labels


def _as_label_tensor(labels: Any) -> Tensor | None:
    if labels is None:
        return None
    return torch.as_tensor(labels).reshape(-1)


def as_loader(data: Dataset | DataLoader | Iterable, batch_size: int) -> Iterable:
    """A DataLoader over ``data`` in a fixed order (a DataLoader is used as is)."""
    if isinstance(data, DataLoader):
        sampler = (
            data.sampler
            if data.batch_sampler is None
            else getattr(data.batch_sampler, "sampler", None)
        )
        # an IterableDataset has no sampler to shuffle: it yields in its own order (a
        # StreamingSource checks that the order is the same on every pass)
        iterable = isinstance(data.dataset, IterableDataset)
        if not iterable and not isinstance(sampler, SequentialSampler):
            raise ValueError(
                "The DataLoader does not iterate its dataset in order (shuffle=True or a custom "
                f"sampler: {type(sampler).__name__}), so example indices would change "
                "between passes; build it with shuffle=False and no sampler."
            )
        if data.drop_last:
            raise ValueError(
                "The DataLoader has drop_last=True, which silently drops training examples; "
                "build it with drop_last=False."
            )
        if data.num_workers > 0 and not getattr(data, "in_order", True):
            raise ValueError(
                "The DataLoader has in_order=False, so its batches come in a different order "
                "on every pass; build it with in_order=True (the default)."
            )
        return data
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def pad_concat(parts: list[ModelInputs]) -> ModelInputs:
    r"""Concatenates batches; in text batches (with an ``attention_mask``) keyword (N, T)
    integer tensors are right-padded with 0 to the longest T (masked, and trimmed again per
    block before a transformers model sees it)."""
    if len(parts) == 1:
        return parts[0]
    kwargs = {}
    text = "attention_mask" in parts[0].kwargs
    for key in parts[0].kwargs:
        tensors = [p.kwargs[key] for p in parts]
        if text and tensors[0].dim() == 2 and not tensors[0].is_floating_point():
            length = max(t.shape[1] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, length - t.shape[1])) for t in tensors]
        kwargs[key] = torch.cat(tensors)
    args = tuple(torch.cat([p.args[i] for p in parts]) for i in range(len(parts[0].args)))
    return ModelInputs(args, kwargs)


def collect(
    data: Any, batch_size: int, name: str = "train_dataset"
) -> tuple[ModelInputs, Tensor | None]:
    r"""Reads a whole Dataset / DataLoader / batch into memory (inputs, not gradients).

    Args:
        data: a Dataset, a DataLoader, a list of examples (tuples or dicts), an iterable
                of batches, or a single batch (Tensor, tuple, list of Tensors or Mapping).
        batch_size (int): DataLoader batch size for a Dataset.
        name (str): name for error messages.

    Returns:
        (ModelInputs, Tensor or None): all N inputs and the (N,) labels (None if the
        batches carry none).
    """
    if isinstance(data, list) and data and isinstance(data[0], (tuple, list, Mapping)):
        # a list of examples, e.g. [(x_i, y_i), ...] or [{"input_ids": ..., "labels": ...}, ...],
        # is a map-style dataset (as in Captum)
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    elif isinstance(data, (Tensor, tuple, list, Mapping)):
        return split_batch(data, name)
    inputs, labels = [], []
    for i, batch in enumerate(as_loader(data, batch_size)):
        x, y = split_batch(batch, f"{name} batch {i}")
        if i > 0:
            inputs[0].check_compatible(x, (f"{name} batch 0", f"{name} batch {i}"))
        inputs.append(x)
        labels.append(y)
    if not inputs:
        raise ValueError(f"{name} is empty; pass at least one example.")
    has = [y is not None for y in labels]
    if any(has) and not all(has):
        raise ValueError(f"Some batches of {name} carry labels and some do not.")
    return pad_concat(inputs), (torch.cat(labels) if all(has) else None)
