r"""``kernel_matrix``: the one entry point to every NTK-style kernel.

The kernel's feature map comes from the registry (:mod:`captum_ntk.kernels.registry`), and the
matrix is assembled blockwise within ``memory_limit`` (:mod:`captum_ntk.kernels.assembly`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.features import FeatureMap
from ..engine.inputs import ModelInputs
from ..engine.model import ModelFunction, check_mode
from ..engine.projection import RandomProjection
from .assembly import FeatureCache, assemble_kernel
from .registry import kernel_spec

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
    differentiate = kernel_spec(kernel).differentiates
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
    spec = kernel_spec(kernel)
    proj = None
    if spec.projected:
        proj = RandomProjection(
            function.num_params,
            projection_dim,
            projection,
            seed,
            device=function.device,
            dtype=function.dtype,
            cache_bytes=memory_limit // 4,
        )
    return spec.build(function, layers, proj)


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
                See :mod:`captum_ntk.kernels.registry` and the README for the definitions.
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
    spec = kernel_spec(kernel)
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
            normalize=spec.normalized,
            memory_limit=limit,
            show_progress=show_progress,
            output_device=output_device,
        )
