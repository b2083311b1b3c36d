r"""How the empirical kernel of a network moves during training, tracked online.

:class:`KernelEvolution` holds three Gram matrices of a fixed probe set (initial, previous,
current) plus scalars per checkpoint, so hundreds of checkpoints fit in memory. The pairwise
distance heatmap needs Grams of many checkpoints: a bounded list of at most ``max_snapshots``
is kept; when it is full every other snapshot is dropped and the stride doubles, so the kept
checkpoints stay evenly spaced (memory <= max_snapshots n^2 floats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..kernels import kernel_matrix
from .spectral import (
    centered_alignment,
    effective_rank,
    kernel_cosine,
    label_energy,
)

__all__ = ["KernelEvolution"]

_SCALARS = (
    "distance_to_initial",
    "angle_to_initial",
    "velocity",
    "relative_norm",
    "top_k_mass",
    "effective_rank",
    "alignment",
    "label_energy",
)


class KernelEvolution:
    r"""Online tracker of a kernel on a fixed probe set over training checkpoints.

    Per checkpoint (``history[name]``, one float each): ``distance_to_initial`` (1 - cosine),
    ``angle_to_initial`` (arccos of the cosine, radians), ``velocity`` (distance to the previous
    checkpoint; NaN at the first), ``relative_norm`` (|K_t|_F / |K_0|_F), ``top_k_mass``,
    ``effective_rank``, and with targets ``alignment`` (centred kernel-target alignment) and
    ``label_energy`` (share of the centred targets in the top-k eigenspace). ``spectra`` keeps
    the top-k eigenvalues of each checkpoint.

    Args:
        probe (Tensor): (n, ...) probe inputs (keep n small: each update computes an n x n kernel).
        targets (Tensor, optional): (n,) or (n, C) float targets for the alignment metrics.
        kernel (str): registry kernel for ``update(model)``. Default: ``"trntk0"``.
        top_k (int): k of the spectral metrics. Default: 10.
        max_snapshots (int): cap on the Grams kept for :meth:`pairwise_distances`. Default: 32.
        **kernel_kwargs: further arguments of :func:`captum_ntk.kernel_matrix`.
    """

    def __init__(
        self,
        probe: Tensor,
        targets: Tensor | None = None,
        *,
        kernel: str = "trntk0",
        top_k: int = 10,
        max_snapshots: int = 32,
        **kernel_kwargs: Any,
    ) -> None:
        if max_snapshots < 2 or top_k < 1:
            raise ValueError(
                f"max_snapshots must be >= 2 and top_k >= 1, got {max_snapshots}, {top_k}."
            )
        if targets is not None and targets.shape[0] != probe.shape[0]:
            raise ValueError(f"targets has {targets.shape[0]} rows for {probe.shape[0]} probes.")
        self.probe, self.targets = probe, targets
        self.kernel, self.kernel_kwargs = kernel, kernel_kwargs
        self.top_k, self.max_snapshots = int(top_k), int(max_snapshots)
        self.initial: Tensor | None = None
        self.previous: Tensor | None = None
        self.current: Tensor | None = None
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {name: [] for name in _SCALARS}
        self.spectra: list[Tensor] = []
        self.snapshots: list[tuple[int, Tensor]] = []
        self._stride = 1

    def _gram(self, source: nn.Module | Tensor) -> Tensor:
        if isinstance(source, Tensor):
            gram = source
        else:
            gram = kernel_matrix(source, self.probe, kernel=self.kernel, **self.kernel_kwargs)
        n = self.probe.shape[0]
        if gram.shape != (n, n):
            raise ValueError(f"Expected an ({n}, {n}) probe Gram, got {tuple(gram.shape)}.")
        return gram.detach().to(torch.float64).cpu()

    def update(self, source: nn.Module | Tensor, step: int | None = None) -> dict[str, float]:
        r"""Adds a checkpoint.

        Args:
            source (nn.Module or Tensor): the model at this checkpoint (its probe kernel is
                    computed) or a precomputed (n, n) probe Gram.
            step (int, optional): training step of the checkpoint. Default: its index.

        Returns:
            dict[str, float]: this checkpoint's scalars.
        """
        gram = self._gram(source)
        step = len(self.steps) if step is None else int(step)
        if self.initial is None:
            self.initial = gram
        self.previous, self.current = self.current, gram
        cosine = min(1.0, max(-1.0, kernel_cosine(gram, self.initial)))
        lam = torch.linalg.eigvalsh((gram + gram.T) / 2).flip(0).clamp_min(0.0)
        values = {
            "distance_to_initial": 1.0 - cosine,
            "angle_to_initial": math.acos(cosine),
            "velocity": math.nan
            if self.previous is None
            else 1 - kernel_cosine(gram, self.previous),
            "relative_norm": float(gram.norm() / self.initial.norm()),
            "top_k_mass": float(lam[: self.top_k].sum() / lam.sum().clamp_min(1e-300)),
            "effective_rank": effective_rank(gram),
            "alignment": math.nan,
            "label_energy": math.nan,
        }
        if self.targets is not None:
            values["alignment"] = centered_alignment(gram, self.targets)
            values["label_energy"] = label_energy(gram, self.targets, self.top_k)
        self.steps.append(step)
        for name, value in values.items():
            self.history[name].append(float(value))
        self.spectra.append(lam[: self.top_k].clone())
        self._snapshot(step, gram)
        return values

    def _snapshot(self, step: int, gram: Tensor) -> None:
        if (len(self.steps) - 1) % self._stride:
            return
        self.snapshots.append((step, gram))
        if len(self.snapshots) > self.max_snapshots:
            self.snapshots = self.snapshots[::2]
            self._stride *= 2

    def pairwise_distances(self) -> tuple[list[int], Tensor]:
        r"""Kernel distances between the kept snapshots.

        Returns:
            tuple: (steps of the snapshots, (s, s) float64 distance matrix).
        """
        steps = [s for s, _ in self.snapshots]
        grams = torch.stack([g.reshape(-1) for _, g in self.snapshots])
        unit = grams / grams.norm(dim=1, keepdim=True).clamp_min(1e-300)
        return steps, (1.0 - unit @ unit.T).clamp_min(0.0)

    def as_dict(self) -> dict[str, Any]:
        """Steps, scalar histories and top-k spectra as plain lists (JSON-ready)."""
        return {
            "steps": list(self.steps),
            **{k: list(v) for k, v in self.history.items()},
            "spectra": [s.tolist() for s in self.spectra],
        }

    def __len__(self) -> int:
        return len(self.steps)

    @staticmethod
    def scalar_names() -> Sequence[str]:
        """Names of the per-checkpoint scalars."""
        return _SCALARS
