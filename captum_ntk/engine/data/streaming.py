r"""Reading a dataset block by block, never whole.

:class:`StreamingSource` wraps whatever the library accepts as training data (a map-style
``Dataset``, a ``DataLoader`` that iterates in order, a list of examples, an in-memory batch) and
yields fixed blocks of ``block_size`` examples as ``(start, ModelInputs, labels)``. Only one
block (plus at most one loader batch) is held at a time, so memory is bounded by the block
whatever N is. Text batches (with an ``attention_mask``) are padded per block to the longest
example of that block, not of the dataset.

A :class:`StreamingSource` given the :func:`~captum_ntk.engine.data.digests.example_digests` of a
first pass (``digests``) checks every block it reads again against them, whatever the block
size: a dataset that returns other data on a second read (random transforms, a shuffling
``IterableDataset``) is refused with an error instead of pairing labels with other examples'
features. Block and example digests live in :mod:`captum_ntk.engine.data.digests` (re-exported).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from .batches import as_loader, pad_concat, split_batch
from .digests import block_digest, data_fingerprint, example_digests
from .inputs import ModelInputs
from .tokens import cut_per_token, token_mask, used_length

__all__ = [
    "StreamedInputs",
    "StreamingSource",
    "block_digest",
    "data_fingerprint",
    "example_digests",
    "is_streamable",
    "trim_padding",
]


def trim_padding(inputs: ModelInputs) -> ModelInputs:
    r"""Cuts the token tensors of a text block to the block's longest unpadded example.

    Args:
        inputs (ModelInputs): a block; unchanged unless it has a 2-D ``attention_mask``.

    Returns:
        ModelInputs: the block with (B, T) integer keyword tensors cut to (B, T_block).
    """
    mask = token_mask(inputs.kwargs)
    if mask is None or mask.shape[1] == 0:
        return inputs
    return ModelInputs(inputs.args, cut_per_token(inputs.kwargs, mask, used_length(mask)))


class StreamingSource:
    r"""Fixed blocks of a dataset, read lazily in order.

    Args:
        data: a map-style ``Dataset``, a ``DataLoader`` iterating in order (no shuffling, no
                ``drop_last``), a list of examples (tuples or dicts), an iterable of batches,
                or one in-memory batch (Tensor, tuple ``(inputs..., labels)``, Mapping,
                :class:`ModelInputs`). Batches follow Captum's convention (see
                :mod:`captum_ntk.engine.data.batches`).
        block_size (int): examples per block (the last block may be shorter).
        name (str): what the data is called in error messages.
        num_examples (int, optional): N when already known (skips the counting pass of an
                iterable without ``len``). Default: None (counted).
        digests (Tensor, optional): (N,) :func:`example_digests` of a first pass over the
                data; every block read is checked against them. Default: None (unchecked;
                taken from ``data`` when it is a :class:`StreamedInputs`).

    Attributes:
        num_examples (int): N (``len(source)``). For a generic iterable of batches (no
                ``len``) one counting pass reads the data once.
        digests (Tensor or None): the (N,) example digests blocks are checked against.
    """

    def __init__(
        self,
        data: Any,
        block_size: int,
        name: str = "train_dataset",
        num_examples: int | None = None,
        digests: Tensor | None = None,
    ) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
        self.name = name
        self.block_size = block_size
        self.digests = digests
        self._batch: tuple[ModelInputs, Tensor | None] | None = None
        if isinstance(data, StreamedInputs):  # the same data, in blocks of block_size
            if digests is None:
                self.digests = data.source.digests
            data, num_examples = data.source.data, data.num_examples
        if isinstance(data, list) and data and isinstance(data[0], (tuple, list, Mapping)):
            data = _ListDataset(data)
        if isinstance(data, ModelInputs):
            self._batch = (data, None)
        elif isinstance(data, (Tensor, tuple, list, Mapping)):
            self._batch = split_batch(data, name)
        self.data = data
        self.num_examples = self._count() if num_examples is None else num_examples
        if self.num_examples == 0:
            raise ValueError(f"{name} is empty; pass at least one example.")

    def _count(self) -> int:
        if self._batch is not None:
            return len(self._batch[0])
        if isinstance(self.data, DataLoader):
            as_loader(self.data, self.block_size)  # refuses shuffling / drop_last
            try:
                return len(self.data.dataset)  # type: ignore[arg-type]
            except TypeError:
                pass
        elif isinstance(self.data, Dataset) and hasattr(self.data, "__len__"):
            return len(self.data)  # type: ignore[arg-type]
        return sum(len(x) for x, _ in self._batches(self.data))

    def __len__(self) -> int:
        return self.num_examples

    @property
    def in_memory(self) -> bool:
        """Whether the data is one batch already in memory (sliced, not read)."""
        return self._batch is not None

    @property
    def num_blocks(self) -> int:
        """Number of blocks, ``ceil(N / block_size)``."""
        return -(-self.num_examples // self.block_size)

    def block_range(self, index: int) -> tuple[int, int]:
        """``(start, stop)`` example indices of block ``index``."""
        start = index * self.block_size
        return start, min(start + self.block_size, self.num_examples)

    def _batches(self, data: Any) -> Iterator[tuple[ModelInputs, Tensor | None]]:
        first: ModelInputs | None = None
        for i, batch in enumerate(as_loader(data, self.block_size)):
            x, y = split_batch(batch, f"{self.name} batch {i}")
            if first is None:
                first = x
            else:
                first.check_compatible(x, (f"{self.name} batch 0", f"{self.name} batch {i}"))
            yield x, y

    def _seekable(self, first: int, stop: int) -> Any:
        """The data from block ``first`` on, when it can be indexed; else None."""
        start = first * self.block_size
        end = min(stop * self.block_size, self.num_examples)
        data = self.data
        loader = isinstance(data, DataLoader)
        dataset = data.dataset if loader else data
        if isinstance(dataset, IterableDataset):
            return None  # read from its start, skipping the blocks before ``first``
        if not isinstance(dataset, Dataset) or not hasattr(dataset, "__getitem__"):
            return None
        if loader and data.batch_size is None:
            return None
        subset = Subset(dataset, range(start, end))
        if loader:
            return DataLoader(subset, **_loader_options(data))
        return DataLoader(subset, batch_size=self.block_size, shuffle=False)

    def blocks(
        self, first: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, ModelInputs, Tensor | None]]:
        r"""Yields blocks ``first, ..., stop - 1`` as ``(start, inputs, labels)``.

        Args:
            first (int): first block index. Default: 0.
            stop (int, optional): one past the last block index. Default: all blocks.

        Yields:
            (int, ModelInputs, Tensor or None): first example index, the block's inputs
            (text padded to the block's longest example) and its (b,) labels.
        """
        stop = self.num_blocks if stop is None else min(stop, self.num_blocks)
        if first >= stop:
            return
        if self._batch is not None:
            x, y = self._batch
            for index in range(first, stop):
                start, end = self.block_range(index)
                labels = None if y is None else y[start:end]
                yield start, trim_padding(x.slice(start, end)), labels
            return
        seekable = self._seekable(first, stop)
        batches = self._batches(seekable if seekable is not None else self.data)
        offset = first * self.block_size if seekable is not None else 0
        for start, inputs, labels in self._rechunk(batches, offset, first, stop):
            if self.digests is not None:
                self._verify(start, inputs, labels)
            yield start, inputs, labels

    def _verify(self, start: int, inputs: ModelInputs, labels: Tensor | None) -> None:
        """Checks a block read again against the example digests of the first pass."""
        stop = start + len(inputs)
        expected = self.digests[start:stop]  # type: ignore[index]
        if torch.equal(example_digests(inputs, labels), expected):
            return
        raise ValueError(
            f"{self.name} returned different data for block {start // self.block_size} "
            f"(examples {start}-{stop - 1}) on a second read than on its first (random "
            "transforms, or a shuffling IterableDataset or sampler?). It is read block by block "
            "several times, so it must return the same examples in the same order on every "
            "pass: make it deterministic (apply random augmentations beforehand, with a fixed "
            "seed), or pass the training data as tensors."
        )

    def _rechunk(
        self,
        batches: Iterator[tuple[ModelInputs, Tensor | None]],
        offset: int,
        first: int,
        stop: int,
    ) -> Iterator[tuple[int, ModelInputs, Tensor | None]]:
        """Regroups loader batches (starting at example ``offset``) into blocks."""
        pending: list[tuple[ModelInputs, Tensor | None]] = []
        held, position = 0, offset
        for x, y in batches:
            pending.append((x, y))
            held += len(x)
            while held >= self.block_size or (held and position + held >= self.num_examples):
                take = min(self.block_size, held)
                block, pending = _take(pending, take)
                held -= take
                index = position // self.block_size
                if first <= index < stop:
                    yield position, trim_padding(block[0]), block[1]
                position += take
                if index + 1 >= stop:
                    return
        if position < min(stop * self.block_size, self.num_examples):
            raise ValueError(
                f"{self.name} yielded {position + held} examples but has {self.num_examples} "
                "(len of its dataset); it must yield every example once, in order."
            )


def _loader_options(loader: DataLoader) -> dict[str, Any]:
    """The options of an in-order ``DataLoader`` that a loader over a subset of its dataset
    keeps (batching, collation, workers, pinning, seeding)."""
    options = {"batch_size": loader.batch_size, "collate_fn": loader.collate_fn}
    options |= {"num_workers": loader.num_workers, "pin_memory": loader.pin_memory}
    options |= {"timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn}
    options |= {"generator": loader.generator}
    if loader.num_workers > 0:  # only valid with workers
        options |= {"persistent_workers": loader.persistent_workers}
        options |= {"prefetch_factor": loader.prefetch_factor}
        options |= {"multiprocessing_context": loader.multiprocessing_context}
    if loader.pin_memory:
        options |= {"pin_memory_device": loader.pin_memory_device}
    return options


def _take(
    pending: list[tuple[ModelInputs, Tensor | None]], count: int
) -> tuple[tuple[ModelInputs, Tensor | None], list[tuple[ModelInputs, Tensor | None]]]:
    """The first ``count`` examples of the pending batches, and what remains."""
    inputs, labels, rest = [], [], []
    for x, y in pending:
        if count <= 0:
            rest.append((x, y))
            continue
        n = min(count, len(x))
        inputs.append(x.slice(0, n))
        labels.append(None if y is None else y[:n])
        if n < len(x):
            rest.append((x.slice(n, len(x)), None if y is None else y[n:]))
        count -= n
    has = [y is not None for y in labels]
    if any(has) and not all(has):
        raise ValueError("Some batches carry labels and some do not.")
    merged = torch.cat(labels) if all(has) else None  # type: ignore[arg-type]
    return (pad_concat(inputs), merged), rest


class _ListDataset(Dataset):
    """A list of examples as a map-style dataset."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def is_streamable(data: Any) -> bool:
    r"""Whether ``data`` is read from a dataset (and can be read again) rather than held.

    True for a ``Dataset``, a ``DataLoader``, a list of examples (tuples or dicts) and a
    re-iterable of batches; False for one batch already in memory (Tensor, tuple or list of
    Tensors, Mapping, :class:`ModelInputs`) and for a one-shot iterator (a generator), which
    cannot be read twice.
    """
    if isinstance(data, (ModelInputs, Tensor, Mapping, tuple)):
        return False
    if isinstance(data, list):
        return bool(data) and isinstance(data[0], (tuple, list, Mapping))
    if isinstance(data, (Dataset, DataLoader)):
        return True
    try:
        return iter(data) is not data
    except TypeError:
        return False


class StreamedInputs:
    r"""The inputs of a dataset, read block by block, where one batch of N would be held.

    It offers what blockwise code uses of a :class:`ModelInputs` of the whole data: ``len``,
    :meth:`slice` (one block at most), :meth:`blocks` and :meth:`check_compatible`. A slice is
    read from the source when asked: consecutive blocks continue one pass over the data, a
    jump seeks (map-style datasets) or reads from the start (other iterables). At most one
    block (plus one loader batch) is held, whatever N is; text is padded per block.

    Args:
        source (StreamingSource): the data, in blocks of ``source.block_size``.
        probe (ModelInputs): a few examples that stand for the data where only shapes,
                dtypes and sizes matter (compatibility checks, memory estimates).
    """

    def __init__(self, source: StreamingSource, probe: ModelInputs) -> None:
        self.source = source
        self.probe = probe
        self._cursor: Iterator[tuple[int, ModelInputs, Tensor | None]] | None = None
        self._next = -1

    @property
    def num_examples(self) -> int:
        """N, the number of examples."""
        return self.source.num_examples

    def __len__(self) -> int:
        return self.source.num_examples

    @property
    def block_size(self) -> int:
        """Examples per block of the source."""
        return self.source.block_size

    def rebatched(self, block_size: int) -> StreamedInputs:
        """The same data read in blocks of ``block_size`` (no pass over the data)."""
        if block_size == self.block_size:
            return self
        return StreamedInputs(StreamingSource(self, block_size, self.source.name), self.probe)

    def _block(self, index: int) -> ModelInputs:
        if self._cursor is None or index != self._next:
            self._cursor = self.source.blocks(index)
        _, inputs, _ = next(self._cursor)
        self._next = index + 1
        return inputs

    def slice(self, start: int, stop: int) -> ModelInputs:
        r"""Examples ``start:stop``, read from the source; at most one block's worth.

        Raises:
            IndexError: an empty or out-of-range slice.
            ValueError: a slice longer than a block (iterate :meth:`blocks` instead).
        """
        size, n = self.block_size, self.num_examples
        if not 0 <= start < stop <= n:
            raise IndexError(f"slice {start}:{stop} out of range for {n} examples.")
        if start % size == 0 and stop == min(start + size, n):
            return self._block(start // size)
        if stop - start > size:
            raise ValueError(
                f"{self.source.name} is read block by block ({size} examples) and never held "
                f"whole; slice {start}:{stop} is longer: iterate blocks() instead."
            )
        parts = []
        for index in range(start // size, (stop - 1) // size + 1):
            first = index * size
            block = self._block(index)
            parts.append(
                block.slice(max(start, first) - first, min(stop, first + len(block)) - first)
            )
        return trim_padding(pad_concat(parts))

    def blocks(self, batch_size: int) -> Iterator[tuple[int, ModelInputs]]:
        """Yields ``(start, block)`` pairs of at most ``batch_size`` examples, in one pass."""
        for start, inputs, _ in self.rebatched(batch_size).source.blocks():
            yield start, inputs

    def check_compatible(
        self, other: ModelInputs, names: tuple[str, str] = ("inputs1", "inputs2")
    ) -> None:
        """:meth:`ModelInputs.check_compatible` against the probe examples."""
        self.probe.check_compatible(other, names)
