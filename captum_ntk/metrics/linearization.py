r"""Linearization (Appendix L): invertible maps from surrogate to network probabilities."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import optimize, stats
from scipy.special import expit

from ._checks import ArrayLike, _paired


# --------------------------------------------------------------------------- linearization
def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _logistic4(u: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    return a + (b - a) * expit(c * (u - d))


def _arctan4(u: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    return a + (b - a) * (0.5 + np.arctan(c * (u - d)) / np.pi)


def _r2(target: np.ndarray, prediction: np.ndarray) -> float:
    total = float(np.sum((target - target.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum((target - prediction) ** 2)) / total


def linearization(
    p_surrogate: ArrayLike,
    p_nn: ArrayLike,
    *,
    seed: int = 0,
    eps: float = 1e-6,
) -> dict[str, float]:
    r"""How well an invertible map sends surrogate probabilities to network probabilities.

    Follows Appendix L of Engel et al.: with :math:`u = \mathrm{logit}(p_{surrogate})` and
    :math:`v = \mathrm{logit}(p_{nn})` (correct-class probabilities on the test set), three
    monotone maps (invertible unless a fit degenerates to ``c = 0`` or ``a = b``) are fitted by
    least squares in logit space (``scipy``) on a random half of the examples, and the held-out
    :math:`R^2 = 1 - \sum (v - \hat v)^2 / \sum (v - \bar v)^2` of the prediction of
    :math:`v` is reported on the other half:

    - ``"linear"``: :math:`\hat v = m u + q` (2 parameters; temperature scaling and shift,
      ``scipy.stats.linregress``).
    - ``"logistic4"``: 4-parameter logistic in logit space,
      :math:`\hat p = a + (b - a)\,\sigma(c (u - d))`, :math:`\hat v = \mathrm{logit}(\hat p)`,
      with :math:`0 \le a, b \le 1`, :math:`c \ge 0` (``a > b`` gives a decreasing map). With
      ``a = 0, b = 1`` it reduces to the linear map.
    - ``"arctan4"``: the same with an arctangent sigmoid,
      :math:`\hat p = a + (b - a)\,(\tfrac12 + \arctan(c (u - d)) / \pi)`, whose tails approach
      ``a`` and ``b`` polynomially instead of exponentially.

    The sigmoid maps are fitted with ``scipy.optimize.least_squares`` (trust-region reflective)
    started from the linear fit, and :math:`\hat p` is clipped to ``[eps, 1 - eps]`` before the
    logit. Examples whose probability (either model) lies within ``eps`` of 0 or 1 are dropped
    first: their logits are dominated by floating-point saturation.

    Args:
        p_surrogate (Tensor or ndarray): ``(n,)`` surrogate probabilities of the correct class.
        p_nn (Tensor or ndarray): ``(n,)`` network probabilities of the correct class.
        seed (int, optional): Seed of the random split into fitting and evaluation halves
                    (``numpy.random.default_rng(seed).permutation``). Default: 0
        eps (float, optional): Saturation threshold. Default: 1e-6

    Returns:
        r2 (dict): ``{"linear": float, "logistic4": float, "arctan4": float}``, held-out
                    :math:`R^2` in logit space (can be negative; ``nan`` if the held-out
                    :math:`v` is constant).

    Raises:
        ValueError: on different lengths, values outside [0, 1], or fewer than 10 examples left
                    after masking.
    """
    x, y = _paired(p_surrogate, p_nn, "p_surrogate", "p_nn")
    if np.any((x < 0) | (x > 1)) or np.any((y < 0) | (y > 1)):
        raise ValueError("p_surrogate and p_nn must be probabilities in [0, 1]")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    keep = (x > eps) & (x < 1 - eps) & (y > eps) & (y < 1 - eps)
    n_kept = int(keep.sum())
    if n_kept < 10:
        raise ValueError(
            f"only {n_kept} examples have both probabilities in ({eps}, 1 - {eps}); need >= 10"
        )
    u = _logit(x[keep])
    v = _logit(y[keep])
    order = np.random.default_rng(seed).permutation(n_kept)
    fit_index, eval_index = order[: n_kept // 2], order[n_kept // 2 :]
    u_fit, v_fit = u[fit_index], v[fit_index]
    u_eval, v_eval = u[eval_index], v[eval_index]

    results: dict[str, float] = {}
    if np.all(u_fit == u_fit[0]):
        slope, intercept = 0.0, float(v_fit.mean())
    else:
        line = stats.linregress(u_fit, v_fit)
        slope, intercept = float(line.slope), float(line.intercept)
    results["linear"] = _r2(v_eval, slope * u_eval + intercept)

    # Start the sigmoid maps from the linear fit: a, b near 0 and 1, matching slope at d.
    if slope >= 0:
        a0, b0 = eps, 1 - eps
    else:
        a0, b0 = 1 - eps, eps
    c0 = max(abs(slope), 1e-3)
    d0 = -intercept / slope if slope != 0 else float(np.median(u_fit))
    lower = [0.0, 0.0, 0.0, -np.inf]
    upper = [1.0, 1.0, np.inf, np.inf]
    for name, curve, c_scale in (("logistic4", _logistic4, 1.0), ("arctan4", _arctan4, np.pi / 4)):

        def residuals(theta: np.ndarray, curve: Callable[..., np.ndarray] = curve) -> np.ndarray:
            p_hat = np.clip(curve(u_fit, *theta), eps, 1 - eps)
            return _logit(p_hat) - v_fit

        start = np.array([a0, b0, c0 * c_scale, d0])
        start[3] = np.clip(start[3], u_fit.min() - 10, u_fit.max() + 10)
        fit = optimize.least_squares(residuals, start, bounds=(lower, upper), method="trf")
        p_eval = np.clip(curve(u_eval, *fit.x), eps, 1 - eps)
        results[name] = _r2(v_eval, _logit(p_eval))
    return results
