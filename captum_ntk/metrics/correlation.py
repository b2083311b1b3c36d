r"""Rank and linear correlations between the network's and the surrogate's scores."""

from __future__ import annotations

from scipy import stats

from ..surrogate.scores import kendall_tau_b
from ._checks import ArrayLike, _check_not_constant, _paired


# --------------------------------------------------------------------------- correlations
def kendall_tau(p_nn: ArrayLike, p_surrogate: ArrayLike) -> float:
    r"""Kendall rank correlation :math:`\tau_K` between the network's and the surrogate's scores.

    In Engel et al. (Appendix G) the scores are each model's probability of the correct class on
    the test set (see :func:`correct_class_probability`). Computes Kendall's tau-b,
    ``scipy.stats.kendalltau``'s default:

    .. math::
        \tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}},

    with :math:`n_c` / :math:`n_d` the concordant / discordant pairs, :math:`n_0 = n(n-1)/2` and
    :math:`n_1`, :math:`n_2` the pairs tied in the first / second argument. A pair tied in either
    argument is neither concordant nor discordant, so ties (e.g. probabilities saturated at 1.0)
    lower :math:`|\tau_b|` less than they would tau-a. The value is symmetric in its arguments.

    Args:
        p_nn (Tensor or ndarray): ``(n,)`` (or ``(n, 1)``) scores of the network.
        p_surrogate (Tensor or ndarray): ``(n,)`` (or ``(n, 1)``) scores of the surrogate.

    Returns:
        tau (float): in ``[-1, 1]``.

    Raises:
        ValueError: if the lengths differ, ``n < 2``, a value is NaN/inf, or either input is
                    constant (tau-b is then 0/0; this raises instead of returning NaN).
    """
    x, y = _paired(p_nn, p_surrogate, "p_nn", "p_surrogate")
    _check_not_constant(x, y, "p_nn", "p_surrogate", "Kendall tau")
    return kendall_tau_b(x, y)


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    r"""Pearson correlation coefficient (``scipy.stats.pearsonr``).

    Args:
        a (Tensor or ndarray): ``(n,)`` values.
        b (Tensor or ndarray): ``(n,)`` values.

    Returns:
        r (float): in ``[-1, 1]``.

    Raises:
        ValueError: on different lengths, ``n < 2``, NaN/inf values or a constant input.
    """
    x, y = _paired(a, b, "a", "b")
    _check_not_constant(x, y, "a", "b", "Pearson")
    return float(stats.pearsonr(x, y).statistic)


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    r"""Spearman rank correlation (``scipy.stats.spearmanr``; ties get average ranks).

    Args:
        a (Tensor or ndarray): ``(n,)`` values.
        b (Tensor or ndarray): ``(n,)`` values.

    Returns:
        rho (float): in ``[-1, 1]``.

    Raises:
        ValueError: on different lengths, ``n < 2``, NaN/inf values or a constant input.
    """
    x, y = _paired(a, b, "a", "b")
    _check_not_constant(x, y, "a", "b", "Spearman")
    return float(stats.spearmanr(x, y).statistic)
