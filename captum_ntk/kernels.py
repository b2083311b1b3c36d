r"""``kernel_matrix``: the one entry point to every NTK-style kernel.

Kernels are assembled blockwise from per-example features (see :mod:`captum_ntk.features`):
a group of row blocks is held in memory while column blocks stream past it, so peak memory is
bounded by ``memory_limit`` whatever N is, and no N x C x P tensor ever exists. Column
features are kept (computed once) when all of them fit in half of ``memory_limit`` (always
the case for projected, conjugate and embedding kernels of moderate N); otherwise they are
recomputed for each row group. With ``inputs2=None`` only the upper triangle of blocks is
computed and mirrored.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._inputs import ModelInputs
from ._model import ModelFunction, check_finite, check_mode
from .features import (
    KERNELS,
    ActivationFeatures,
    FeatureMap,
    Features,
    JacobianFeatures,
    ProjectedJacobianFeatures,
    ProjectedSummedGradientFeatures,
    SummedGradientFeatures,
    last_linear,
    leaf_layers_with_parameters,
)
from .projection import RandomProjection

#: Largest automatic batch size.
MAX_AUTO_BATCH = 256


def default_memory_limit(device: torch.device) -> int:
    r"""Default bytes for one kernel computation's blocks on ``device``.

    CUDA: half of the currently free device memory; CPU: 2 GiB.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    return 2 << 30


def check_kernel_name(kernel: str) -> None:
    """Raises a ValueError listing the valid kernels if ``kernel`` is unknown."""
    if kernel not in KERNELS:
        raise ValueError(f"Unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}.")


def build_feature_map(
    model: nn.Module,
    kernel: str,
    *,
    layers: Sequence[str] | str | None = None,
    projection_dim: int = 10240,
    projection: str = "rademacher",
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    memory_limit: int | None = None,
) -> FeatureMap:
    r"""The feature map whose inner products give ``kernel`` (before normalisation).

    Args: as :func:`kernel_matrix`.

    Returns:
        FeatureMap: features for blocks of examples; its ``memory_limit`` attribute holds
        the resolved budget (``memory_limit`` or the device default).
    """
    check_kernel_name(kernel)
    differentiate = kernel not in ("ck", "embedding")
    function = ModelFunction(
        model, layers if differentiate else None, device, dtype, differentiate=differentiate
    )
    limit = memory_limit if memory_limit is not None else default_memory_limit(function.device)
    fmap = _feature_map(function, kernel, layers, projection_dim, projection, seed, limit)
    fmap.memory_limit = limit
    return fmap


def _feature_map(
    function: ModelFunction,
    kernel: str,
    layers: Sequence[str] | str | None,
    projection_dim: int,
    projection: str,
    seed: int,
    memory_limit: int,
) -> FeatureMap:
    model = function.model
    if kernel == "ck":
        names = [last_linear(model)] if layers is None else _as_list(layers)
        if len(names) != 1:
            raise ValueError(f"The conjugate kernel takes one layer, got {names}.")
        return ActivationFeatures(function, names, "input")
    if kernel == "embedding":
        if layers is None:
            return ActivationFeatures(function, leaf_layers_with_parameters(model), "output", False)
        return ActivationFeatures(function, _as_list(layers), "output")
    if kernel == "entk":
        return JacobianFeatures(function, per_class=True)
    if kernel in ("trntk0", "trntk"):
        return JacobianFeatures(function)
    if kernel in ("pntk0", "pntk"):
        return SummedGradientFeatures(function)
    proj = RandomProjection(
        function.num_params,
        projection_dim,
        projection,
        seed,
        device=function.device,
        dtype=function.dtype,
        cache_bytes=memory_limit // 4,
    )
    if kernel == "proj_trntk":
        return ProjectedJacobianFeatures(function, proj)
    return ProjectedSummedGradientFeatures(function, proj)


def _as_list(layers: Sequence[str] | str) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


