r"""Up-front cost estimate of a row from a quick timing of a few examples."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ...engine.data.inputs import ModelInputs
from ...engine.modes import check_mode
from ...kernels import auto_batch_size, build_feature_map, kernel_matrix
from ...kernels.matrix import default_memory_limit
from .data import RowData
from .training import TrainSettings, train_model

__all__ = ["estimate_seconds", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"2.1 h"`` or ``"4.0 days"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _slice(inputs: Any, n: int) -> Any:
    if isinstance(inputs, dict):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def _kernel_seconds(model: nn.Module, inputs: Any, m: int, device: str, memory_limit: int) -> float:
    """Seconds of the exact trNTK of m examples, blocked as the row's run blocks them."""
    batch = _slice(inputs, m)
    start = time.perf_counter()
    kernel_matrix(
        model, batch, kernel="trntk", device=device, eval_mode=True, memory_limit=memory_limit
    )
    return time.perf_counter() - start


def _train_seconds(model: nn.Module, data: RowData, settings: TrainSettings, steps: int,
                   device: str) -> float:  # fmt: skip
    n = min(len(data.y_train), steps * settings.batch_size)
    probe = TrainSettings(settings.optimizer, settings.lr, 1, settings.batch_size, settings.loss)
    start = time.perf_counter()
    train_model(
        model, _slice(data.x_train, n), data.y_train[:n], probe, device=device, show_progress=False
    )
    return time.perf_counter() - start


def _pair_seconds(model: nn.Module, inputs: Any, m: int, device: str, memory_limit: int) -> float:
    """Seconds per pair of the exact trNTK's contraction, timed on the features of at most m
    examples (as many as one block of the row's run holds)."""
    with check_mode(model, True):
        fmap = build_feature_map(model, "trntk", device=device, memory_limit=memory_limit)
        probe = ModelInputs.from_user(_slice(inputs, m))
        m = max(1, min(m, auto_batch_size(fmap, probe, memory_limit)))
        feats = fmap(ModelInputs.from_user(_slice(inputs, m)))
        fmap.inner(feats, feats)  # warm-up
        reps, start = 3, time.perf_counter()
        for _ in range(reps):
            fmap.inner(feats, feats)
    return (time.perf_counter() - start) / (reps * m * m)


def estimate_seconds(
    model: nn.Module,
    data: RowData,
    settings: TrainSettings,
    device: str,
    memory_limit: int | None = None,
) -> dict[str, float]:
    r"""Extrapolated seconds of training and of the exact trNTK for the row's sizes.

    Training: the time per optimiser step is the slope between a 5-step and a 45-step epoch
    (after a warm-up), so the fixed cost of a training call does not count once per step;
    times the number of steps. Kernel: a cost per example (the slope of the exact trNTK's time
    between 8 and 32 examples, less their pairs, so set-up and probes are paid once) times
    ``n_train + n_test``, plus a cost per pair (the feature map's contraction timed on 32
    examples' features) times the pairs computed (the symmetric train kernel's upper triangle
    and test x train). The kernels are timed under the row's own memory budget (the device's
    default, :func:`~captum_ntk.kernels.matrix.default_memory_limit`: 2 GiB on a CPU), so the
    estimate blocks the examples as the run will and takes no more memory than it. Rough by
    design: a guide for choosing ``--device`` and ``--n-train``.

    Args:
        model (nn.Module): an untrained copy of the row's network (it is trained a little).
        data (RowData): the row's data.
        settings (TrainSettings): the training recipe.
        device (str): the device the row will run on.
        memory_limit (int, optional): bytes for the kernels' blocks. Default: the device's
                    default budget (the one the row's kernels are computed with).

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
    t8 = _kernel_seconds(model, data.x_train, 8, device, memory_limit)
    t32 = _kernel_seconds(model, data.x_train, 32, device, memory_limit)
    per_pair = _pair_seconds(model, data.x_train, 32, device, memory_limit)
    # per example: the slope between 8 and 32 examples, less their pairs (set-up paid once)
    per_example = max((t32 - t8 - per_pair * (32**2 - 8**2) / 2) / 24, 0.0)
    n_test = len(data.y_test)
    pairs = n * (n + 1) / 2 + n_test * n  # the symmetric train kernel, then test x train
    kernel = per_example * (n + n_test) + per_pair * pairs
    return {"train": train, "kernel": kernel, "total": train + kernel}
