r"""``reproduce --lds-subsets M``: the LDS of each surrogate's attributions on a row.

The ground truth retrains the row's network (its recipe, at the run's epochs) on M random
halves of the training set and records each test example's correct-class margin (TRAK's; ``+-s``
for the one-logit networks of the binary rows), through
:class:`~captum_ntk.metrics.RetrainingHarness` (cached and resumable under ``--store``). Each
surrogate's scores are its Eq. 3 attributions of the correct class, ``A(z, x_i) = W^{y}_i
k(z, x_i)`` (the ``b / N`` term is the same for every training example, so it does not change a
rank correlation), and the LDS is :func:`~captum_ntk.metrics.linear_datamodeling_score`.

Retraining is the cost: M networks. Use it at ``--quick`` sizes or with small ``--n-train``; a
full MNIST2 row retrains 100-epoch networks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ...metrics import RetrainingHarness, linear_datamodeling_score, margin_output
from .data import RowData
from .evaluate import KernelResult
from .rows import RowSpec
from .training import TrainSettings, train_model

__all__ = ["correct_class_scores", "row_lds"]


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


def row_lds(
    spec: RowSpec,
    settings: TrainSettings,
    data: RowData,
    results: list[KernelResult],
    num_subsets: int,
    *,
    seed: int = 0,
    device: str = "cpu",
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> list[float]:
    r"""The LDS of each result's attributions against one retrained ground truth.

    Args:
        spec (RowSpec): the row (its network builder).
        settings (TrainSettings): the recipe the row's network was trained with.
        data (RowData): the row's data (image rows).
        results (list of KernelResult): one per surrogate.
        num_subsets (int): M.
        seed (int): seed of the subsets and retrainings.
        device (str): where networks are retrained.
        cache_dir (Path, optional): the harness's cache (``--store``/lds/...).
        log (callable): progress lines.

    Returns:
        list of float: the LDS per result, in order.
    """
    if data.is_text or spec.build is None:
        raise ValueError("--lds-subsets retrains image rows only.")
    harness = RetrainingHarness(
        _RowTrainer(spec, settings, data, device),
        margin_output(data.x_test, data.y_test),
        len(data.y_train),
        cache_dir=cache_dir,
    )
    log(f"[{spec.name}] LDS ground truth: {num_subsets} networks retrained on random halves")
    truth = harness.subset_ground_truth(num_subsets, 1, seed=seed)
    return [
        float(
            linear_datamodeling_score(
                correct_class_scores(r, data.y_test), truth.masks, truth.outputs
            )
        )  # fmt: skip
        for r in results
    ]
