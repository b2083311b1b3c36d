r"""Summary statistics shared by the metrics and the apps that report them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from torch import Tensor

__all__ = ["mean_standard_error"]


def mean_standard_error(
    values: Tensor | np.ndarray | Iterable[float | None],
) -> tuple[float, float]:
    r"""Mean and standard error (ddof 1) of the finite values, the others left out.

    Args:
        values (Tensor, ndarray or iterable of float): the values (None, NaN and inf ignored).

    Returns:
        tuple of float: ``(mean, standard error)``; NaN mean with no finite value, NaN
        standard error with fewer than two.
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    array = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return math.nan, math.nan
    se = float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else math.nan
    return float(finite.mean()), se
