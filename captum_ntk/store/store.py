r"""Feature stores: per-example features of a dataset on disk, written block by block.

:func:`featurize` streams a dataset (:class:`~captum_ntk.engine.data.streaming.StreamingSource`)
through a feature map and writes each block's features and squared norms into ``.npy`` memmaps
(layout in :mod:`captum_ntk.store.format`). Completed blocks are skipped, so a killed run
resumes where it stopped and ends with the same bytes as an uninterrupted run. Under an
initialised ``torch.distributed`` process group each rank writes its contiguous range of blocks
of the same store and rank 0 finalises it after a barrier.

Stored features are fixed-size tensors: projected kernels (proj_pntk (K,), proj_trntk (C, K)),
and ck / embedding activations that are not per-token. Exact gradient kernels have P-sized
features (use a kernel store of their kernel blocks, or a projected kernel).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..engine.data.streaming import StreamingSource, block_digest, data_fingerprint
from ..engine.feature_blocks import Features
from ..engine.features import FeatureMap
from ..engine.fingerprint import model_fingerprint
from ..engine.model import check_finite
from ..engine.projection.precision import exact_float32
from ..engine.widen import widen_features
from .atomic import read_json, write_json_atomic
from .distributed import barrier, shard, world
from .format import FEATURE_FIELDS, FORMAT, check_metadata, marker_path

__all__ = ["FeatureStore", "featurize", "flat_features", "store_metadata"]

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def projected_features(fmap: FeatureMap) -> bool:
    """Whether ``fmap`` makes projected gradient features (fixed size K per example / logit)."""
    return getattr(fmap, "projection", None) is not None or hasattr(fmap, "projection_dim")


def flat_features(features: Features, fmap: FeatureMap) -> Tensor:
    r"""A block's features in the flat form a store holds (``fmap.flatten``).

    Raises:
        ValueError: for exact gradient features (P numbers per example and class) and
                per-token activations (their size changes with the padded length).
    """
    if fmap.uses_gradients and not projected_features(fmap):
        raise ValueError(
            "Exact gradient kernels have P numbers per example (and class) as features, too "
            "many to store; use a projected kernel (proj_pntk, proj_trntk) with store=."
        )
    return fmap.flatten(features)


def store_metadata(fmap: FeatureMap, options: dict[str, Any], num_examples: int, block_size: int):
    r"""The identity fields of a feature store for ``fmap`` (see ``FEATURE_FIELDS``).

    Args:
        fmap (FeatureMap): the feature map (its model is fingerprinted by content).
        options (dict): ``kernel``, ``projection``, ``seed``, ``layers``, ``precision``
                (``projection_dim`` is read from ``fmap``, after its default is resolved).
        num_examples (int): N.
        block_size (int): examples per block.

    Returns:
        dict: JSON-serialisable metadata.
    """
    from .. import __version__

    function = fmap.function
    projection = getattr(fmap, "projection", None)
    dim = getattr(projection, "projection_dim", None) or getattr(fmap, "projection_dim", None)
    projected = dim is not None  # dense / sparse projection, or Kronecker factors
    layers = options.get("layers")
    return {
        "format": FORMAT,
        "library_version": __version__,
        "kernel": options["kernel"],
        "projection": options.get("projection", "rademacher") if projected else None,
        "projection_dim": int(dim) if projected else None,
        "seed": options.get("seed", 0) if projected else None,
        "precision": options.get("precision", "fp32") if projected else None,
        "dtype": str(function.dtype),
        "layers": [layers] if isinstance(layers, str) else (list(layers) if layers else None),
        "num_params": int(function.num_params),
        "model_fingerprint": model_fingerprint(function.model, content=True),
        "num_examples": int(num_examples),
        "block_size": int(block_size),
    }


class FeatureStore:
    r"""A directory of per-example features (see :mod:`captum_ntk.store.format`).

    Use :meth:`create_or_open` to write and :meth:`load` to read a finished store.

    Attributes:
        directory (Path): the store.
        metadata (dict): its metadata.
        features (numpy.memmap): (N, *feature_shape).
        sq_norms (numpy.memmap): (N,).
    """

    def __init__(self, directory: Path, metadata: dict[str, Any], mode: str) -> None:
        self.directory = directory
        self.metadata = metadata
        self.features = np.load(directory / "features.npy", mmap_mode=mode)
        self.sq_norms = np.load(directory / "sq_norms.npy", mmap_mode=mode)

    # ------------------------------------------------------------------ opening
    @classmethod
    def create_or_open(
        cls, directory: str | Path, metadata: dict[str, Any], shape: tuple, dtype: torch.dtype
    ) -> FeatureStore:
        r"""Opens the store at ``directory`` for writing, creating it if needed.

        Every rank checks an existing store's metadata (all raise together); rank 0 creates
        a new one between two barriers.

        Raises:
            StoreMismatchError: naming each field that differs from ``metadata``.
        """
        directory = Path(directory)
        path = directory / "metadata.json"
        if path.exists():
            check_metadata(directory, read_json(path), metadata, FEATURE_FIELDS)
        barrier()
        if world()[0] == 0 and not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "done").mkdir(exist_ok=True)
            n = metadata["num_examples"]
            np_dtype = _NUMPY_DTYPES.get(dtype)
            if np_dtype is None:
                raise ValueError(f"store= supports float16/32/64 features, not {dtype}.")
            for name, full in (("features", (n, *shape)), ("sq_norms", (n,))):
                array = np.lib.format.open_memmap(directory / f"{name}.npy", "w+", np_dtype, full)
                array.flush()
                del array
            meta = dict(metadata, feature_shape=list(shape), complete=False, data_fingerprint=None)
            write_json_atomic(path, meta)
        barrier()
        stored = read_json(path)
        check_metadata(directory, stored, metadata, FEATURE_FIELDS)
        if tuple(stored["feature_shape"]) != tuple(shape):
            raise ValueError(
                f"The store {str(directory)!r} holds features of shape {stored['feature_shape']} "
                f"but the feature map gives {list(shape)}; delete it to recompute."
            )
        return cls(directory, stored, "r+")

    @classmethod
    def load(cls, directory: str | Path) -> FeatureStore:
        r"""Opens a finished store read-only.

        Raises:
            ValueError: if it is missing or incomplete (run featurize again to resume).
        """
        directory = Path(directory)
        path = directory / "metadata.json"
        if not path.exists():
            raise ValueError(f"{str(directory)!r} is not a feature store (no metadata.json).")
        meta = read_json(path)
        if not meta.get("complete"):
            raise ValueError(
                f"The store {str(directory)!r} is incomplete (the run that wrote it stopped); "
                "run the same featurize call again to resume it."
            )
        return cls(directory, meta, "r")

    # ------------------------------------------------------------------ blocks
    @property
    def num_examples(self) -> int:
        """N."""
        return int(self.metadata["num_examples"])

    @property
    def block_size(self) -> int:
        """Examples per block."""
        return int(self.metadata["block_size"])

    @property
    def num_blocks(self) -> int:
        """Number of blocks."""
        return -(-self.num_examples // self.block_size)

    def done_digest(self, index: int) -> str | None:
        """The data digest recorded for a completed block, or None if it is not complete."""
        path = marker_path(self.directory, "done", f"block_{index:06d}")
        return read_json(path)["digest"] if path.exists() else None

    def write_block(self, index: int, start: int, features: Tensor, sq: Tensor, digest: str):
        r"""Writes one block, flushes it, then records it as complete (atomically)."""
        stop = start + features.shape[0]
        self.features[start:stop] = features.detach().cpu().numpy()
        self.sq_norms[start:stop] = sq.detach().cpu().numpy()
        self.features.flush()
        self.sq_norms.flush()
        marker = marker_path(self.directory, "done", f"block_{index:06d}")
        write_json_atomic(marker, {"digest": digest, "start": start, "stop": stop})

    def block(self, index: int, device: torch.device | str = "cpu") -> tuple[int, Tensor, Tensor]:
        r"""``(start, features (b, ...), sq_norms (b,))`` of block ``index`` as tensors."""
        start = index * self.block_size
        stop = min(start + self.block_size, self.num_examples)
        feats = torch.from_numpy(np.array(self.features[start:stop]))
        sq = torch.from_numpy(np.array(self.sq_norms[start:stop]))
        return start, feats.to(device), sq.to(device)

    def finalize(self) -> None:
        r"""Marks the store complete after checking every block is (rank 0 only)."""
        digests = [self.done_digest(i) for i in range(self.num_blocks)]
        missing = [i for i, d in enumerate(digests) if d is None]
        if missing:
            raise RuntimeError(f"blocks {missing[:10]} of {self.directory} were not written.")
        fingerprint = data_fingerprint(digests, self.block_size, self.num_examples)  # type: ignore[arg-type]
        self.metadata = dict(self.metadata, complete=True, data_fingerprint=fingerprint)
        write_json_atomic(self.directory / "metadata.json", self.metadata)


def _block_features(
    fmap: FeatureMap, inputs: Any, compute_block: int | None
) -> tuple[Tensor, Tensor]:
    """Flat features and squared norms of one store block, computed ``compute_block``
    examples at a time (the store's layout does not depend on the memory of the device)."""
    step = inputs.num_examples if not compute_block else max(1, int(compute_block))
    features, norms = [], []
    with exact_float32():
        for begin in range(0, inputs.num_examples, step):
            raw = widen_features(fmap(inputs.slice(begin, min(begin + step, inputs.num_examples))))
            norms.append(fmap.sq_norms(raw))
            features.append(flat_features(raw, fmap))
    return torch.cat(features), torch.cat(norms)


def featurize(
    fmap: FeatureMap,
    source: StreamingSource,
    directory: str | Path,
    options: dict[str, Any],
    *,
    show_progress: bool = False,
    compute_block: int | None = None,
) -> FeatureStore:
    r"""Writes the features of every block of ``source`` into the store at ``directory``.

    Blocks already complete are skipped after checking that their data digest matches (the
    inputs did not change); the rest are computed and written. The digests cover the inputs
    only, not labels (features do not depend on them): the same inputs given with or without
    labels, in memory or as a ``Dataset``, share a store. Under a process group each rank
    computes its contiguous range of blocks (:func:`~captum_ntk.store.distributed.shard`).

    Args:
        fmap (FeatureMap): the feature map (model, kernel, projection).
        source (StreamingSource): the data, read block by block.
        directory (str or Path): the store (created if missing).
        options (dict): ``kernel``, ``projection``, ``seed``, ``layers`` (for the metadata).
        show_progress (bool): tqdm bar over this rank's blocks (with ETA).
        compute_block (int, optional): examples per feature-map call within a store block
                (the memory-bounded compute size); the store's layout is ``source``'s block
                size whatever the device's free memory. Default: the whole store block.

    Returns:
        FeatureStore: the complete store, opened read-only.

    Raises:
        StoreMismatchError: the store was written for another model state, other options or
                other data (the message names each field, or the first changed block).
    """
    path = Path(directory) / "metadata.json"
    existing = read_json(path) if path.exists() else None
    if existing is not None and existing.get("block_size") not in (None, source.block_size):
        source = copy.copy(source)  # an existing store keeps its layout, whatever batch_size
        source.block_size = int(existing["block_size"])
    meta = store_metadata(fmap, options, len(source), source.block_size)
    if existing is not None:  # its fields fix the feature shape: nothing to probe
        shape, dtype = tuple(existing.get("feature_shape", ())), fmap.function.dtype
    else:
        _, first_inputs, _ = next(source.blocks(0, 1))
        with exact_float32():
            probe = flat_features(widen_features(fmap(first_inputs.slice(0, 1))), fmap)
        shape, dtype = tuple(probe.shape[1:]), probe.dtype
    store = FeatureStore.create_or_open(directory, meta, shape, dtype)
    first, stop = shard(source.num_blocks)
    with tqdm(total=stop - first, desc="featurize", disable=not show_progress) as bar:
        for start, inputs, _ in source.blocks(first, stop):
            index = start // source.block_size
            digest = block_digest(inputs, None)  # features depend on the inputs, not labels
            done = store.done_digest(index)
            if done is not None and done != digest:
                raise _changed_data(store.directory, index, start)
            if done is None:
                features, sq = _block_features(fmap, inputs, compute_block)
                check_finite(sq, start, fmap.what, source.name)
                store.write_block(index, start, features, sq, digest)
            bar.update(1)
    barrier()
    if world()[0] == 0:
        store.finalize()
    barrier()
    return FeatureStore.load(directory)


def _changed_data(directory: Path, index: int, start: int) -> Exception:
    from .format import StoreMismatchError

    return StoreMismatchError(
        f"The store {str(directory)!r} was written for different data: block {index} (examples "
        f"from {start}) has other inputs or another order (mismatching field: data_fingerprint). "
        "Pass another directory, or delete this one to recompute."
    )
