r"""Kernels and top-k scores from feature stores, block by block.

Memory is bounded by one row block and one column block of features (plus a kernel block and,
for top-k, ``rows x k`` running results), never by ``n_test x n_train``:

- :func:`kernel_blocks` yields normalised kernel blocks between two stores (or one store with
  itself, upper triangle only);
- :func:`write_kernel` writes them into a ``kernel.npy`` memmap with a completion marker per
  block (resumable, sharded over ranks by row blocks);
- :func:`streaming_topk` keeps the ``k`` best training examples per test example, ties going to
  the lower training index whatever the block sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..kernels.blocks import StreamingTopK, cosine_normalised, symmetric_diagonal
from .atomic import read_json, write_json_atomic
from .distributed import barrier, shard, world
from .format import check_metadata, marker_path
from .store import FeatureStore

__all__ = ["kernel_blocks", "load_kernel", "streaming_topk", "write_kernel"]

_KERNEL_FIELDS = ("rows", "cols", "normalize")


def _block_pair(rows, cols, i: int, j: int, normalize: bool, device, zero: set) -> Tensor:
    """The kernel block of row block ``i`` and column block ``j``."""
    rstart, rf, rsq = rows.block(i, device)
    cstart, cf, csq = cols.block(j, device)
    block = rf.reshape(rf.shape[0], -1) @ cf.reshape(cf.shape[0], -1).T
    zr = None
    if normalize:
        block, zr, zc = cosine_normalised(block, rsq, csq)
        zero.update((torch.nonzero(zr).flatten() + rstart).tolist())
        zero.update((torch.nonzero(zc).flatten() + cstart).tolist())
    if rows is cols and i == j:
        block = symmetric_diagonal(block, zr)
    return block


def kernel_blocks(
    rows: FeatureStore,
    cols: FeatureStore | None = None,
    *,
    normalize: bool = True,
    row_range: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    skip=None,
    show_progress: bool = False,
) -> Iterator[tuple[int, int, Tensor]]:
    r"""Kernel blocks between the examples of two stores.

    Args:
        rows (FeatureStore): N1 row examples.
        cols (FeatureStore, optional): N2 column examples; None for the symmetric kernel of
                ``rows`` (blocks on or above the diagonal only).
        normalize (bool): cosine-normalise (trntk, pntk, proj-*, ck, embedding).
        row_range (tuple of int, optional): row blocks ``[first, stop)``. Default: all.
        device (torch.device or str): where blocks are multiplied.
        skip (callable, optional): ``skip(i, j) -> bool``: blocks not to compute.
        show_progress (bool): tqdm bar with ETA.

    Yields:
        (row_start, col_start, block): ``block`` is (b1, b2) on ``device``.
    """
    symmetric = cols is None
    cols = rows if cols is None else cols
    first, stop = row_range if row_range is not None else (0, rows.num_blocks)
    pairs = [
        (i, j)
        for i in range(first, stop)
        for j in range(i if symmetric else 0, cols.num_blocks)
        if skip is None or not skip(i, j)
    ]
    zero: set[int] = set()
    for i, j in tqdm(pairs, desc="kernel blocks", disable=not show_progress):
        block = _block_pair(rows, cols, i, j, normalize, device, zero)
        yield i * rows.block_size, j * cols.block_size, block
    if zero:
        warnings.warn(
            f"Zero-norm feature vectors for example indices {sorted(zero)[:10]}: cosine "
            "normalisation is undefined there; those kernel entries are set to 0.",
            RuntimeWarning,
            stacklevel=3,
        )


def write_kernel(
    rows: FeatureStore,
    cols: FeatureStore | None,
    path: str | Path,
    *,
    normalize: bool,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> np.ndarray:
    r"""Writes the kernel between two stores into ``path`` (a directory), resumably.

    The directory gets ``kernel.npy`` (N1, N2), ``kernel.json`` (the two stores' data and
    model fingerprints) and one marker per computed block in ``kernel_done/``. Row blocks are
    sharded over the ranks of a process group; rank 0 finalises.

    Returns:
        numpy.ndarray: the (N1, N2) kernel, a read-only memmap.

    Raises:
        StoreMismatchError: the directory holds the kernel of other stores.
    """
    directory = Path(path)
    meta = {
        "rows": _identity(rows),
        "cols": _identity(rows if cols is None else cols),
        "normalize": bool(normalize),
    }
    n1 = rows.num_examples
    n2 = n1 if cols is None else cols.num_examples
    meta_path = directory / "kernel.json"
    if meta_path.exists():
        check_metadata(directory, read_json(meta_path), meta, _KERNEL_FIELDS)
    barrier()
    if world()[0] == 0 and not meta_path.exists():
        (directory / "kernel_done").mkdir(parents=True, exist_ok=True)
        dtype = rows.features.dtype
        np.lib.format.open_memmap(directory / "kernel.npy", "w+", dtype, (n1, n2)).flush()
        write_json_atomic(meta_path, dict(meta, complete=False))
    barrier()
    out = np.load(directory / "kernel.npy", mmap_mode="r+")
    done = lambda i, j: marker_path(directory, "kernel_done", f"r{i:06d}_c{j:06d}")  # noqa: E731
    for rstart, cstart, block in kernel_blocks(
        rows,
        cols,
        normalize=normalize,
        row_range=shard(rows.num_blocks),
        device=device,
        skip=lambda i, j: done(i, j).exists(),
        show_progress=show_progress,
    ):
        values = block.cpu().numpy()
        out[rstart : rstart + values.shape[0], cstart : cstart + values.shape[1]] = values
        if cols is None and rstart != cstart:
            out[cstart : cstart + values.shape[1], rstart : rstart + values.shape[0]] = values.T
        out.flush()
        col_size = rows.block_size if cols is None else cols.block_size
        write_json_atomic(done(rstart // rows.block_size, cstart // col_size), {})
    del out
    barrier()
    if world()[0] == 0:
        write_json_atomic(meta_path, dict(meta, complete=True))
    barrier()
    return load_kernel(directory)


def _identity(store: FeatureStore) -> dict:
    keys = ("model_fingerprint", "data_fingerprint", "kernel", "num_examples", "block_size")
    return {k: store.metadata.get(k) for k in keys} | {"directory": str(store.directory)}


def load_kernel(path: str | Path) -> np.ndarray:
    r"""The finished kernel at ``path`` as a read-only (N1, N2) memmap.

    Raises:
        ValueError: if it is missing or incomplete.
    """
    directory = Path(path)
    meta_path = directory / "kernel.json"
    if not meta_path.exists() or not read_json(meta_path).get("complete"):
        raise ValueError(
            f"No complete kernel in {str(directory)!r}; run the same call again to resume it."
        )
    return np.load(directory / "kernel.npy", mmap_mode="r")


def streaming_topk(
    test: FeatureStore,
    train: FeatureStore,
    k: int,
    *,
    largest: bool = True,
    normalize: bool = True,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""The ``k`` highest (or lowest) kernel values per test example, block by block.

    Test blocks are sharded over the ranks of a process group and the results gathered.

    Args:
        test (FeatureStore): n_test examples (rows).
        train (FeatureStore): n_train examples (columns).
        k (int): 1 <= k <= n_train.
        largest (bool): highest (proponents) or lowest scores. Default: True.
        normalize (bool): cosine-normalise. Default: True.
        device (torch.device or str): where blocks are multiplied.
        show_progress (bool): tqdm bar.

    Returns:
        (Tensor, Tensor): scores (n_test, k) and int64 training indices (n_test, k), sorted
        best first; equal scores are ordered by the lower training index.
    """
    if not 1 <= k <= train.num_examples:
        raise ValueError(f"k must be in [1, {train.num_examples}] (n_train), got {k}.")
    from .distributed import all_gather_rows

    first, stop = shard(test.num_blocks)
    top = StreamingTopK(k, largest)
    for rstart, cstart, block in kernel_blocks(
        test,
        train,
        normalize=normalize,
        row_range=(first, stop),
        device=device,
        show_progress=show_progress,
    ):
        top.update(rstart, cstart, block)
    scores, indices = top.result()
    return all_gather_rows(scores, test.num_examples), all_gather_rows(indices, test.num_examples)
