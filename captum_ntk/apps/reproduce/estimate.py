r"""Up-front cost estimate of a row from a quick timing of a few examples."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ...kernels import kernel_matrix
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


def _kernel_seconds(model: nn.Module, inputs: Any, m: int, device: str) -> float:
    batch = _slice(inputs, m)
    start = time.perf_counter()
    kernel_matrix(
        model,
        batch,
        kernel="trntk",
        device=device,
        eval_mode=True,
        batch_size=m,
        memory_limit=16 * 2**30,
    )
    return time.perf_counter() - start


def estimate_seconds(
    model: nn.Module, data: RowData, settings: TrainSettings, device: str
) -> dict[str, float]:
    r"""Extrapolated seconds of training and of the exact trNTK for the row's sizes.

    Training: the time of two optimiser steps (after one warm-up step) times the number of
    steps. Kernel: ``t(m) = a m + b m^2`` fitted to the exact trNTK of m = 4 and 8 examples,
    evaluated at ``N = n_train + n_test`` (per-example Jacobians plus pairwise contractions).
    Rough by design: a guide for choosing ``--device`` and ``--n-train``.

    Args:
        model (nn.Module): an untrained copy of the row's network (it is trained a little).
        data (RowData): the row's data.
        settings (TrainSettings): the training recipe.
        device (str): the device the row will run on.

    Returns:
        dict: ``{"train": s, "kernel": s, "total": s}``.
    """
    n = len(data.y_train)
    probe = TrainSettings(settings.optimizer, settings.lr, 1, settings.batch_size, settings.loss)
    sub = min(n, 3 * settings.batch_size)
    warm = TrainSettings(settings.optimizer, settings.lr, 1, settings.batch_size, settings.loss)
    train_model(
        model, _slice(data.x_train, 2), data.y_train[:2], warm, device=device, show_progress=False
    )
    start = time.perf_counter()
    train_model(
        model,
        _slice(data.x_train, sub),
        data.y_train[:sub],
        probe,
        device=device,
        show_progress=False,
    )
    steps_timed = -(-sub // settings.batch_size)
    per_step = (time.perf_counter() - start) / steps_timed
    train = per_step * settings.epochs * -(-n // settings.batch_size)
    t4 = _kernel_seconds(model, data.x_train, 4, device)
    t8 = _kernel_seconds(model, data.x_train, 8, device)
    b = max((t8 - 2 * t4) / 32.0, 0.0)  # t(8) - 2 t(4) = 32 b
    a = max((t4 - 16 * b) / 4.0, 0.0)
    total_n = n + len(data.y_test)
    kernel = a * total_n + b * total_n**2
    return {"train": train, "kernel": kernel, "total": train + kernel}
