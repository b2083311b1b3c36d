r"""Blockwise kernel assembly bounded in memory.

A group of row blocks (at most a quarter of ``memory_limit``) is held in memory while column blocks
stream past it, so the features held are bounded whatever N is, and no N x C x P tensor ever exists.
Column features are kept (computed once) when all of them fit in another quarter of
``memory_limit``; otherwise they are recomputed for each row group (the shares of the budget are
listed in :mod:`captum_ntk.engine.budget`). With ``cols=None`` only the upper triangle of blocks is computed and mirrored.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm import tqdm

from ..engine.budget import FEATURE_SHARE
from ..engine.data.inputs import ModelInputs
from ..engine.data.streaming import StreamedInputs
from ..engine.feature_blocks import Features, nbytes
from ..engine.features import FeatureMap
from ..engine.model import check_finite
from ..engine.projection.precision import exact_float32
from ..engine.widen import widen_features
from .blocks import cosine_normalised, mirrored, symmetric_diagonal


def _warn_zero_norms(rows: set[int], cols: set[int]) -> None:
    if rows or cols:
        warnings.warn(
            "Zero-norm feature (gradient) vectors for example indices "
            f"{sorted(rows)[:10]} (rows) and {sorted(cols)[:10]} (columns): cosine "
            "normalisation is undefined there; those kernel entries are set to 0.",
            RuntimeWarning,
            stacklevel=4,
        )


class FeatureCache:
    r"""Features of fixed blocks of one set of inputs, kept or recomputed on demand.

    Squared norms of every block computed so far are recorded in ``sq_norms`` (N,).
    Set ``keep`` to hold computed blocks for reuse (e.g. the training set's projected
    features across calls of an attribution object); with ``keep_limit`` set, blocks are held
    while their bytes stay within it, and the first block that would exceed it drops them all
    and turns ``keep`` off (blocks are then recomputed when needed). The decision follows the
    bytes actually computed, so a long example late in the data cannot exceed the limit.

    Args:
        fmap (FeatureMap): the feature map.
        inputs (ModelInputs or StreamedInputs): N examples, held or read from a dataset block
                by block (``batch_size`` must then be the blocks' size, so each block is read
                when its features are computed and never held longer).
        batch_size (int): examples per block.
        name (str): what the inputs are called in error messages.
    """

    def __init__(
        self,
        fmap: FeatureMap,
        inputs: ModelInputs | StreamedInputs,
        batch_size: int,
        name: str = "inputs",
    ) -> None:
        if isinstance(inputs, StreamedInputs) and inputs.block_size != batch_size:
            raise ValueError(
                f"{name} are read in blocks of {inputs.block_size} examples but the cache "
                f"computes blocks of {batch_size}: pass inputs.rebatched({batch_size})."
            )
        self.fmap = fmap
        self.name = name
        self.inputs = inputs
        self.batch_size = batch_size
        self.kept: dict[int, Features] = {}
        self.keep: bool | None = None
        self.keep_limit: int | None = None
        self.kept_bytes = 0
        self.sq_norms: Tensor | None = None
        self._known = torch.zeros(len(inputs), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def starts(self) -> list[int]:
        """First example index of every block."""
        return list(range(0, len(self.inputs), self.batch_size))

    def get(self, start: int) -> Features:
        """Features of the block starting at ``start``."""
        if start in self.kept:
            return self.kept[start]
        stop = min(start + self.batch_size, len(self.inputs))
        with exact_float32():
            feats = widen_features(self.fmap(self.inputs.slice(start, stop)))
            sq = self.fmap.sq_norms(feats)
        check_finite(sq, start, self.fmap.what, self.name)
        if self.sq_norms is None:
            self.sq_norms = torch.zeros(len(self.inputs), dtype=sq.dtype, device=sq.device)
        self.sq_norms[start:stop] = sq
        self._known[start:stop] = True
        if self.keep:
            self._hold(start, feats)
        return feats

    def _hold(self, start: int, feats: Features) -> None:
        size = nbytes(feats)
        if self.keep_limit is not None and self.kept_bytes + size > self.keep_limit:
            self.keep = False  # all blocks do not fit: recompute them instead
            self.kept.clear()
            self.kept_bytes = 0
            return
        self.kept[start] = feats
        self.kept_bytes += size

    def all_sq_norms(self) -> Tensor:
        """Squared norms of every example, computing the blocks not seen yet."""
        for start in self.starts:
            if not bool(self._known[start]):
                self.get(start)
        assert self.sq_norms is not None
        return self.sq_norms


def _normalised(
    block: Tensor,
    rows: FeatureCache,
    cols: FeatureCache,
    rstart: int,
    cstart: int,
    zero_rows: set[int],
    zero_cols: set[int],
) -> tuple[Tensor, Tensor]:
    r"""Cosine-normalises a block; records rows and columns of zero norm.

    Returns:
        (block, zero): the normalised block and the (b1,) mask of zero-norm rows.
    """
    b1, b2 = block.shape[:2]
    block, zr, zc = cosine_normalised(
        block, rows.sq_norms[rstart : rstart + b1], cols.sq_norms[cstart : cstart + b2]
    )
    zero_rows.update((torch.nonzero(zr).flatten() + rstart).tolist())
    zero_cols.update((torch.nonzero(zc).flatten() + cstart).tolist())
    return block, zr


def iter_kernel_blocks(
    rows: FeatureCache,
    cols: FeatureCache | None,
    *,
    normalize: bool,
    memory_limit: int,
    show_progress: bool = False,
    desc: str = "kernel blocks",
) -> Iterator[tuple[int, int, Tensor]]:
    r"""Yields the kernel block by block, bounded in memory.

    A group of row blocks (as many as fit in a quarter of ``memory_limit``, judged by the
    largest block so far) is held while the column blocks stream past it. Column blocks are
    kept across row groups while they fit in another quarter (``FeatureCache.keep_limit``;
    unless ``cols.keep`` is already set). With ``cols=None`` the kernel of the rows with themselves is produced
    and only blocks on or above the block diagonal are yielded.

    Args:
        rows (FeatureCache): N1 row examples.
        cols (FeatureCache, optional): N2 column examples; None for the symmetric kernel.
        normalize (bool): cosine-normalise each block.
        memory_limit (int): the budget M; features held take at most M / 2.
        show_progress (bool): tqdm bar over blocks.
        desc (str): the bar's label.

    Yields:
        (row_start, col_start, block): block has shape (b1, b2) or (b1, b2, C, C).
    """
    symmetric = cols is None
    cols = rows if cols is None else cols
    fmap = rows.fmap
    row_starts, col_starts = rows.starts, cols.starts
    n_rows = len(row_starts)
    total = n_rows * (n_rows + 1) // 2 if symmetric else n_rows * len(col_starts)
    budget = memory_limit // FEATURE_SHARE
    if cols.keep is None:
        cols.keep, cols.keep_limit = True, budget
    zero_rows: set[int] = set()
    zero_cols: set[int] = set()
    with tqdm(total=total, desc=desc, disable=not show_progress, leave=False) as bar:
        i = 0
        while i < n_rows:
            group: dict[int, Features] = {}
            held = largest = 0
            while i < n_rows:
                start = row_starts[i]
                feats = rows.get(start)
                group[start] = feats
                i += 1
                block_bytes = nbytes(feats)
                held += block_bytes
                largest = max(largest, block_bytes)
                if held + largest > budget:
                    break
            first_row = min(group)
            for cstart in col_starts:
                if symmetric and cstart < first_row:
                    continue
                cfeats = group[cstart] if symmetric and cstart in group else cols.get(cstart)
                for rstart, rfeats in group.items():
                    if symmetric and cstart < rstart:
                        continue
                    block = fmap.inner(rfeats, cfeats)
                    diagonal_block = symmetric and rstart == cstart
                    if normalize:
                        block, zr = _normalised(block, rows, cols, rstart, cstart, zero_rows,
                                                zero_cols)  # fmt: skip
                    if diagonal_block:
                        block = symmetric_diagonal(block, zr if normalize else None)
                    yield rstart, cstart, block
                    bar.update(1)
    if normalize:
        if symmetric:
            zero_rows |= zero_cols
            zero_cols = zero_rows
        _warn_zero_norms(zero_rows, zero_cols)


def assemble_kernel(
    rows: FeatureCache,
    cols: FeatureCache | None,
    *,
    normalize: bool,
    memory_limit: int,
    show_progress: bool = False,
    output_device: torch.device | str = "cpu",
) -> Tensor:
    r"""The whole kernel matrix from :func:`iter_kernel_blocks` (mirrored when symmetric).

    Returns:
        Tensor: (N1, N2), or (N1, N2, C, C) for per-class kernels, on ``output_device``.
    """
    symmetric = cols is None
    n1, n2 = len(rows), len(rows if cols is None else cols)
    out: Tensor | None = None
    for rstart, cstart, block in iter_kernel_blocks(
        rows, cols, normalize=normalize, memory_limit=memory_limit, show_progress=show_progress
    ):
        if out is None:
            shape = (n1, n2) + tuple(block.shape[2:])
            out = torch.empty(shape, dtype=block.dtype, device=output_device)
        rstop, cstop = rstart + block.shape[0], cstart + block.shape[1]
        out[rstart:rstop, cstart:cstop] = block.to(output_device)
        if symmetric and cstart != rstart:
            out[cstart:cstop, rstart:rstop] = mirrored(block).to(output_device)
    assert out is not None
    return out
