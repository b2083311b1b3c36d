r"""Removal ("brittleness") test of attribution scores: retrain without the top proponents.

For each selected test example ``z``, the ``k`` training examples with the highest scores
:math:`\tau(z, i)` (its proponents) are removed, the model is retrained, and ``z``'s output (by
default its correct-class margin) is compared with the model trained on the full set. The
control removes ``k`` training examples drawn at random (seeded per test example). Valid
attributions remove proponents whose absence lowers the margin far more than random removals,
and flip the prediction more often. Every retraining runs ``runs`` seeds, the same seeds for the
full, proponent-removed and random-removed models (paired comparisons).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import ArrayLike, _to_tensor
from .retraining import RetrainingHarness

__all__ = ["RemovalTestResult", "removal_test"]


@dataclass
class RemovalTestResult:
    r"""Outcome of :func:`removal_test` (outputs averaged over the runs).

    Attributes:
        k (int): examples removed per test example.
        test_indices (Tensor): ``(n,)`` test examples evaluated.
        full (Tensor): ``(n,)`` their outputs with the full training set.
        top_removed (Tensor): ``(n,)`` outputs after removing each one's top-k proponents.
        random_removed (Tensor): ``(n,)`` outputs after removing k random examples.
    """

    k: int
    test_indices: Tensor
    full: Tensor
    top_removed: Tensor
    random_removed: Tensor

    @property
    def drop_top(self) -> float:
        """Mean output drop from removing the top-k proponents."""
        return float((self.full - self.top_removed).mean())

    @property
    def drop_random(self) -> float:
        """Mean output drop from removing k random training examples."""
        return float((self.full - self.random_removed).mean())

    def _flips(self, after: Tensor) -> float:
        positive = self.full > 0
        if not bool(positive.any()):
            return float("nan")
        return float((after[positive] <= 0).double().mean())

    @property
    def flip_fraction_top(self) -> float:
        """Among test examples with a positive output (correct for a margin), the fraction
        whose output becomes <= 0 after the proponents are removed."""
        return self._flips(self.top_removed)

    @property
    def flip_fraction_random(self) -> float:
        """The same fraction after k random removals."""
        return self._flips(self.random_removed)

    def summary(self) -> dict[str, float]:
        """The five figures as a dict of floats."""
        return {
            "k": float(self.k),
            "drop_top": self.drop_top,
            "drop_random": self.drop_random,
            "flip_fraction_top": self.flip_fraction_top,
            "flip_fraction_random": self.flip_fraction_random,
        }


def removal_test(
    scores: ArrayLike,
    harness: RetrainingHarness,
    *,
    k: int = 10,
    test_indices: ArrayLike | None = None,
    runs: int = 1,
    seed: int = 0,
) -> RemovalTestResult:
    r"""Retrains without each test example's top-k proponents and without k random examples.

    Costs ``runs * (1 + 2 n)`` retrainings for ``n`` test examples (cached by the harness:
    the full-set models are shared between calls with other ``k`` or other scores).

    Args:
        scores (Tensor or ndarray): ``(n_test, n_train)`` attribution scores, Captum's
                    orientation; row ``j`` ranks the training examples for test example ``j``
                    of the harness's ``output_fn``.
        harness (RetrainingHarness): how to retrain and what to measure.
        k (int): training examples removed per test example. Default: 10.
        test_indices (Tensor or ndarray, optional): ``(n,)`` rows of ``scores`` to evaluate.
                    Default: all.
        runs (int): retrainings (seeds ``seed * 1_000_003 + 1 ... + runs``) per removal.
                    Default: 1.
        seed (int): seed of the retrainings and of the random control (test example ``j``'s
                    random set is drawn by a generator seeded with ``(seed, j)``). Default: 0.

    Returns:
        RemovalTestResult: outputs before and after each removal, with ``drop_top``,
        ``drop_random``, ``flip_fraction_top`` and ``flip_fraction_random``.
    """
    values = _to_tensor(scores).to(torch.float64)
    if values.dim() != 2 or values.shape[1] != harness.num_train:
        raise ValueError(
            f"scores must be (n_test, n_train) with n_train = {harness.num_train}, got "
            f"{tuple(values.shape)}"
        )
    if not 1 <= int(k) < harness.num_train:
        raise ValueError(f"k must lie in [1, {harness.num_train}), got {k}")
    if int(runs) < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    rows = (
        torch.arange(values.shape[0])
        if test_indices is None
        else _to_tensor(test_indices).to(torch.int64).reshape(-1)
    )
    if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= values.shape[0]:
        raise ValueError(f"test_indices must be non-empty and lie in [0, {values.shape[0]})")
    seeds = [seed * 1_000_003 + r + 1 for r in range(runs)]
    everything = torch.arange(harness.num_train)
    full = harness.retrain([(everything, s) for s in seeds], desc="full set").mean(dim=0)
    top_jobs, random_jobs = [], []
    for j in rows.tolist():
        top = torch.topk(values[j], int(k)).indices
        generator = torch.Generator().manual_seed(seed * 1_000_003 + j)
        random = torch.randperm(harness.num_train, generator=generator)[: int(k)]
        for removed, jobs in ((top, top_jobs), (random, random_jobs)):
            keep = torch.ones(harness.num_train, dtype=torch.bool)
            keep[removed] = False
            jobs.extend((everything[keep], s) for s in seeds)
    n = rows.numel()
    column = rows[:, None].expand(n, runs).reshape(-1)
    picks = torch.arange(n * runs)

    def at_rows(outputs: Tensor) -> Tensor:
        return outputs[picks, column].reshape(n, runs).mean(dim=1)

    return RemovalTestResult(
        k=int(k),
        test_indices=rows,
        full=full[rows],
        top_removed=at_rows(harness.retrain(top_jobs, desc=f"top-{k} removed")),
        random_removed=at_rows(harness.retrain(random_jobs, desc=f"random-{k} removed")),
    )
