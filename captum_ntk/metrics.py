"""Faithfulness and forensics metrics for kernel surrogate models (Engel et al., Appendix G, L).

Tensor primitives (:func:`kendall_tau`, :func:`pearson`, :func:`spearman`,
:func:`test_accuracy_differential`, :func:`misclassification_coincidence_rate`,
:func:`correct_class_probability`, :func:`linearization`, :func:`forensic_precision_recall`)
accept torch tensors or numpy arrays (any device) and return Python floats, dicts of floats or
CPU tensors, as documented on each. :func:`faithfulness` is the higher-level evaluator in the
style of ``captum.metrics``: forward function first, then the attribution object and inputs.

This module imports nothing from ``captum_ntk`` except :mod:`captum_ntk.surrogate`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from scipy import optimize, stats
from scipy.special import expit
from torch import Tensor

from captum_ntk.surrogate import KernelGLM

__all__ = [
    "kendall_tau",
    "pearson",
    "spearman",
    "test_accuracy_differential",
    "misclassification_coincidence_rate",
    "correct_class_probability",
    "linearization",
    "forensic_precision_recall",
    "faithfulness",
]

ArrayLike = Tensor | np.ndarray


# --------------------------------------------------------------------------- conversions
def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _to_tensor(values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().cpu()
    return torch.as_tensor(np.asarray(values))


def _vector(values: Any, name: str) -> np.ndarray:
    """A 1-D float64 numpy copy of ``values`` ((n,) or (n, 1))."""
    array = _to_numpy(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (n,), got shape {array.shape}")
    return array.astype(np.float64)


def _paired(
    a: Any, b: Any, name_a: str, name_b: str, min_length: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    x = _vector(a, name_a)
    y = _vector(b, name_b)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < min_length:
        raise ValueError(f"need at least {min_length} values, got {x.shape[0]}")
    for values, name in ((x, name_a), (y, name_b)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return x, y


def _check_not_constant(x: np.ndarray, y: np.ndarray, name_x: str, name_y: str, what: str) -> None:
    for values, name in ((x, name_x), (y, name_y)):
        if np.all(values == values[0]):
            raise ValueError(
                f"{name} is constant; the {what} correlation is undefined (it would be NaN)"
            )


def _labels(values: Any, name: str) -> Tensor:
    """Class labels as a 1-D int64 CPU tensor; (n, C) scores are reduced with argmax."""
    tensor = _to_tensor(values)
    if tensor.dim() == 2:
        tensor = tensor.argmax(dim=1)
    if tensor.dim() != 1:
        raise ValueError(
            f"{name} must be (n,) class labels or (n, C) scores, got {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point() and not bool((tensor == tensor.round()).all()):
        raise ValueError(f"{name} must hold integer class labels")
    return tensor.to(torch.int64)


def _same_length(*named: tuple[Tensor, str]) -> int:
    lengths = {name: tensor.shape[0] for tensor, name in named}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("inputs are empty")
    return n


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
    return float(stats.kendalltau(x, y).statistic)


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


# --------------------------------------------------------------------------- agreement
def test_accuracy_differential(
    pred_surrogate: ArrayLike, pred_nn: ArrayLike, labels: ArrayLike
) -> float:
    r"""Test accuracy differential TAD = acc(surrogate) - acc(network) (Engel et al., App. G).

    Note the argument order: surrogate first. Positive values mean the surrogate is more
    accurate than the network.

    Args:
        pred_surrogate (Tensor or ndarray): ``(n,)`` predicted labels of the surrogate, or
                    ``(n, C)`` scores (reduced with argmax).
        pred_nn (Tensor or ndarray): ``(n,)`` predicted labels of the network, or ``(n, C)``
                    scores.
        labels (Tensor or ndarray): ``(n,)`` true labels.

    Returns:
        tad (float): in ``[-1, 1]``.
    """
    surrogate = _labels(pred_surrogate, "pred_surrogate")
    network = _labels(pred_nn, "pred_nn")
    truth = _labels(labels, "labels")
    _same_length((surrogate, "pred_surrogate"), (network, "pred_nn"), (truth, "labels"))
    acc_surrogate = (surrogate == truth).double().mean()
    acc_nn = (network == truth).double().mean()
    return float(acc_surrogate - acc_nn)


# Not a pytest test despite the name.
test_accuracy_differential.__test__ = False  # type: ignore[attr-defined]


def misclassification_coincidence_rate(
    pred_nn: ArrayLike, pred_surrogate: ArrayLike, labels: ArrayLike
) -> float:
    r"""Misclassification coincidence rate :math:`R_{miss}` (Engel et al., Eq. 21).

    .. math::
        R_{miss} = \frac{|\{\text{NN wrong}\} \cap \{\text{surrogate wrong}\} \cap
        \{\text{same prediction}\}|}{|\{\text{NN wrong}\} \cup \{\text{surrogate wrong}\}|}

    1 means the two models make exactly the same mistakes.

    Args:
        pred_nn (Tensor or ndarray): ``(n,)`` predicted labels of the network (or ``(n, C)``
                    scores, reduced with argmax).
        pred_surrogate (Tensor or ndarray): ``(n,)`` predicted labels of the surrogate (or
                    ``(n, C)`` scores).
        labels (Tensor or ndarray): ``(n,)`` true labels.

    Returns:
        r_miss (float): in ``[0, 1]``, or ``nan`` when neither model makes a mistake (the union
                    is empty and the rate is undefined).
    """
    network = _labels(pred_nn, "pred_nn")
    surrogate = _labels(pred_surrogate, "pred_surrogate")
    truth = _labels(labels, "labels")
    _same_length((network, "pred_nn"), (surrogate, "pred_surrogate"), (truth, "labels"))
    nn_wrong = network != truth
    surrogate_wrong = surrogate != truth
    union = int((nn_wrong | surrogate_wrong).sum())
    if union == 0:
        return math.nan
    coincident = int((nn_wrong & surrogate_wrong & (network == surrogate)).sum())
    return coincident / union


def correct_class_probability(probs: ArrayLike, labels: ArrayLike) -> Tensor:
    r"""Probability each example's model assigns to its correct class.

    Args:
        probs (Tensor or ndarray): ``(n, C)`` class probabilities (C >= 2) or, for one-logit
                    models, ``(n,)`` / ``(n, 1)`` sigmoid probabilities of class 1.
        labels (Tensor or ndarray): ``(n,)`` integer labels; in ``{0, 1}`` for one-logit
                    probabilities, in ``[0, C)`` otherwise.

    Returns:
        p_correct (Tensor): ``(n,)`` ``probs[i, labels[i]]`` (or ``p`` / ``1 - p`` for sigmoid
                    probabilities), on the CPU, in the dtype of ``probs`` (float64 for numpy).
    """
    p = _to_tensor(probs)
    if not p.is_floating_point():
        p = p.to(torch.float64)
    truth = _labels(labels, "labels")
    if p.dim() == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.dim() not in (1, 2):
        raise ValueError(f"probs must be (n,), (n, 1) or (n, C), got shape {tuple(p.shape)}")
    _same_length((p, "probs"), (truth, "labels"))
    if p.dim() == 1:
        if bool(((truth != 0) & (truth != 1)).any()):
            raise ValueError("labels must be 0 or 1 for one-logit (sigmoid) probabilities")
        return torch.where(truth == 1, p, 1 - p)
    n_classes = p.shape[1]
    if bool(((truth < 0) | (truth >= n_classes)).any()):
        raise ValueError(f"labels must lie in [0, {n_classes}) for (n, {n_classes}) probabilities")
    return p.gather(1, truth[:, None])[:, 0]


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


# --------------------------------------------------------------------------- forensics
def forensic_precision_recall(
    test_train_kernel: ArrayLike,
    train_poisoned: ArrayLike,
    test_poisoned: ArrayLike,
    *,
    top: int = 5,
    threshold: int = 3,
    zero_division: float = math.nan,
) -> tuple[float, float]:
    r"""Poisoned-test-point detection by nearest training neighbours (Engel et al., Table 3).

    For each test point the ``top`` training points with the largest kernel values are taken
    (ties broken towards the lower training index); the test point is flagged as poisoned when
    at least ``threshold`` of them are poisoned. Precision and recall of the flags are computed
    against ``test_poisoned``.

    Args:
        test_train_kernel (Tensor or ndarray): ``(n_test, n_train)`` kernel (larger = more
                    similar), Captum orientation.
        train_poisoned (Tensor or ndarray): ``(n_train,)`` bool, which training points are
                    poisoned.
        test_poisoned (Tensor or ndarray): ``(n_test,)`` bool, which test points truly carry the
                    poison trigger.
        top (int, optional): Number of most similar training points. Default: 5
        threshold (int, optional): Minimum number of poisoned neighbours to flag. Default: 3
        zero_division (float, optional): Precision when nothing is flagged and recall when no
                    test point is poisoned. Default: ``nan``

    Returns:
        (precision, recall) (tuple of float): ``TP / (TP + FP)`` and ``TP / (TP + FN)``.
    """
    kernel = _to_tensor(test_train_kernel)
    if kernel.dim() != 2:
        raise ValueError(
            f"test_train_kernel must be 2-D (n_test, n_train), got {tuple(kernel.shape)}"
        )
    n_test, n_train = kernel.shape
    train_flags = _to_tensor(train_poisoned).to(torch.bool).reshape(-1)
    test_flags = _to_tensor(test_poisoned).to(torch.bool).reshape(-1)
    if train_flags.shape[0] != n_train:
        raise ValueError(
            f"train_poisoned has {train_flags.shape[0]} entries, expected n_train = {n_train}"
        )
    if test_flags.shape[0] != n_test:
        raise ValueError(
            f"test_poisoned has {test_flags.shape[0]} entries, expected n_test = {n_test}"
        )
    if not 1 <= top <= n_train:
        raise ValueError(f"top must lie in [1, n_train = {n_train}], got {top}")
    if not 1 <= threshold <= top:
        raise ValueError(f"threshold must lie in [1, top = {top}], got {threshold}")
    if kernel.is_floating_point() and bool(torch.isnan(kernel).any()):
        raise ValueError("test_train_kernel contains NaN values")
    order = torch.sort(kernel, dim=1, descending=True, stable=True).indices[:, :top]
    flagged = train_flags[order].sum(dim=1) >= threshold
    true_positive = int((flagged & test_flags).sum())
    n_flagged = int(flagged.sum())
    n_positive = int(test_flags.sum())
    precision = true_positive / n_flagged if n_flagged else float(zero_division)
    recall = true_positive / n_positive if n_positive else float(zero_division)
    return precision, recall


# --------------------------------------------------------------------------- faithfulness
class _KernelAttribution(Protocol):
    surrogate: KernelGLM | None

    def influence(self, inputs: Any) -> Tensor: ...

    def fit_surrogate(self) -> KernelGLM: ...


def _slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    if isinstance(inputs, Mapping):
        return {k: v[start:stop] if isinstance(v, Tensor) else v for k, v in inputs.items()}
    return tuple(v[start:stop] if isinstance(v, Tensor) else v for v in inputs)


def _first_dim(inputs: Any) -> int:
    values = (
        [inputs]
        if isinstance(inputs, Tensor)
        else (list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs))
    )
    for value in values:
        if isinstance(value, Tensor):
            return value.shape[0]
    raise ValueError("inputs must contain at least one Tensor")


def _forward_logits(forward_func: Callable[..., Any], inputs: Any, batch_size: int) -> Tensor:
    """Network outputs on ``inputs`` in batches, under no_grad, concatenated on the CPU."""
    n = _first_dim(inputs)
    chunks = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = _slice_inputs(inputs, start, min(start + batch_size, n))
            if isinstance(batch, Tensor):
                output = forward_func(batch)
            elif isinstance(batch, Mapping):
                output = forward_func(**batch)
            else:
                output = forward_func(*batch)
            if hasattr(output, "logits"):
                output = output.logits
            if not isinstance(output, Tensor):
                raise TypeError(
                    "forward_func must return a Tensor (or an object with a .logits Tensor), "
                    f"got {type(output).__name__}"
                )
            chunks.append(output.detach().cpu())
    return torch.cat(chunks)


def _with_labels(inputs: Any, labels: Tensor) -> Any:
    """Captum's batch convention: labels appended last (tuples) or under "labels" (mappings)."""
    if isinstance(inputs, Tensor):
        return (inputs, labels)
    if isinstance(inputs, Mapping):
        return {**inputs, "labels": labels}
    return (*inputs, labels)


