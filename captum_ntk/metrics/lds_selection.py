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

__all__ = ["LdsSelection", "select_by_lds"]


@dataclass
class LdsSelection:
    r"""What :func:`select_by_lds` returns.

    Attributes:
        best (str): the candidate with the highest validation LDS.
        validation (dict): candidate -> LDS on the validation examples.
        held_out (dict): candidate -> ``(LDS, standard error)`` on the held-out examples.
        validation_examples (Tensor): ``(n_val,)`` indices of the validation test examples.
        held_out_examples (Tensor): ``(n_test - n_val,)`` indices of the others.
    """

    best: str
    validation: dict[str, float]
    held_out: dict[str, tuple[float, float]]
    validation_examples: Tensor
    held_out_examples: Tensor

    def summary(self) -> str:
        """A Markdown table: candidate, validation LDS, held-out LDS ± SE, the chosen one marked."""
        lines = ["| candidate | validation LDS | held-out LDS | |", "|---|---:|---:|---|"]
        for name, value in self.validation.items():
            lds, error = self.held_out[name]
            mark = "chosen" if name == self.best else ""
            lines.append(f"| {name} | {value:.3f} | {lds:.3f} ± {error:.3f} | {mark} |")
        return "\n".join(lines)


def _mean_se(values: Tensor) -> tuple[float, float]:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return math.nan, math.nan
    if finite.numel() == 1:
        return float(finite[0]), math.nan
    return float(finite.mean()), float(finite.std() / math.sqrt(finite.numel()))


def select_by_lds(
    candidates: Mapping[str, ArrayLike],
    subset_masks: ArrayLike,
    subset_outputs: ArrayLike,
    *,
    validation_fraction: float = 0.5,
    seed: int = 0,
) -> LdsSelection:
    r"""The candidate whose attributions have the highest LDS on validation test examples, and
    every candidate's LDS on the held-out ones.

    The test examples of the ground truth are split at random (``seed``) into
    ``round(validation_fraction * n_test)`` validation examples and the rest. Per-example LDS
    (:func:`linear_datamodeling_score`) are averaged over each part; examples with an undefined
    correlation are left out, as there. Ties go to the first candidate in ``candidates``' order.

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
        LdsSelection: the chosen name, the validation and held-out LDS of every candidate, and
        the split.

    Raises:
        ValueError: no candidates, a fraction outside (0, 1) or one that leaves a part empty,
            or no candidate with a defined validation LDS.

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
    n_val = round(float(validation_fraction) * n_test)
    if not 0 < n_val < n_test:
        raise ValueError(
            f"validation_fraction {validation_fraction} of {n_test} test examples leaves a part "
            "empty: use more test examples or a fraction nearer 0.5"
        )
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(int(seed)))
    val_index, test_index = order[:n_val].sort()[0], order[n_val:].sort()[0]
    validation = {name: _mean_se(values[val_index])[0] for name, values in per_example.items()}
    held_out = {name: _mean_se(values[test_index]) for name, values in per_example.items()}
    defined = [name for name, value in validation.items() if math.isfinite(value)]
    if not defined:
        raise ValueError(
            "no candidate has a defined LDS on the validation examples (constant predictions or "
            "outputs over the subsets)"
        )
    best = max(defined, key=lambda name: (validation[name], -defined.index(name)))
    return LdsSelection(best, validation, held_out, val_index, test_index)
