r"""``kernel_matrix``: the one entry point to every NTK-style kernel.

The kernel's feature map comes from the registry (:mod:`captum_ntk.kernels.registry`), and the
matrix is assembled blockwise within ``memory_limit`` (:mod:`captum_ntk.kernels.assembly`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.budget import (
    BLOCK_SHARE,
    CACHE_SHARE,
    FEATURE_SHARE,
    SCRATCH_SHARE,
    WORK_SHARE,
    MemoryBudgetError,
    pass_bytes,
)
from ..engine.data.inputs import ModelInputs
from ..engine.features import (
    FeatureMap,
    ProjectedJacobianFeatures,
    ProjectedSummedGradientFeatures,
)
from ..engine.gradient_computers import (
    engine_names,
    is_user_engine,
    user_gradient_computer,
)
from ..engine.gram import GramFeatures
from ..engine.gram.gradients import CapturedGradients
from ..engine.kronecker import KroneckerFeatures
from ..engine.model import ModelFunction
from ..engine.modes import check_mode
from ..engine.projection.dense import default_projection_dim
from ..engine.projection.kinds import check_projection, make_projection
from ..engine.projection.precision import PRECISIONS, check_precision, exact_float32
from .assembly import FeatureCache, assemble_kernel
from .registry import KERNELS, kernel_spec

#: projected kernels, whose per-example gradients engine="gram" takes from the Gram capture
CAPTURED_KERNELS = tuple(name for name, spec in KERNELS.items() if spec.projected)
#: Kernels the per-layer Gram engine computes (read from the registry).
GRAM_KERNELS = tuple(name for name, spec in KERNELS.items() if spec.exact_gradients)
#: feature maps that project per-example gradients (served by the capture under engine="gram")
PROJECTED_GRADIENTS = (ProjectedJacobianFeatures, ProjectedSummedGradientFeatures)

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
    projection_dim: int | None = None,
    projection: str = "rademacher",
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    memory_limit: int | None = None,
    engine: str = "auto",
    precision: str = "fp32",
) -> FeatureMap:
    r"""The feature map whose inner products give ``kernel`` (before normalisation).

    Args: as :func:`kernel_matrix`.

    Returns:
        FeatureMap: features for blocks of examples; its ``memory_limit`` attribute holds
        the resolved budget (``memory_limit`` or the device default).
    """
    differentiate = kernel_spec(kernel).differentiates
    _check_projection_options(kernel, projection, precision)
    use_gram = _use_gram(kernel, engine)
    function = ModelFunction(
        model, layers if differentiate else None, device, dtype, differentiate=differentiate
    )
    limit = memory_limit if memory_limit is not None else default_memory_limit(function.device)
    if use_gram:
        spec = kernel_spec(kernel)
        fmap: FeatureMap = GramFeatures(function, per_class=spec.per_class, summed=spec.summed)
    else:
        fmap = _feature_map(
            function, kernel, layers, projection_dim, projection, seed, limit, precision
        )
    if isinstance(fmap, KroneckerFeatures):  # one-position layers in Gram form (cheaper)
        fmap.gram_form = engine != "jacobian"
    if isinstance(fmap, PROJECTED_GRADIENTS) and engine == "gram":
        fmap.gradients = CapturedGradients(function, limit)  # instead of vmap(jacrev / grad)
    if is_user_engine(engine):  # a registered gradient computer (TRAK-style composition)
        if isinstance(fmap, KroneckerFeatures):
            raise ValueError(
                "projection='kronecker' projects per layer from the layers' inputs and output "
                f"gradients, not from per-example gradients; engine={engine!r} cannot serve it. "
                "Use a matrix projection (rademacher, gaussian, sjlt or a registered one)."
            )
        fmap.gradients = user_gradient_computer(engine, function, limit)
    fmap.memory_limit = limit
    return fmap


def _check_projection_options(kernel: str, projection: str, precision: str) -> None:
    """Refuses unknown projections and precisions, and reduced precision for exact kernels."""
    check_projection(projection)
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    if precision != "fp32" and not kernel_spec(kernel).projected:
        raise ValueError(
            f"precision={precision!r} sets the arithmetic of projection matmuls; {kernel!r} is "
            "not a projected kernel. Use precision='fp32' (the default) or a proj_* kernel."
        )


def _use_gram(kernel: str, engine: str) -> bool:
    """Whether ``engine`` means the per-layer Gram engine for ``kernel`` (errors for bad pairs)."""
    if engine not in engine_names():
        raise ValueError(
            f"Unknown engine {engine!r}; choose one of {engine_names()} or add yours with "
            "captum_ntk.register_gradient_computer(name, factory, description)."
        )
    spec = kernel_spec(kernel)
    if is_user_engine(engine):
        if not (spec.exact_gradients or spec.projected):
            raise ValueError(
                f"engine={engine!r} (a registered gradient computer) serves gradient kernels; "
                f"{kernel!r} is an activation kernel: use engine='auto'."
            )
        return False
    if engine == "gram" and not (spec.exact_gradients or kernel in CAPTURED_KERNELS):
        raise ValueError(
            f"engine='gram' computes the exact gradient kernels {GRAM_KERNELS} and the "
            f"per-example gradients of {CAPTURED_KERNELS}, not {kernel!r}; use engine='auto' or "
            "engine='jacobian'."
        )
    return engine != "jacobian" and spec.exact_gradients


def _feature_map(
    function: ModelFunction,
    kernel: str,
    layers: Sequence[str] | str | None,
    projection_dim: int | None,
    projection: str,
    seed: int,
    memory_limit: int,
    precision: str = "fp32",
) -> FeatureMap:
    spec = kernel_spec(kernel)
    proj = None
    if spec.projected:
        check_precision(precision, function.device)  # tf32 needs CUDA
        if projection_dim is None:
            projection_dim = default_projection_dim(function.num_params)
        if projection == "kronecker":  # a per-layer feature map, its own estimator
            summed = kernel_spec(kernel).summed
            return KroneckerFeatures(function, projection_dim, seed, summed, precision)
        proj = make_projection(
            projection,
            function.num_params,
            projection_dim,
            seed,
            device=function.device,
            dtype=function.dtype,
            cache_bytes=memory_limit // CACHE_SHARE,
            scratch_bytes=memory_limit // SCRATCH_SHARE,
            precision=precision,
        )
    return spec.build(function, layers, proj)


def _needs(fmap: FeatureMap, inputs: ModelInputs) -> dict[str, tuple[int, int, str]]:
    """Bytes one example needs in each budget share: (bytes, share divisor, description)."""
    function = fmap.function
    feature = max(1, math.ceil(fmap.example_bytes(inputs)))
    activations = function.activation_bytes(inputs)
    if fmap.uses_gradients:
        work = pass_bytes(1, 1, function.num_params * fmap.itemsize, activations)
        what = "one gradient pass over one example and one logit (with autograd intermediates)"
    else:
        work, what = activations + feature, "one example's forward pass"
    entry = fmap.itemsize * (function.num_outputs(inputs) ** 2 if fmap.per_class else 1)
    needs = {
        "features": (feature, FEATURE_SHARE, "features of one example"),
        "pass": (work, WORK_SHARE, what),
        "block": (entry, BLOCK_SHARE, "one kernel entry"),
    }
    block_pass = fmap.block_pass_bytes(inputs)
    if block_pass is not None:
        needs["block pass"] = (
            max(1, block_pass),
            WORK_SHARE,
            "one example's captured forward pass",
        )
    projection = getattr(fmap, "projection", None)
    if getattr(projection, "scratch_bytes", None) is not None:
        column = 16 * projection.projection_dim  # one generated column of K entries
        needs["scratch"] = (column, SCRATCH_SHARE, "one generated projection column")
    return needs


def minimum_memory_limit(fmap: FeatureMap, inputs: ModelInputs) -> int:
    r"""The smallest ``memory_limit`` with which ``fmap`` can compute one example.

    Args:
        fmap (FeatureMap): the feature map.
        inputs (ModelInputs): examples (one is probed).

    Returns:
        int: bytes.
    """
    return max(size * share for size, share, _ in _needs(fmap, inputs).values())


def auto_batch_size(fmap: FeatureMap, inputs: ModelInputs, memory_limit: int) -> int:
    r"""Examples per block within ``memory_limit`` (at most 256).

    One block's features take at most a quarter of the budget (B x C x P numbers for the
    exact trace/full NTK, B x P for the pNTK, B x C x K / B x K for projected kernels, the
    layer activations for ck/embedding), one kernel block (B x B, or B x B x C x C for entk)
    a sixteenth, and for activation kernels one block's forward pass a quarter. Gradient
    passes are chunked over examples and classes separately (see
    :func:`captum_ntk.engine.budget.pass_sizes`).

    Raises:
        MemoryBudgetError: (a ValueError) if even one example does not fit.
    """
    needs = _needs(fmap, inputs)
    minimum = max(size * share for size, share, _ in needs.values())
    if memory_limit < minimum:
        detail = "; ".join(
            f"{what}: {size:,} bytes (1/{share} of the budget)"
            for size, share, what in needs.values()
        )
        raise MemoryBudgetError(
            f"memory_limit={memory_limit:,} bytes is too small for this kernel and model: "
            f"{detail}. Pass memory_limit >= {minimum:,} (or None for the device default), "
            "select fewer parameters with `layers`, or use a projected kernel."
        )
    batch = min(MAX_AUTO_BATCH, (memory_limit // FEATURE_SHARE) // needs["features"][0])
    batch = min(batch, math.isqrt(memory_limit // BLOCK_SHARE // needs["block"][0]))
    if not fmap.uses_gradients:
        batch = min(batch, (memory_limit // WORK_SHARE) // needs["pass"][0])
    if "block pass" in needs:  # the Gram engine and the Kronecker projection run whole blocks
        batch = min(batch, (memory_limit // WORK_SHARE) // needs["block pass"][0])
    return int(max(1, batch))


#: Examples per store block when ``batch_size`` is not given: the layout of a store must not
#: depend on the memory-derived compute block size (free GPU memory changes between runs).
STORE_BLOCK = 1024


def kernel_matrix(
    model: nn.Module,
    inputs1: Any,
    inputs2: Any = None,
    kernel: str = "trntk",
    *,
    layers: Sequence[str] | str | None = None,
    projection_dim: int | None = None,
    projection: str = "rademacher",
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
    memory_limit: int | None = None,
    eval_mode: bool = False,
    output_device: torch.device | str = "cpu",
    engine: str = "auto",
    precision: str = "fp32",
    store: str | os.PathLike | None = None,
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
        projection_dim (int, optional): K for projected kernels; must be < P (else
                ValueError: use the exact kernel). Default: None, which means
                ``min(10240, 2 ** floor(log2(P / 4)))`` (at least 1): the largest power of two
                not above a quarter of P, capped at the paper's 10240 (reached for
                P >= 65536), e.g. 2048 for P = 8970. See
                :func:`captum_ntk.engine.projection.dense.default_projection_dim`.
        projection (str): how projected kernels project gradients. "rademacher" (default) or
                "gaussian": the paper's dense i.i.d. K x P matrix. "sjlt": a sparse
                Johnson-Lindenstrauss transform, 4 nonzeros +-1/2 per column (s P additions
                per gradient instead of K P multiply-adds; unbiased). "kronecker": per-layer
                Kronecker factors ``P_out (x) P_in`` applied to layer inputs and output
                gradients without forming per-example gradients (Linear and groups-1 Conv;
                other parameters dense-projected); unbiased, but a different estimator with
                more variance: report it as the Kronecker variant. A name added with
                :func:`captum_ntk.register_projection` uses your projector. See
                :mod:`captum_ntk.engine.projection.kinds`.
        seed (int): projection seed. The same seed gives the same kernel whatever
                ``batch_size``, ``memory_limit`` or device, up to floating-point rounding.
        batch_size (int, optional): examples per block. Default: as many as keep one
                block's features (B x C x P for the exact trace/full NTK with
                ``engine="jacobian"``, B x C x K for ``proj_trntk``, ...) within a quarter of
                ``memory_limit`` and one kernel block within a sixteenth (<= 256). An
                explicit value takes precedence over ``memory_limit`` for the features held.
        device (torch.device or str, optional): compute device. Default: the model's.
        dtype (torch.dtype, optional): compute dtype. Default: the model's parameter
                dtype (a float64 model gives a float64 kernel).
        show_progress (bool): show a progress bar over blocks.
        memory_limit (int, optional): M, a budget in bytes for the memory the computation
                allocates beyond the model (its parameters and buffers, and one converted
                copy of them if ``device``/``dtype`` differ from the model's), the inputs and
                the returned kernel. It is shared as: M/4 for the features of the row group
                of blocks being processed; M/4 for column features kept across row groups
                (only if all of them fit, else one column block at a time); M/4 for one
                gradient pass, a chunk of examples x classes of the Jacobian (examples x
                classes x P numbers, classes chunked when one example's C x P Jacobian does
                not fit) with its autograd intermediates; M/8 for the cached K x P projection
                matrix (cached only if it fits, else generated blockwise per pass); M/16 for
                projection scratch; M/16 for one kernel block. Autograd intermediates are
                estimated from the bytes of every tensor one probe example's forward pass
                creates, so the bound is approximate: with the automatic ``batch_size`` no
                single tensor exceeds M and the memory allocated at once stays below 2 M
                (checked by allocation tracking in the test suite for
                ``engine="jacobian"``, the projected and the activation kernels). A ValueError
                (``MemoryBudgetError``) is raised before any work when one example with one
                logit does not fit; it names the smallest valid value. Default: 2 GiB on the
                CPU, half the free memory on CUDA.
        eval_mode (bool): if the model has BatchNorm or dropout in train mode, compute the
                kernel of its eval-mode function instead of refusing (flags restored after).
        output_device (torch.device or str): where the result is returned. Default: CPU.
        engine (str): how exact gradient kernels (entk, trntk0, trntk, pntk0, pntk) are
                computed. "jacobian": contract per-example Jacobians from ``torch.func``.
                "gram": per-layer Grams of layer inputs and output gradients (Linear, Conv,
                Embedding; normalisation layers materialised; other parameters through the
                Jacobian path), raising for kernels other than these and the two below.
                "auto" (default): "gram" for the exact gradient kernels, "jacobian" for the
                rest. For ``proj_trntk`` and ``proj_pntk`` with a matrix projection
                ("rademacher", "gaussian", "sjlt"), "gram" computes the per-example
                gradients from the Gram engine's capture (layer inputs times output
                gradients, one batched outer product per layer;
                :mod:`captum_ntk.engine.gram.gradients`) instead of ``vmap(jacrev)`` /
                ``vmap(grad)`` ("auto"); the two agree to float rounding. On the CPU the
                capture measured 0.6-1.1x the speed of ``torch.func`` (BENCHMARKS.md), so it
                is opt-in. With ``projection="kronecker"``, "auto" also keeps one-position
                layers (Linear layers on vectors) in Gram form: their kernel is ``<P_in a_i,
                P_in a_j> sum_c <P_out delta^c_i, P_out delta^c_j>``, equal to the Kronecker
                features' inner products up to float rounding at a fraction of the cost;
                "jacobian" forms the features. A name added with
                :func:`captum_ntk.register_gradient_computer` computes the per-example
                gradients of every gradient kernel with your code (see
                :mod:`captum_ntk.engine.gradient_computers`).
        precision (str): arithmetic of the projection matmuls of projected kernels (sums
                over parameter blocks always in float32 or wider): "fp32" (default), "tf32"
                (CUDA only; a ValueError on other devices) or "bf16" (products of bfloat16
                gradients and matrix). A ValueError for exact kernels unless "fp32". See
                :mod:`captum_ntk.engine.projection.precision`.
        store (str or os.PathLike, optional): a directory: the features of ``inputs1`` are
                written to ``store/rows``, those of ``inputs2`` to ``store/cols`` and the kernel
                to ``store/kernel.npy``, block by block; a call that stopped resumes, and a
                finished store is read instead of recomputed. The store records every option
                that changes the result (kernel, projection kind, resolved ``projection_dim``,
                seed, precision, layers, dtype, the model's content fingerprint, N and the
                block size) and a call with any of them different raises
                :class:`~captum_ntk.store.StoreMismatchError` naming the fields. Under an
                initialised ``torch.distributed`` process group the blocks are shared out over
                the ranks. Fixed-size features only: projected kernels, ``ck`` and
                ``embedding`` without per-token activations (others raise a ValueError). The
                result (on the CPU) shares memory with a copy-on-write memmap of the file.
                Default: None (in memory). See :mod:`captum_ntk.store`.

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
    with check_mode(model, eval_mode), exact_float32():
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
            engine=engine,
            precision=precision,
        )
        function = fmap.function
        for x in (x1, x2):
            if x is not None:
                function.validate(x)
        limit = fmap.memory_limit
        auto = auto_batch_size(fmap, x1, limit)  # also refuses a budget too small for one example
        bs = batch_size if batch_size is not None else auto
        if bs < 1:
            raise ValueError(f"batch_size must be positive, got {bs}.")
        if store is not None:
            from ..store.pipeline import stored_kernel_matrix

            options = {
                "kernel": kernel,
                "projection": projection,
                "seed": seed,
                "layers": layers,
                "precision": precision,
            }
            return stored_kernel_matrix(
                fmap,
                x1,
                x2,
                store,
                block_size=batch_size if batch_size is not None else STORE_BLOCK,
                compute_block=bs,
                options=options,
                normalize=spec.normalized,
                show_progress=show_progress,
                output_device=output_device,
            )
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