def _safe_tau(p_nn: Tensor, p_surrogate: Tensor) -> float:
    try:
        return kendall_tau(p_nn, p_surrogate)
    except ValueError as error:
        warnings.warn(
            f"Kendall tau is undefined ({error}); returning nan", RuntimeWarning, stacklevel=3
        )
        return math.nan


def faithfulness(
    forward_func: Callable[..., Any],
    attribution: _KernelAttribution,
    inputs: Tensor | tuple[Any, ...] | Mapping[str, Any],
    labels: ArrayLike,
    *,
    surrogate: KernelGLM | None = None,
    test_kernel: ArrayLike | None = None,
    batch_size: int = 256,
    return_per_example: bool = False,
) -> dict[str, Any]:
    r"""Faithfulness of a kernel surrogate (kGLM) to the network (Engel et al., Appendix G).

    Computes, on the test examples ``inputs`` with true ``labels``:

    - ``"tau"``: Kendall tau-b between the network's and the kGLM's probability of the correct
      class (:func:`kendall_tau`; ``nan`` with a warning if either is constant),
    - ``"tad"``: test accuracy differential ``acc_surrogate - acc_nn``,
    - ``"r_miss"``: misclassification coincidence rate (Eq. 21; ``nan`` if neither model errs),
    - ``"acc_nn"``, ``"acc_surrogate"``: the two test accuracies,

    all as Python floats. The network's probabilities are the softmax of
    ``forward_func(inputs)`` for ``C > 1`` outputs and the sigmoid of the single logit for
    outputs of shape ``(n,)`` or ``(n, 1)`` (then labels must be 0/1 and the prediction is
    ``logit > 0``). The kGLM's come from ``surrogate.predict_proba(kernel)``.

    ``forward_func`` is evaluated as given, in batches of ``batch_size`` under
    ``torch.no_grad()``: put a model in eval mode first. Tensors in ``inputs`` are sliced
    along dim 0; ``forward_func(x)`` for a Tensor, ``forward_func(*inputs)`` for a tuple,
    ``forward_func(**inputs)`` for a mapping. An output with a ``.logits`` attribute (Hugging
    Face) is replaced by it.

    Args:
        forward_func (Callable): The network's forward function, returning ``(n, C)`` logits
                    or ``(n,)`` / ``(n, 1)`` for a one-logit model.
        attribution: A fitted kernel attribution object (e.g. ``TrNTKAttribution``) exposing
                    ``influence(batch)`` -> ``(n_test, n_train)`` kernel, ``fit_surrogate()`` ->
                    :class:`~captum_ntk.surrogate.KernelGLM` and ``surrogate`` (the cached kGLM,
                    or None). ``influence`` receives the test batch in Captum's convention:
                    ``(*inputs, labels)`` (a Tensor ``x`` gives ``(x, labels)``), or
                    ``{**inputs, "labels": labels}`` for a mapping.
        inputs (Tensor or tuple or Mapping): ``n`` test examples.
        labels (Tensor or ndarray): ``(n,)`` true integer labels.
        surrogate (KernelGLM, optional): kGLM to evaluate. Default: ``attribution.surrogate`` if
                    already fitted, else ``attribution.fit_surrogate()``.
        test_kernel (Tensor or ndarray, optional): precomputed ``(n, n_train)`` test-by-train
                    kernel; skips ``attribution.influence``.
        batch_size (int, optional): Batch size of the network's forward passes. Default: 256
        return_per_example (bool, optional): Also return the ``(n,)`` CPU tensors ``"p_nn"``,
                    ``"p_surrogate"`` (correct-class probabilities), ``"pred_nn"`` and
                    ``"pred_surrogate"`` (predicted labels). Default: False

    Returns:
        metrics (dict): ``{"tau", "tad", "r_miss", "acc_nn", "acc_surrogate"}`` floats, plus the
                    per-example tensors when ``return_per_example``.

    Examples::

        >>> attr = TrNTKAttribution(model, train_dataset)
        >>> faithfulness(model, attr, test_x, test_y)
        {'tau': 0.81, 'tad': -0.01, 'r_miss': 0.62, 'acc_nn': 0.93, 'acc_surrogate': 0.92}
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    truth = _labels(labels, "labels")
    n = truth.shape[0]
    if _first_dim(inputs) != n:
        raise ValueError(f"inputs hold {_first_dim(inputs)} examples but labels has {n}")

    if surrogate is None:
        surrogate = getattr(attribution, "surrogate", None)
    if surrogate is None:
        surrogate = attribution.fit_surrogate()
    if not hasattr(surrogate, "classes_"):
        raise ValueError("the surrogate is not fitted; call fit (or attribution.fit_surrogate())")

    # --- network
    logits = _forward_logits(forward_func, inputs, batch_size)
    if logits.shape[0] != n:
        raise ValueError(f"forward_func returned {logits.shape[0]} rows for {n} inputs")
    logits = logits.double()
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        logit = logits.reshape(n)
        if bool(((truth != 0) & (truth != 1)).any()):
            raise ValueError("a one-logit network needs labels in {0, 1}")
        # sigmoid(-s) rather than 1 - sigmoid(s): no cancellation for confident examples.
        p_nn = torch.sigmoid(torch.where(truth == 1, logit, -logit))
        pred_nn = (logit > 0).long()
        n_nn_classes = 2
    elif logits.dim() == 2:
        p_nn = correct_class_probability(torch.softmax(logits, dim=1), truth)
        pred_nn = logits.argmax(dim=1)
        n_nn_classes = logits.shape[1]
    else:
        raise ValueError(
            f"forward_func must return (n, C), (n, 1) or (n,) logits, got {tuple(logits.shape)}"
        )

    # --- surrogate
    classes = surrogate.classes_.cpu()
    if classes.numel() != n_nn_classes:
        raise ValueError(
            f"the surrogate has {classes.numel()} classes but the network has {n_nn_classes} "
            "(2 for a one-logit network)"
        )
    if test_kernel is None:
        test_kernel = attribution.influence(_with_labels(inputs, truth))
    kernel = (
        test_kernel if isinstance(test_kernel, Tensor) else torch.as_tensor(np.asarray(test_kernel))
    )
    if kernel.dim() != 2 or kernel.shape[0] != n:
        raise ValueError(
            f"the test kernel must have shape ({n}, n_train), got {tuple(kernel.shape)}"
        )
    # float64 probabilities: fewer ties from saturation at 1.0 in the Kendall tau.
    kernel = kernel.detach().to(torch.float64)
    probs_surrogate = surrogate.predict_proba(kernel).detach().cpu().double()
    pred_surrogate = surrogate.predict(kernel).detach().cpu()
    column = torch.searchsorted(classes, truth).clamp(max=classes.numel() - 1)
    known = classes[column] == truth
    if not bool(known.all()):
        missing = sorted(set(truth[~known].tolist()))
        raise ValueError(
            f"labels {missing} are not among the surrogate's classes {classes.tolist()}"
        )
    p_surrogate = probs_surrogate.gather(1, column[:, None])[:, 0]

    acc_nn = float((pred_nn == truth).double().mean())
    acc_surrogate = float((pred_surrogate == truth).double().mean())
    result: dict[str, Any] = {
        "tau": _safe_tau(p_nn, p_surrogate),
        "tad": test_accuracy_differential(pred_surrogate, pred_nn, truth),
        "r_miss": misclassification_coincidence_rate(pred_nn, pred_surrogate, truth),
        "acc_nn": acc_nn,
        "acc_surrogate": acc_surrogate,
    }
    if return_per_example:
        result.update(
            p_nn=p_nn,
            p_surrogate=p_surrogate,
            pred_nn=pred_nn,
            pred_surrogate=pred_surrogate,
        )
    return result
