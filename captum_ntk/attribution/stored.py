r"""Training features of an attribution object kept in a disk store (``store=``).

:func:`open_training_store` writes (or resumes, or reads) the training set's features and
squared norms in a :class:`~captum_ntk.store.FeatureStore`, and returns a
:class:`StoredFeatureCache`: a :class:`~captum_ntk.kernels.assembly.FeatureCache` whose blocks
come from the store, so kernels, top-k, self-influence and the kGLM need no training gradients.
A second attribution object on the same model, data and options computes no training features.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..engine.data.inputs import ModelInputs
from ..engine.data.streaming import StreamedInputs, StreamingSource
from ..engine.features import FeatureMap, Features, ParamBlocks
from ..kernels.assembly import FeatureCache
from ..store import FeatureStore, StoreMismatchError, featurize, flat_features
from ..store.store import projected_features

__all__ = [
    "StoreMismatchError",
    "StoredFeatureCache",
    "model_changed_error",
    "open_training_store",
]


class StoredFeatureCache(FeatureCache):
    r"""A :class:`FeatureCache` of the training set that reads every block from a store.

    Args:
        fmap (FeatureMap): the feature map the store was written with.
        store (FeatureStore): the finished store of ``inputs``.
        inputs (ModelInputs): the N training examples (kept for the cache's interface).
        name (str): what the inputs are called in messages.
    """

    def __init__(
        self, fmap: FeatureMap, store: FeatureStore, inputs: ModelInputs, name: str = "training"
    ) -> None:
        if isinstance(inputs, StreamedInputs) and inputs.block_size != store.block_size:
            inputs = inputs.rebatched(store.block_size)  # the store's layout, not the compute's
        super().__init__(fmap, inputs, store.block_size, name)
        self.store = store
        self.keep = False  # blocks are read from disk when needed, never held
        device = fmap.function.device
        self.sq_norms = torch.from_numpy(np.array(store.sq_norms)).to(device)
        self._known[:] = True

    def get(self, start: int) -> Features:
        """Features of the block starting at ``start``, read from the store."""
        _, feats, _ = self.store.block(start // self.batch_size, self.fmap.function.device)
        return self.fmap.unflatten(feats)  # the flat form; ``inner`` meets fresh blocks there


def check_storable(fmap: FeatureMap, inputs: ModelInputs, cls_name: str) -> None:
    r"""Refuses, before any work, a kernel whose features a store cannot hold.

    Raises:
        ValueError: exact gradient kernels and per-token activations, naming what to use.
    """
    if fmap.uses_gradients and projected_features(fmap):
        return  # (B, K) or (B, C, K) tensors: no example needs computing to know
    try:  # exact gradients are refused without computing; activations: one forward pass
        flat_features(ParamBlocks([]) if fmap.uses_gradients else fmap(inputs.slice(0, 1)), fmap)
    except ValueError as err:
        raise ValueError(f"{cls_name}(store=...): {err}") from None


def open_training_store(attribution: Any, directory: str | os.PathLike) -> StoredFeatureCache:
    r"""Writes, resumes or reads the training features of an attribution object in ``directory``.

    Args:
        attribution (NTKAttribution): provides ``feature_map`` (of the model's current
                parameters), ``train_inputs``, ``block_size``, ``kernel``, ``kernel_options``
                and ``layers``.
        directory (str or os.PathLike): the store.

    Returns:
        StoredFeatureCache: the training features.

    Raises:
        ValueError: the kernel's features cannot be stored.
        StoreMismatchError: the store was written for another model state (field
                ``model_fingerprint``), other options or other data.
    """
    fmap, inputs = attribution.feature_map, attribution.train_inputs
    check_storable(fmap, inputs, type(attribution).__name__)
    given = attribution.kernel_options
    options = {
        "kernel": attribution.kernel,
        "projection": given.get("projection", "rademacher"),
        "seed": given.get("seed", 0),
        "precision": given.get("precision", "fp32"),
        "layers": attribution.layers,
    }
    # the layout follows the user's batch_size, never the memory-derived block size (which
    # on CUDA depends on the free memory of the moment): a store resumes on a busier device
    source = StreamingSource(inputs, attribution.batch_size, "train_dataset")
    store = featurize(fmap, source, directory, options, compute_block=attribution.block_size)
    return StoredFeatureCache(fmap, store, inputs)


def model_changed_error(cls_name: str, err: StoreMismatchError) -> StoreMismatchError:
    """The error for a model that changed after its training features were stored."""
    return StoreMismatchError(
        f"{cls_name}: the model's parameters or buffers changed since its training features "
        "were stored, and a store holds one model state: build a new attribution object with "
        f"store=<a new directory> for the new parameters (or restore the old ones). {err}"
    )
