r"""Up-front cost estimate of a row from a quick timing of a few examples."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...engine.budget import FEATURE_SHARE
from ...engine.data.inputs import ModelInputs
from ...engine.feature_blocks import nbytes
from ...engine.modes import check_mode
from ...kernels import auto_batch_size, build_feature_map
from ...kernels.assembly import FeatureCache
from ...kernels.matrix import default_memory_limit
from .data import RowData
from .training import TrainSettings, train_model

__all__ = ["KernelCosts", "estimate_seconds", "feature_blocks", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"2.1 h"``, ``"4.0 days"`` or ``"12 years"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365.25 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365.25 * 86400):,.0f} years"


def _slice(inputs: Any, n: int) -> Any:
    if isinstance(inputs, dict):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def _train_seconds(model: nn.Module, data: RowData, settings: TrainSettings, steps: int,
                   device: str) -> float:  # fmt: skip
    n = min(len(data.y_train), steps * settings.batch_size)
    probe = TrainSettings(settings.optimizer, settings.lr, 1, settings.batch_size, settings.loss)
    start = time.perf_counter()
    train_model(
        model, _slice(data.x_train, n), data.y_train[:n], probe, device=device, show_progress=False
    )
    return time.perf_counter() - start


@dataclass
class KernelCosts:
    r"""The exact trNTK's costs as the row's run computes it.

    Attributes:
        block (int): examples per feature block (``min(batch_size, auto_batch_size)``).
        block_bytes (int): bytes of one block's features.
        block_seconds (float): seconds to compute one block's features.
        pair_seconds (float): seconds per kernel entry of the contraction of two blocks.
    """

    block: int
    block_bytes: int
    block_seconds: float
    pair_seconds: float


def _kernel_costs(
    model: nn.Module, inputs: Any, device: str, memory_limit: int, batch_size: int
) -> KernelCosts:
    """Times one block's features (the feature cache's own path) and their contraction."""
    with check_mode(model, True):
        fmap = build_feature_map(model, "trntk", device=device, memory_limit=memory_limit)
        probe = ModelInputs.from_user(_slice(inputs, 2))
        block = max(1, min(batch_size, auto_batch_size(fmap, probe, memory_limit), len(inputs)))
        x = ModelInputs.from_user(_slice(inputs, block))
        FeatureCache(fmap, x, block).get(0)  # warm-up
        timings = []
        for _ in range(2):  # the faster of two: a busy machine only slows them
            begin = time.perf_counter()
            feats = FeatureCache(fmap, x, block).get(0)
            timings.append(time.perf_counter() - begin)
        fmap.inner(feats, feats)  # warm-up
        reps, begin = 3, time.perf_counter()
        for _ in range(reps):
            fmap.inner(feats, feats)
        pair = (time.perf_counter() - begin) / (reps * block * block)
    return KernelCosts(block, nbytes(feats), min(timings), pair)


def feature_blocks(n: int, n_test: int, block: int, block_bytes: int, memory_limit: int) -> int:
    r"""Feature blocks computed for the train kernel and then test x train, as
    :func:`~captum_ntk.kernels.assembly.iter_kernel_blocks` computes them.

    A row group holds ``k = max(1, floor(M / 4 / block_bytes))`` blocks. The training features
    are computed once if all of them fit in another quarter of the budget ``M``; otherwise the
    train kernel recomputes the column blocks past each row group (about ``nb^2 / (2k)`` of
    ``nb`` blocks) and test x train recomputes all ``nb`` for each group of test rows.

    Args:
        n (int): training examples. n_test (int): test examples.
        block (int): examples per block. block_bytes (int): bytes of one block's features.
        memory_limit (int): the budget M.

    Returns:
        int: feature blocks computed.
    """
    budget = memory_limit // FEATURE_SHARE
    nb, nbt = -(-n // block), -(-n_test // block)
    computed = nb + nbt  # every row block once
    if nb * block_bytes <= budget:  # the training features are kept
        return computed
    k = max(1, budget // max(block_bytes, 1))
    groups = -(-nb // k)
    computed += sum(max(0, nb - (g + 1) * k) for g in range(groups))  # train: past each group
    return computed + -(-nbt // k) * nb  # test x train: every training block per test group


def estimate_seconds(
    model: nn.Module,
    data: RowData,
    settings: TrainSettings,
    device: str,
    memory_limit: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    r"""Extrapolated seconds of training and of the exact trNTK for the row's sizes.

    Training: the time per optimiser step is the slope between a 5-step and a 45-step epoch
    (after a warm-up), so the fixed cost of a training call does not count once per step;
    times the number of steps. Kernel: the seconds of one block's features times the blocks
    the run computes (:func:`feature_blocks`: once each when the training features fit in a
    quarter of the budget, else recomputed for every row group), plus the seconds per pair of
    one block's contraction times the pairs (the symmetric train kernel's upper triangle and
    test x train). Blocks and budget are the run's: ``memory_limit`` (``--memory-gb``; default
    the device's, :func:`~captum_ntk.kernels.matrix.default_memory_limit`, 2 GiB on a CPU and
    about half the free memory on a GPU) and blocks of ``min(batch_size, auto_batch_size)``
    examples, so the estimate takes no more memory than one block of the run. Rough by design:
    a guide for choosing ``--device``, ``--memory-gb`` and ``--n-train``.

    Args:
        model (nn.Module): an untrained copy of the row's network (it is trained a little).
        data (RowData): the row's data.
        settings (TrainSettings): the training recipe.
        device (str): the device the row will run on.
        memory_limit (int, optional): bytes for the kernels' blocks. Default: the device's
                    default budget (about the one the row's kernels are computed with).
        batch_size (int): the run's examples per block at most (``ReproduceConfig``).
                    Default: 64.

    Returns:
        dict: ``{"train": s, "kernel": s, "total": s}``.
    """
    n = len(data.y_train)
    _train_seconds(model, data, settings, 1, device)  # warm-up
    short, long = 5, 45  # the fastest of two timings each: a busy machine only slows them
    t_short = min(_train_seconds(model, data, settings, short, device) for _ in range(2))
    t_long = min(_train_seconds(model, data, settings, long, device) for _ in range(2))
    steps_long = min(long, -(-n // settings.batch_size))
    per_step = max(t_long - t_short, 0.0) / max(steps_long - short, 1)
    if per_step == 0.0:
        per_step = t_long / max(steps_long, 1)
    train = per_step * settings.epochs * -(-n // settings.batch_size)
    if memory_limit is None:
        memory_limit = default_memory_limit(torch.device(device))
    costs = _kernel_costs(model, data.x_train, device, memory_limit, batch_size)
    n_test = len(data.y_test)
    blocks = feature_blocks(n, n_test, costs.block, costs.block_bytes, memory_limit)
    pairs = n * (n + 1) / 2 + n_test * n  # the symmetric train kernel, then test x train
    kernel = costs.block_seconds * blocks + costs.pair_seconds * pairs
    return {"train": train, "kernel": kernel, "total": train + kernel}