def auto_batch_size(fmap: FeatureMap, inputs: ModelInputs, memory_limit: int) -> int:
    r"""Examples per block so one block's gradients (B x C x P, or B x P for the pNTK kernels)
    take at most a quarter of the budget."""
    if not fmap.uses_gradients:
        return MAX_AUTO_BATCH
    function = fmap.function
    itemsize = torch.tensor([], dtype=function.dtype).element_size()
    rows = function.num_outputs(inputs) if fmap.per_logit else 1
    per_example = rows * function.num_params * itemsize
    return int(max(1, min(MAX_AUTO_BATCH, memory_limit // (4 * per_example))))


def _inverse_norms(sq: Tensor) -> tuple[Tensor, Tensor]:
    zero = sq <= 0
    inv = torch.where(zero, torch.zeros_like(sq), sq.clamp_min(1e-300).rsqrt())
    return inv, zero


def _mirrored(block: Tensor) -> Tensor:
    """The block of the swapped pair: (b1, b2) -> (b2, b1), (b1, b2, C, C) -> (b2, b1, C, C)."""
    out = block.transpose(0, 1)
    return out.transpose(2, 3) if out.dim() == 4 else out


def _symmetrize(block: Tensor) -> Tensor:
    """Makes a diagonal block exactly symmetric (rounding of f @ f.T need not be)."""
    return (block + _mirrored(block)) / 2


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
    features across calls of an attribution object).

    Args:
        fmap (FeatureMap): the feature map.
        inputs (ModelInputs): N examples.
        batch_size (int): examples per block.
        name (str): what the inputs are called in error messages.
    """

    def __init__(
        self, fmap: FeatureMap, inputs: ModelInputs, batch_size: int, name: str = "inputs"
    ) -> None:
        self.fmap = fmap
        self.name = name
        self.inputs = inputs
        self.batch_size = batch_size
        self.kept: dict[int, Tensor] = {}
        self.keep: bool | None = None
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
        feats = self.fmap(self.inputs.slice(start, stop))
        sq = self.fmap.sq_norms(feats)
        check_finite(sq, start, self.fmap.what, self.name)
        if self.sq_norms is None:
            self.sq_norms = torch.zeros(len(self.inputs), dtype=sq.dtype, device=sq.device)
        self.sq_norms[start:stop] = sq
        self._known[start:stop] = True
        if self.keep:
            self.kept[start] = feats
        return feats

    def all_sq_norms(self) -> Tensor:
        """Squared norms of every example, computing the blocks not seen yet."""
        for start in self.starts:
            if not bool(self._known[start]):
                self.get(start)
        assert self.sq_norms is not None
        return self.sq_norms


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

    A group of row blocks (as many as fit in half of ``memory_limit``) is held while
    the column blocks stream past it. Column blocks are kept across row groups when all
    of them fit in half the budget (decided from the first block unless ``cols.keep`` is
    already set). With ``cols=None`` the kernel of the rows with themselves is produced
    and only blocks on or above the block diagonal are yielded.

    Args:
        rows (FeatureCache): N1 row examples.
        cols (FeatureCache, optional): N2 column examples; None for the symmetric kernel.
        normalize (bool): cosine-normalise each block.
        memory_limit (int): bytes of features held at once.
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
    budget = memory_limit // 2
    zero_rows: set[int] = set()
    zero_cols: set[int] = set()
    with tqdm(total=total, desc=desc, disable=not show_progress, leave=False) as bar:
        i = 0
        while i < n_rows:
            group: dict[int, Tensor] = {}
            held = 0
            while i < n_rows:
                start = row_starts[i]
                feats = rows.get(start)
                group[start] = feats
                i += 1
                block_bytes = feats.numel() * feats.element_size()
                held += block_bytes
                if cols.keep is None:
                    cols.keep = block_bytes / len(feats) * len(cols) <= budget
                    if symmetric and cols.keep:
                        cols.kept[start] = feats
                if held + block_bytes > budget:
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
                        inv_r, zr = _inverse_norms(rows.sq_norms[rstart : rstart + len(rfeats)])
                        inv_c, zc = _inverse_norms(cols.sq_norms[cstart : cstart + len(cfeats)])
                        block = block * inv_r[:, None] * inv_c[None, :]
                        zero_rows.update((torch.nonzero(zr).flatten() + rstart).tolist())
                        zero_cols.update((torch.nonzero(zc).flatten() + cstart).tolist())
                    if diagonal_block:
                        block = _symmetrize(block)
                        if normalize:
                            block.diagonal().copy_((~zr).to(block.dtype))
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
            out[cstart:cstop, rstart:rstop] = _mirrored(block).to(output_device)
    assert out is not None
    return out


def kernel_matrix(
    model: nn.Module,
    inputs1: Any,
    inputs2: Any = None,
    kernel: str = "trntk",
    *,
    layers: Sequence[str] | str | None = None,
    projection_dim: int = 10240,
    projection: str = "rademacher",
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
    memory_limit: int | None = None,
    eval_mode: bool = False,
    output_device: torch.device | str = "cpu",
) -> Tensor:
    r"""Computes an NTK-style kernel between two sets of inputs of a model.

    Args:
        model (nn.Module): a classifier returning logits (B, C), (B,) for one logit, or an
                object with ``.logits`` (Hugging Face). Must be in eval mode if it has
                BatchNorm or dropout (see ``eval_mode``). The model is never modified.
        inputs1 (Tensor, tuple of Tensors or Mapping): N1 examples: a Tensor
                (``model(x)``), positional arguments (``model(*inputs)``) or keyword
                arguments (``model(**inputs)``, ``labels`` keys are dropped).
        inputs2 (same form as inputs1, optional): N2 examples. Default: None, the kernel
                of inputs1 with itself (symmetry is used to halve the work).
        kernel (str): one of ``entk`` (N1, N2, C, C), ``trntk0``, ``trntk``, ``pntk0``,
                ``pntk``, ``proj_trntk``, ``proj_pntk``, ``ck``, ``embedding`` (N1, N2).
                See DESIGN.md and the README for the definitions.
        layers (str or sequence of str, optional): module names. Gradient kernels: the
                modules whose parameters count (default: every parameter with
                ``requires_grad``). ``ck``: the module whose input is the embedding
                (default: the last ``nn.Linear``). ``embedding``: the modules whose outputs
                are concatenated (default: every leaf module with parameters).
        projection_dim (int): K for projected kernels; must be < P (else ValueError: use
                the exact kernel). Default: 10240 as in the paper.
        projection (str): "rademacher" or "gaussian" entries. Default: "rademacher".
        seed (int): projection seed. The same seed gives the same kernel whatever
                ``batch_size``, ``memory_limit`` or device, up to floating-point rounding.
        batch_size (int, optional): examples per block. Default: as many as keep one
                block's Jacobian (B x C x P) within a quarter of ``memory_limit`` (<= 256).
        device (torch.device or str, optional): compute device. Default: the model's.
        dtype (torch.dtype, optional): compute dtype. Default: the model's parameter
                dtype (a float64 model gives a float64 kernel).
        show_progress (bool): show a progress bar over blocks.
        memory_limit (int, optional): bytes of features held at once (a row group of
                blocks plus kept column blocks); peak memory is about this plus one block's
                Jacobian and the autograd intermediates of one block. Default: 2 GiB on the
                CPU, half the free memory on CUDA.
        eval_mode (bool): if the model has BatchNorm or dropout in train mode, compute the
                kernel of its eval-mode function instead of refusing (flags restored after).
        output_device (torch.device or str): where the result is returned. Default: CPU.

    Returns:
        Tensor: the kernel, shape (N1, N2), or (N1, N2, C, C) for ``entk``. Cosine-normalised
        kernels have entries 0 in rows/columns of examples whose feature vector is zero
        (a RuntimeWarning names them).

    Examples::

        >>> K = kernel_matrix(model, x_test, x_train, kernel="proj_pntk", projection_dim=1024)
    """
    check_kernel_name(kernel)
    x1 = ModelInputs.from_user(inputs1, "inputs1")
    x2 = None if inputs2 is None else ModelInputs.from_user(inputs2, "inputs2")
    if x2 is not None:
        x1.check_compatible(x2)
    with check_mode(model, eval_mode):
        fmap = build_feature_map(
            model,
            kernel,
            layers=layers,
            projection_dim=projection_dim,
            projection=projection,
            seed=seed,
            device=device,
            dtype=dtype,
            memory_limit=memory_limit,
        )
        function = fmap.function
        for x in (x1, x2):
            if x is not None:
                function.validate(x)
        limit = fmap.memory_limit
        bs = batch_size if batch_size is not None else auto_batch_size(fmap, x1, limit)
        if bs < 1:
            raise ValueError(f"batch_size must be positive, got {bs}.")
        rows = FeatureCache(fmap, x1, bs, "inputs1")
        cols = None if x2 is None else FeatureCache(fmap, x2, bs, "inputs2")
        return assemble_kernel(
            rows,
            cols,
            normalize=KERNELS[kernel],
            memory_limit=limit,
            show_progress=show_progress,
            output_device=output_device,
        )
