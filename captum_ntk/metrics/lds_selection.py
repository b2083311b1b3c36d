r"""Choosing among attribution methods (or a surrogate's settings) by a validation LDS.

TRAK tunes its hyperparameters on the LDS of a retrained ground truth; doing it honestly means
choosing on some test examples and reporting the LDS on others. :func:`select_by_lds` splits the
ground truth's test examples (seeded) into a validation part, where the candidates are ranked,
and a held-out part, where every candidate's LDS is reported with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import ArrayLike
from .datamodels import linear_datamodeling_score
from .statistics import mean_standard_error

__all__ = ["LdsSelectionResult", "select_by_lds"]


@dataclass
class LdsSelectionResult:
    r"""What :func:`select_by_lds` returns.

    Attributes:
        best (str): the candidate with the highest validation score.
        validation (dict): candidate -> validation score: the mean over *all* validation
                    examples of the per-example LDS, an undefined one counting 0.
        held_out (dict): candidate -> ``(LDS, standard error)`` over the held-out examples
                    whose correlation is defined (as :func:`linear_datamodeling_score`).
        defined (dict): candidate -> number of held-out examples with a defined correlation.
        validation_examples (Tensor): ``(n_val,)`` indices of the validation test examples.
        held_out_examples (Tensor): ``(n_test - n_val,)`` indices of the others.
    """

    best: str
    validation: dict[str, float]
    held_out: dict[str, tuple[float, float]]
    defined: dict[str, int]
    validation_examples: Tensor
    held_out_examples: Tensor

    def summary(self) -> str:
        """A Markdown table: candidate, validation score, held-out LDS ± SE (over how many
        examples), the chosen one marked."""
        n = self.held_out_examples.numel()
        lines = [
            "| candidate | validation | held-out LDS | defined | |",
            "|---|---:|---:|---:|---|",
        ]
        for name, value in self.validation.items():
            lds, error = self.held_out[name]
            mark = "chosen" if name == self.best else ""
            lines.append(
                f"| {name} | {value:.3f} | {lds:.3f} ± {error:.3f} | {self.defined[name]} / {n} "
                f"| {mark} |"
            )
        return "\n".join(lines)


def _ranking_score(values: Tensor) -> float:
    """Mean over every example, an undefined correlation counting 0 (it predicts nothing)."""
    return float(torch.nan_to_num(values, nan=0.0).mean())


def select_by_lds(
    candidates: Mapping[str, ArrayLike],
    subset_masks: ArrayLike,
    subset_outputs: ArrayLike,
    *,
    validation_fraction: float = 0.5,
    seed: int = 0,
) -> LdsSelectionResult:
    r"""The candidate whose attributions have the highest LDS on validation test examples, and
    every candidate's LDS on the held-out ones.

    The test examples of the ground truth are split at random (``seed``) into
    ``floor(validation_fraction * n_test + 0.5)`` validation examples and the rest. The
    candidates are ranked by the mean of their per-example LDS
    (:func:`linear_datamodeling_score`) over every validation example, an undefined correlation
    (constant predictions or outputs over the subsets) counting 0, so all candidates are compared
    on the same examples and one that predicts nothing on most of them cannot win on the few
    left. The held-out LDS leaves undefined examples out, as :func:`linear_datamodeling_score`
    does, and ``defined`` says how many remain. Ties go to the first candidate in
    ``candidates``' order.

    Args:
        candidates (Mapping): name -> ``(n_test, n_train)`` scores of the ground truth's test
                    examples, Captum's orientation (e.g. ``attr.attribute(x_test, y_test)``
                    after ``fit_surrogate`` with each setting).
        subset_masks (Tensor or ndarray): ``(M, n_train)`` masks of the retraining subsets.
        subset_outputs (Tensor or ndarray): ``(M, n_test)`` or ``(M, R, n_test)`` retrained
                    outputs (:class:`~captum_ntk.metrics.SubsetGroundTruth`).
        validation_fraction (float): share of the test examples used to choose, in (0, 1).
                    Default: 0.5.
        seed (int): seed of the split. Default: 0.

    Returns:
        LdsSelectionResult: the chosen name, every candidate's validation score and held-out
        LDS, and the split.

    Raises:
        ValueError: no candidates, a fraction outside (0, 1) or one that leaves a part empty,
            or no candidate with a defined correlation on any validation example.

    Example::

        >>> truth = harness.subset_ground_truth(64, 2, shared_seeds=True)
        >>> candidates = {}
        >>> for alpha in (1e-1, 1e-2, 1e-3):
        ...     attr.fit_surrogate(target="labels", alpha=alpha)
        ...     candidates[f"labels {alpha:g}"] = attr.attribute(x_test, target=y_test)
        >>> choice = select_by_lds(candidates, truth.masks, truth.outputs)
        >>> print(choice.summary())
    """
    if not candidates:
        raise ValueError("select_by_lds needs at least one candidate")
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    per_example = {}
    for name, scores in candidates.items():
        try:
            per_example[name] = linear_datamodeling_score(
                scores, subset_masks, subset_outputs, return_per_example=True
            )[1]
        except ValueError as error:
            raise ValueError(f"candidate {name!r}: {error}") from None
    n_test = next(iter(per_example.values())).numel()
    n_val = math.floor(float(validation_fraction) * n_test + 0.5)
    if not 0 < n_val < n_test:
        raise ValueError(
            f"validation_fraction {validation_fraction} of {n_test} test examples leaves a part "
            "empty: use more test examples or a fraction nearer 0.5"
        )
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(int(seed)))
    val_index, test_index = order[:n_val].sort()[0], order[n_val:].sort()[0]
    if not any(bool(torch.isfinite(v[val_index]).any()) for v in per_example.values()):
        raise ValueError(
            "no candidate has a defined correlation on any validation example (constant "
            "predictions or outputs over the subsets)"
        )
    validation = {name: _ranking_score(v[val_index]) for name, v in per_example.items()}
    held_out = {name: mean_standard_error(v[test_index]) for name, v in per_example.items()}
    defined = {name: int(torch.isfinite(v[test_index]).sum()) for name, v in per_example.items()}
    names = list(validation)
    best = max(names, key=lambda name: (validation[name], -names.index(name)))
    return LdsSelectionResult(best, validation, held_out, defined, val_index, test_index)
