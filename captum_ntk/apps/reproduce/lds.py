r"""``reproduce --lds-subsets M``: the LDS of each surrogate's attributions on a row.

The ground truth retrains the row's network (its recipe, at the run's epochs) on M random
halves of the training set, R times each (``--lds-runs``), and records each test example's
correct-class margin (TRAK's; ``+-s`` for the one-logit networks of the binary rows), through
:class:`~captum_ntk.metrics.RetrainingHarness` (cached and resumable under ``--store``). Each
surrogate's scores are its Eq. 3 attributions of the correct class, ``A(z, x_i) = W^{y}_i
k(z, x_i)`` (the ``b / N`` term is the same for every training example, so it does not change a
rank correlation), and the LDS is :func:`~captum_ntk.metrics.linear_datamodeling_score`.

Seeds (``--lds-seeds``): ``shared`` (default) trains run ``r`` of every subset from the same
seed, so the margins differ by the subset and not by the initialisation; ``independent`` gives
every retraining its own seed (TRAK's protocol). On the binary rows the independent protocol
has no signal at a CPU-sized M: two retrainings of the same halves of the quick MNIST2 MLP
agree to 0.005 (:meth:`~captum_ntk.metrics.SubsetGroundTruth.run_agreement`, reported as the
ground truth's "run agreement"), so every attribution scores about 0 there
(``benchmarks/reproduce_lds.py``, docs/reproduce.md).

Retraining is the cost: M x R networks. Use it at ``--quick`` sizes or with small
``--n-train``; a full MNIST2 row retrains 100-epoch networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ...metrics import RetrainingHarness, linear_datamodeling_score, margin_output
from .data import RowData
from .evaluate import KernelResult
from .report import mean_se
from .rows import RowSpec
from .training import TrainSettings, train_model

__all__ = ["LDS_SEEDS", "LdsMeasurement", "correct_class_scores", "row_lds"]

#: ``--lds-seeds`` choices (see the module docstring).
LDS_SEEDS = ("shared", "independent")


class _RowTrainer:
    """``train_fn`` of the harness: the row's network trained on a subset (picklable)."""

    def __init__(self, spec: RowSpec, settings: TrainSettings, data: RowData, device: str):
        self.spec, self.settings, self.data, self.device = spec, settings, data, device

    def __call__(self, indices: Tensor, seed: int) -> nn.Module:
        model = self.spec.build(seed)
        train_model(
            model,
            self.data.x_train[indices],
            self.data.y_train[indices],
            self.settings,
            seed=seed,
            device=self.device,
            show_progress=False,
        )
        return model.eval()


def correct_class_scores(result: KernelResult, labels: Tensor) -> Tensor:
    r"""Eq. 3 attributions of each test example's correct class, ``(n_test, n_train)``."""
    coef = result.glm.coef_.to(torch.float64).cpu()  # (m, N): one row per kGLM logit
    kernel = result.test_kernel.to(torch.float64).cpu()
    if coef.shape[0] == 1:  # one logit s (the log-odds of class 1): class 0 gets -s
        sign = (2 * labels - 1).to(torch.float64)[:, None]
        return sign * kernel * coef[0][None, :]
    return kernel * coef[labels.long()]


@dataclass
class LdsMeasurement:
    r"""The LDS of each surrogate against one retrained ground truth.

    Attributes:
        values (list of float): the LDS per surrogate.
        errors (list of float): their standard errors over the test examples.
        gaps (list of tuple): per surrogate, the mean per-example LDS difference from the first
                    surrogate and its standard error (``(0, 0)`` for the first).
        agreement (float): the ground truth's run agreement (NaN with one run per subset).
        protocol (str): "M subsets x R runs, shared / independent seeds".
    """

    values: list[float]
    errors: list[float] = field(default_factory=list)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    agreement: float = math.nan
    protocol: str = ""


def row_lds(
    spec: RowSpec,
    settings: TrainSettings,
    data: RowData,
    results: list[KernelResult],
    num_subsets: int,
    *,
    seed: int = 0,
    runs: int = 2,
    seeds: str = "shared",
    device: str = "cpu",
    cache_dir: Path | None = None,
    workers: int = 0,
    log: Callable[[str], None] = print,
) -> LdsMeasurement:
    r"""The LDS of each result's attributions against one retrained ground truth.

    Args:
        spec (RowSpec): the row (its network builder).
        settings (TrainSettings): the recipe the row's network was trained with.
        data (RowData): the row's data (image rows).
        results (list of KernelResult): one per surrogate.
        num_subsets (int): M.
        seed (int): seed of the subsets and retrainings.
        runs (int): retrainings per subset R (their margins are averaged). Default: 2.
        seeds (str): ``"shared"`` or ``"independent"`` (:data:`LDS_SEEDS`). Default: shared.
        device (str): where networks are retrained.
        cache_dir (Path, optional): the harness's cache (``--store``/lds/...).
        workers (int): retraining processes (0: this one). Default: 0.
        log (callable): progress lines.

    Returns:
        LdsMeasurement: the LDS per result, in order, with standard errors and the run agreement.
    """
    if data.is_text or spec.build is None:
        raise ValueError("--lds-subsets retrains image rows only.")
    if seeds not in LDS_SEEDS or int(runs) < 1:
        raise ValueError(f"--lds-seeds must be one of {LDS_SEEDS} and --lds-runs >= 1.")
    harness = RetrainingHarness(
        _RowTrainer(spec, settings, data, device),
        margin_output(data.x_test, data.y_test),
        len(data.y_train),
        cache_dir=cache_dir,
        num_workers=workers,
    )
    protocol = f"{num_subsets} subsets x {runs} runs, {seeds} seeds"
    log(f"[{spec.name}] LDS ground truth: networks retrained on random halves ({protocol})")
    truth = harness.subset_ground_truth(
        num_subsets, runs, seed=seed, shared_seeds=seeds == "shared"
    )
    per_example = [
        linear_datamodeling_score(
            correct_class_scores(r, data.y_test), truth.masks, truth.outputs,
            return_per_example=True,
        )[1]
        for r in results
    ]  # fmt: skip
    stats = [mean_se(values) for values in per_example]
    return LdsMeasurement(
        values=[v for v, _ in stats],
        errors=[e for _, e in stats],
        gaps=[mean_se(values - per_example[0]) for values in per_example],
        agreement=truth.run_agreement(),
        protocol=protocol,
    )
