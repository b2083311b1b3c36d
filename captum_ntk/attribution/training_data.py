r"""The training set of an attribution object: held when given in memory, else streamed.

Training data given as a batch already in memory (a Tensor, a tuple of Tensors, a Mapping) is
used as it is. A ``Dataset``, a ``DataLoader``, a list of examples or a re-iterable of batches
is never collected whole: :func:`read_training_data` makes one pass over it (validating every
block for the model, and keeping the N labels, a few probe examples and an 8-byte digest of
every example) and returns a :class:`~captum_ntk.engine.data.streaming.StreamedInputs` from which
the kernels read the inputs block by block (text padded per block) whenever they need them.
Memory for the inputs is then bounded by one block whatever N is. Every later read is checked
against the digests of the first pass, so a dataset that returns other data on a second read
(random transforms, a shuffling ``IterableDataset``) raises an error instead of pairing labels
with other examples' features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..engine.data.batches import collect, pad_concat
from ..engine.data.inputs import ModelInputs
from ..engine.data.streaming import (
    StreamedInputs,
    StreamingSource,
    example_digests,
    is_streamable,
    trim_padding,
)
from ..engine.gram.feature_map import PLAN_EXAMPLES
from ..kernels.matrix import auto_batch_size

__all__ = ["PROBE_EXAMPLES", "bind_training_data", "read_training_data"]

#: Leading examples kept as the probe: the feature maps plan from (and estimate sizes on) the
#: first examples of the data (:data:`captum_ntk.engine.gram.feature_map.PLAN_EXAMPLES`).
PROBE_EXAMPLES = PLAN_EXAMPLES


class _ProbeCollector:
    """Keeps the first examples and, for text, the example with the most tokens."""

    def __init__(self) -> None:
        self.head: list[ModelInputs] = []
        self.count = 0
        self.longest: ModelInputs | None = None
        self.longest_at = -1
        self.most_tokens: float = -1.0

    def update(self, start: int, inputs: ModelInputs) -> None:
        # copies, not views: a view would keep its whole block alive as long as the probe
        if self.count < PROBE_EXAMPLES:
            take = min(len(inputs), PROBE_EXAMPLES - self.count)
            self.head.append(inputs.slice(0, take).map(torch.clone))
            self.count += take
        mask = inputs.kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            tokens = mask.sum(dim=1)
            index = int(tokens.argmax())  # the first of the longest, as over the whole set
            if float(tokens[index]) > self.most_tokens:
                self.most_tokens = float(tokens[index])
                self.longest = inputs.slice(index, index + 1).map(torch.clone)
                self.longest_at = start + index

    def probe(self) -> ModelInputs:
        """The first examples, then the longest one if it is not among them."""
        parts = list(self.head)
        if self.longest is not None and self.longest_at >= self.count:
            parts.append(self.longest)
        return trim_padding(pad_concat(parts))


def read_training_data(
    data: Any, batch_size: int, validate: Callable[[ModelInputs], None]
) -> tuple[ModelInputs | StreamedInputs, Tensor | None, ModelInputs]:
    r"""Reads the training set's labels and probe, holding its inputs only if given in memory.

    Args:
        data: the training data (see :class:`~captum_ntk.attribution.base.NTKAttribution`).
        batch_size (int): examples per block of the pass (and loader batch for a Dataset).
        validate (callable): model-specific checks of a batch of inputs; raises on bad input.

    Returns:
        (inputs, labels, probe): ``inputs`` is the :class:`ModelInputs` of an in-memory batch
        (or of a one-shot iterator, which can be read only once), else a
        :class:`StreamedInputs` in blocks of ``batch_size``; ``labels`` the (N,) labels or
        None; ``probe`` the examples that stand for the data in size estimates: all of an
        in-memory batch, else the first :data:`PROBE_EXAMPLES` and, for text, the example with
        the most tokens.
    """
    if not is_streamable(data):
        inputs, labels = collect(data, batch_size)
        validate(inputs)
        return inputs, labels, inputs
    source = StreamingSource(data, batch_size, "train_dataset")
    collector = _ProbeCollector()
    labels: list[Tensor | None] = []
    digests: list[Tensor] = []
    for start, inputs, y in source.blocks():
        validate(inputs)
        collector.update(start, inputs)
        labels.append(y)
        digests.append(example_digests(inputs, y))
    has = [y is not None for y in labels]
    if any(has) and not all(has):
        raise ValueError("Some batches of train_dataset carry labels and some do not.")
    merged = torch.cat(labels) if all(has) else None  # type: ignore[arg-type]
    source.digests = torch.cat(digests)  # every later read is checked against this pass
    probe = collector.probe()
    return StreamedInputs(source, probe), merged, probe


def bind_training_data(attribution: Any) -> None:
    r"""Binds the training data of an attribution object to its (re)built feature map.

    On the first call reads the data (:func:`read_training_data`: sets ``train_inputs``,
    ``train_labels`` and ``_probe``); later calls (after a model change) check the probe
    only. Then sets ``memory_limit`` and ``block_size`` (at most ``batch_size``, within the
    budget) and reads streamed inputs in blocks of ``block_size``.

    Args:
        attribution (NTKAttribution): provides ``feature_map``, ``train_dataset``,
                ``batch_size`` and ``_probe`` (None before the first call).
    """
    fmap = attribution.feature_map
    function = fmap.function
    if attribution._probe is None:
        read = read_training_data(
            attribution.train_dataset, attribution.batch_size, function.validate
        )
        attribution.train_inputs, attribution.train_labels, attribution._probe = read
    else:
        function.validate(attribution._probe)
    probe = attribution._probe
    function.num_outputs(probe)  # fails early on bad batches
    attribution.memory_limit = fmap.memory_limit
    attribution.block_size = min(
        attribution.batch_size, auto_batch_size(fmap, probe, attribution.memory_limit)
    )
    if isinstance(attribution.train_inputs, StreamedInputs):
        attribution.train_inputs = attribution.train_inputs.rebatched(attribution.block_size)
